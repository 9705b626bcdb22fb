"""Checks for lesson 06 (the decoder): the target mask, the decoder layer, and a KV cache for
cross-attention.

Shapes: B batch, T target length, S source length, C = d_model, H heads. As for the
encoder, the reference weights are copied into the learner's layer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from tfx_course.attention import (
    MultiHeadAttention,
    causal_mask,
    merge_heads,
    padding_mask,
    scaled_dot_product_attention,
    split_heads,
)
from tfx_course.checks.core import (
    CheckResult,
    Fail,
    build_module,
    call,
    close,
    diagnose,
    expect_tensor,
    jitter_norms,
    load_reference_weights,
    max_gap,
    run_check,
)
from tfx_course.layers import (
    DecoderLayer,
)
from tfx_course.model import target_mask
from tfx_course.validation import shape_str

__all__ = [
    "check_target_mask",
    "check_decoder_layer",
    "check_cross_attention_cache",
]

D_MODEL, N_HEADS, D_FF = 16, 4, 32


# --- the decoder's self-attention mask ----------------------------------------------


def _target_mask_case(
    fn: Callable[..., Any], tokens: Tensor, pad_id: int, timeout: float | None
) -> None:
    B, T = tokens.shape
    got = call(f"target_mask(tokens, pad_id={pad_id})", fn, tokens.clone(), pad_id, timeout=timeout)
    got = expect_tensor(got, "the mask", finite=False)
    if got.dtype != torch.bool:
        raise Fail(f"the mask has dtype {got.dtype}; return a boolean mask (True = may attend)")
    if got.shape == (T, T):
        raise Fail(
            "the mask has shape (T, T): that is the causal rule alone; combine it with the "
            "padding mask, causal & padding, to get (B, 1, T, T)"
        )
    if got.shape == (B, 1, 1, T):
        raise Fail(
            "the mask has shape (B, 1, 1, T): that is the padding rule alone; combine it with "
            "causal_mask(T) using &, to get (B, 1, T, T)"
        )
    expect_tensor(got, "the mask", shape=(B, 1, T, T), finite=False)
    expected = target_mask(tokens, pad_id)  # (B, 1, T, T)
    if torch.equal(got, expected):
        return
    causal, keep = causal_mask(T), tokens != pad_id
    mistakes = {
        "mask inverted: True means 'may attend'": ~expected,
        "rules combined with |: a position may attend only if both rules allow it, so use &": causal
        | keep[:, None, None, :],
        "padding applied to the queries (rows); block the padded keys, the last axis: "
        "keep[:, None, None, :]": causal & keep[:, None, :, None],
        "the causal part is transposed: row t may see columns 0..t (tril, not triu)": causal.T
        & keep[:, None, None, :],
        "padding compared with 0; use the pad_id argument": causal
        & (tokens != 0)[:, None, None, :],
    }
    for message, wrong in mistakes.items():
        if torch.equal(got, wrong.expand_as(got)):
            raise Fail(message)
    raise Fail(
        f"with pad_id={pad_id} the mask is wrong: it should be causal_mask(T) & (tokens != pad_id)"
    )


def _target_mask_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    _target_mask_case(fn, torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]]), 0, timeout)
    _target_mask_case(fn, torch.tensor([[4, 0, 7, 8, 2], [6, 5, 2, 2, 2]]), 2, timeout)
    return "boolean (B, 1, T, T): causal & padding over the keys, for any pad_id"


def check_target_mask(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(tokens, pad_id) -> (B, 1, T, T)``: causal and padding rules combined."""
    return run_check("target_mask", lambda: _target_mask_steps(fn, timeout))


# --- decoder layer ------------------------------------------------------------------


def _decoder_variant(ref: DecoderLayer, x, memory, self_mask, memory_mask, bug: str) -> Tensor:
    """The Pre-LN reference forward pass (bug="") or the same with one mistake planted."""
    if bug == "post_ln":
        a = ref.self_attn(x, x, x, self_mask)[0]
        x = ref.norm1(x + a)
        x = ref.norm2(x + ref.cross_attn(x, memory, memory, memory_mask)[0])
        return ref.norm3(x + ref.ff(x))
    skips = {"self_residual_twice": (2, 1, 1), "cross_residual_twice": (1, 2, 1)}.get(bug)
    skips = skips or {"ff_residual_twice": (1, 1, 2), "no_cross_residual": (1, 0, 1)}.get(bug, (1, 1, 1))  # fmt: skip
    h = ref.norm1(x)
    x = skips[0] * x + ref.self_attn(h, h, h, None if bug == "no_self_mask" else self_mask)[0]
    h = ref.norm2(x)
    kv = {"cross_from_x": h, "normed_memory": ref.norm2(memory)}.get(bug, memory)
    c = ref.cross_attn(
        h, kv, kv, None if bug in ("no_memory_mask", "cross_from_x") else memory_mask
    )[0]
    x = skips[1] * x + c
    return skips[2] * x + ref.ff((ref.norm2 if bug == "norm2_for_ff" else ref.norm3)(x))


_DECODER_BUGS = {
    "no_self_mask": "self-attention ignores self_mask, so position t sees later positions: "
    "pass self_mask to self_attn",
    "no_memory_mask": "cross-attention ignores memory_mask, so padded source positions get "
    "attention: pass memory_mask to cross_attn",
    "cross_from_x": "cross-attention takes its keys and values from the decoder; they come "
    "from memory (the encoder's output)",
    "normed_memory": "the memory is normalised; pass the encoder's output as it is, only the "
    "query norm2(x) is normalised",
    "no_cross_residual": "the residual around cross-attention is missing",
    "self_residual_twice": "the residual around self-attention is added twice: x + f(norm(x)) "
    "adds x once",
    "cross_residual_twice": "the residual around cross-attention is added twice: x + f(norm(x)) "
    "adds x once",
    "ff_residual_twice": "the residual around the feed-forward block is added twice: "
    "x + f(norm(x)) adds x once",
    "norm2_for_ff": "norm2 is used for the feed-forward block; norm1, norm2, norm3 go with "
    "self-attention, cross-attention and feed-forward, in that order",
    "post_ln": "this is Post-LN, norm(x + f(x)); this layer is Pre-LN: x + f(norm(x))",
}


def _decoder_inputs() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(2)
    x = 2 * torch.randn(2, 4, D_MODEL, generator=gen)  # T=4
    memory = 2 * torch.randn(2, 6, D_MODEL, generator=gen)  # S=6
    self_mask = causal_mask(4) & padding_mask(torch.tensor([[True] * 4, [True, True, True, False]]))
    memory_mask = padding_mask(torch.tensor([[True] * 6, [True] * 4 + [False] * 2]))
    return x, memory, self_mask, memory_mask


def _decoder_compare(module, ref, args: tuple, what: str, timeout: float | None) -> None:
    got = call(what, module, *(a if a is None else a.clone() for a in args), timeout=timeout)
    got = expect_tensor(got, "the output", dtype=args[0].dtype, shape=args[0].shape)
    expected = ref(*args)
    if close(got, expected):
        return
    mistakes = {
        msg: (lambda bug=bug: _decoder_variant(ref, *args, bug))
        for bug, msg in _DECODER_BUGS.items()
    }
    diagnose(got, mistakes)
    raise Fail(
        f"{what}: the output differs from the library's DecoderLayer by up to {max_gap(got, expected):.3g}"
    )


def _decoder_steps(factory: Callable[..., Any], timeout: float | None) -> str:
    module = build_module(factory, (D_MODEL, N_HEADS, D_FF), {}, timeout)
    torch.manual_seed(0)
    ref = DecoderLayer(D_MODEL, N_HEADS, D_FF, norm_first=True).eval()
    jitter_norms(ref, seed=1)
    load_reference_weights(module, ref, "self_attn, cross_attn, ff, norm1, norm2, norm3")
    module.eval()
    x, memory, self_mask, memory_mask = _decoder_inputs()
    with torch.no_grad():
        _decoder_compare(module, ref, (x, memory, None, None), "forward(x, memory)", timeout)
        _decoder_compare(
            module, ref, (x, memory, self_mask, memory_mask), "forward with masks", timeout
        )
        causal = causal_mask(4)
        what = "forward(x, memory, causal_mask(4))"
        base = call(what, module, x.clone(), memory, causal, None, timeout=timeout)
        changed = x.clone()
        changed[:, 3] += 1.0  # change the last position only
        moved = call(what, module, changed, memory, causal, None, timeout=timeout)
        base, moved = (expect_tensor(t, "the output", shape=x.shape) for t in (base, moved))
        if not close(base[:, :3], moved[:, :3]):
            raise Fail("outputs at positions 0..2 change when position 3 changes: the future leaks")
    return (
        "Pre-LN self-attention, cross-attention over the memory and feed-forward, both masks, "
        "no future leak, parity with the library's DecoderLayer"
    )


def check_decoder_layer(factory: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check a Pre-LN decoder layer built as ``factory(d_model, n_heads, d_ff)``.

    ``forward(x, memory, self_mask=None, memory_mask=None)`` must match the library's
    ``DecoderLayer(norm_first=True)`` with the reference weights copied in.
    """
    return run_check("decoder_layer", lambda: _decoder_steps(factory, timeout))


# --- a KV cache for cross-attention (transfer) --------------------------------------------


def _cross_variant(attn: MultiHeadAttention, query: Tensor, memory: Tensor, mask, bug: str = "") -> Tensor:  # fmt: skip
    """Cross-attention from ``query`` to ``memory``, or the same with one mistake planted."""
    H = attn.n_heads
    mask = None if bug == "no_mask" else mask
    k_in, v_in = {"kv_swapped": (attn.v_proj, attn.k_proj), "value_from_key": (attn.k_proj, attn.k_proj)}.get(bug, (attn.k_proj, attn.v_proj))  # fmt: skip
    k, v = (split_heads(memory if bug == "unprojected" else proj(memory), H) for proj in (k_in, v_in))  # fmt: skip
    x, _ = scaled_dot_product_attention(split_heads(attn.q_proj(query), H), k, v, mask)
    return merge_heads(x) if bug == "no_out_proj" else attn.out_proj(merge_heads(x))  # (B, T, C)


_CROSS_BUGS = {
    "kv_swapped": "keys and values swapped: the keys are k_proj(memory), the values v_proj(memory)",
    "value_from_key": "the values are k_proj(memory): they must be v_proj(memory)",
    "unprojected": "the memory itself was used as keys and values: cache k_proj(memory) and "
    "v_proj(memory), split into heads",
    "no_out_proj": "the output projection is missing: pass the merged heads through out_proj",
    "no_mask": "memory_mask is not applied, so padded source positions get attention",
}


class _CallCounter:
    """Count the calls of some modules while a ``with`` block runs."""

    def __init__(self, **modules: nn.Module) -> None:
        self.modules, self.calls, self._hooks = modules, dict.fromkeys(modules, 0), []

    def _counter(self, name: str) -> Callable[..., None]:
        def count(*_: object) -> None:
            self.calls[name] += 1

        return count

    def __enter__(self) -> _CallCounter:
        for name, module in self.modules.items():
            self._hooks.append(module.register_forward_hook(self._counter(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()


def _cross_mistakes(attn, query, memory, changed, mask, first) -> dict[str, Callable[[], Tensor]]:
    """The outputs of the usual mistakes at one step; ``changed`` is the memory after __init__."""
    mistakes = {
        msg: (lambda bug=bug: _cross_variant(attn, query, memory, mask, bug))
        for bug, msg in _CROSS_BUGS.items()
    }
    return {
        "the keys and values were computed from memory again after __init__ (the memory changed "
        "since, and so did your output): project them once and reuse them": lambda: attn(
            query, changed, changed, mask
        )[0],
        "the output does not change with the query: cache the keys and values, but compute "
        "the queries (q_proj) anew at every step": lambda: first,
        **mistakes,
        "the memory itself was used as keys and values (a view of it, which changed with it): "
        "cache k_proj(memory) and v_proj(memory), split into heads": lambda: _cross_variant(
            attn, query, changed, mask, "unprojected"
        ),
    }


def _cross_step(cache: Any, query: Tensor, step: int, refs: tuple, timeout: float | None) -> None:
    attn, memory, changed, mask, first = refs
    what = f"step {step}: cache(query) for a query {shape_str(query)}"
    got = expect_tensor(call(what, cache, query.clone(), timeout=timeout), f"{what}: the output")
    expected = attn(query, memory, memory, mask)[0]  # recomputed from the original memory
    expect_tensor(got, f"{what}: the output", shape=expected.shape)
    if close(got, expected):
        return
    diagnose(got, _cross_mistakes(attn, query, memory, changed, mask, first))
    raise Fail(f"{what}: the output differs from cross-attention recomputed over the whole memory "
               f"by up to {max_gap(got, expected):.3g}")  # fmt: skip


def _cross_cache_steps(factory: Callable[..., Any], timeout: float | None) -> str:
    torch.manual_seed(0)
    attn = MultiHeadAttention(D_MODEL, N_HEADS).eval()  # the learner's cache uses this one
    ref = copy.deepcopy(attn)  # the check computes with this one, outside the call counts
    gen = torch.Generator().manual_seed(3)
    memory = 2 * torch.randn(2, 6, D_MODEL, generator=gen)  # (B, S, C)
    mask = padding_mask(torch.tensor([[True] * 6, [True] * 4 + [False] * 2]))  # (B, 1, 1, S)
    queries = [torch.randn(2, t, D_MODEL, generator=gen) for t in (1, 1, 1, 3)]  # new positions
    given = memory.clone()
    with torch.no_grad(), _CallCounter(k_proj=attn.k_proj, v_proj=attn.v_proj) as counter:
        name = getattr(factory, "__name__", "CrossAttentionCache")
        cache = call(f"{name}(attn, memory, memory_mask)", factory, attn, given, mask, timeout=timeout)  # fmt: skip
        given.add_(1.0)  # a cache that reads the memory again now gives other outputs
        first = ref(queries[0], memory, memory, mask)[0]
        for step, query in enumerate(queries, start=1):
            _cross_step(cache, query, step, (ref, memory, given, mask, first), timeout)
            if max(counter.calls.values()) > 1:
                raise Fail(f"by step {step}, k_proj or v_proj ran {max(counter.calls.values())} "
                           "times: project the memory's keys and values once, in __init__, and "
                           "reuse them at every step")  # fmt: skip
    return (
        "keys and values projected once, then four steps (one with three new positions) equal "
        "to cross-attention recomputed over the whole memory, padding mask included"
    )


def check_cross_attention_cache(factory: Callable[..., Any], timeout: float | None = None) -> CheckResult:  # fmt: skip
    """Check a cross-attention cache built as ``factory(attn, memory, memory_mask)``.

    ``attn`` is a ``MultiHeadAttention``, ``memory`` ``(B, S, C)``, ``memory_mask`` broadcastable
    to ``(B, H, T, S)``; ``cache(query)`` with ``query`` ``(B, T, C)`` must equal
    ``attn(query, memory, memory, memory_mask)[0]`` while projecting the memory only once.
    """
    return run_check("cross_attention_cache", lambda: _cross_cache_steps(factory, timeout))
