"""Checks for lesson 02 (multi-head attention): splitting and merging heads, the module, and
multi-query attention (one key and one value head shared by every query head).

Shapes: B batch, H heads, T queries, S keys, C = d_model, D = d_head = C // H.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from tfx_course.attention import (
    MultiHeadAttention,
    causal_mask,
    mask_scores,
    merge_heads,
    padding_mask,
    split_heads,
)
from tfx_course.checks.core import (
    CheckResult,
    Fail,
    build_module,
    call,
    close,
    diagnose,
    expect_pair,
    expect_tensor,
    load_reference_weights,
    max_gap,
    run_check,
)
from tfx_course.validation import shape_str

__all__ = [
    "check_split_heads",
    "check_merge_heads",
    "check_multi_head_attention",
    "check_multi_query_attention",
]


# --- split and merge ----------------------------------------------------------------


def _split_case(fn: Callable[..., Any], x: Tensor, H: int, timeout: float | None) -> None:
    B, T, C = x.shape
    D = C // H
    got = call(f"split_heads(x, n_heads={H})", fn, x.clone(), H, timeout=timeout)
    got = expect_tensor(got, "the result", dtype=x.dtype)
    if got.shape == (B, T, H, D):
        raise Fail(
            f"the result has shape {shape_str(got)} = (B, T, H, D): transpose axes 1 and 2 "
            "to get (B, H, T, D), so each head sees all positions"
        )
    if got.shape == (B, H, D, T):
        raise Fail(
            f"the result has shape {shape_str(got)} = (B, H, D, T): the wrong axes moved; after "
            "view(B, T, H, D) swap only the positions and the heads, transpose(1, 2)"
        )
    expect_tensor(got, f"for x {shape_str(x)} and n_heads={H}, the result", shape=(B, H, T, D))
    if close(got, x.view(B, T, H, D).transpose(1, 2), atol=0):  # (B, H, T, D)
        return
    mistakes = {
        "reshaped straight to (B, H, T, D), which mixes positions and heads: view as "
        "(B, T, H, D) first, then transpose(1, 2)": lambda: x.reshape(B, H, T, D),
        "transposed before splitting: x.transpose(1, 2) puts the features before the "
        "positions, so the reshape mixes them; view as (B, T, H, D) first, then "
        "transpose(1, 2)": lambda: x.transpose(1, 2).reshape(B, H, T, D),
        "features split as (D, H) instead of (H, D): each head takes a contiguous block "
        "of d_head features, view(B, T, H, D)": lambda: x.view(B, T, D, H).permute(0, 3, 1, 2),
    }
    diagnose(got, mistakes, atol=0)
    raise Fail(
        f"for n_heads={H} the heads are wrong: head h, position t should hold x[b, t, h*D:(h+1)*D]"
    )


def _split_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    gen = torch.Generator().manual_seed(0)
    for B, T, H, D in ((2, 5, 3, 4), (1, 3, 2, 6)):
        _split_case(fn, torch.randn(B, T, H * D, generator=gen), H, timeout)
    return "shape (B, H, T, D) and head h holding features h*D:(h+1)*D, for two head counts"


def check_split_heads(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(x, n_heads)``: ``(B, T, C)`` -> ``(B, H, T, D)``."""
    return run_check("split_heads", lambda: _split_steps(fn, timeout))


def _merge_case(fn: Callable[..., Any], x: Tensor, timeout: float | None) -> None:
    B, H, T, D = x.shape
    got = call("merge_heads(x)", fn, x.clone(), timeout=timeout)
    got = expect_tensor(got, "the result", dtype=x.dtype)
    expect_tensor(got, f"for x (B, H, T, D) = {shape_str(x)}, the result", shape=(B, T, H * D))
    if close(got, x.transpose(1, 2).reshape(B, T, H * D), atol=0):  # (B, T, C)
        return
    mistakes = {
        "reshaped without moving the head axis back: transpose(1, 2) to (B, T, H, D) "
        "before reshaping to (B, T, C)": lambda: x.reshape(B, T, H * D),
        "features interleaved as (D, H): concatenate the heads, so merge (B, T, H, D) "
        "into (B, T, H * D)": lambda: x.permute(0, 2, 3, 1).reshape(B, T, H * D),
        "reshaped before transposing: reshape only after transpose(1, 2) has put the "
        "positions next to the batch axis, (B, T, H, D)": lambda: x.reshape(B, H * D, T).transpose(
            1, 2
        ),
        "transposed the wrong axes: transpose(2, 3) swaps positions and features; "
        "transpose(1, 2) moves the heads behind the positions": lambda: x.transpose(2, 3).reshape(
            B, T, H * D
        ),
    }
    diagnose(got, mistakes, atol=0)
    raise Fail("the heads are merged wrongly: it must undo split_heads exactly")


def _merge_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    gen = torch.Generator().manual_seed(0)
    for shape in ((2, 3, 5, 4), (1, 2, 3, 6)):
        _merge_case(fn, torch.randn(*shape, generator=gen), timeout)
    return "shape (B, T, H * D) and heads concatenated in order; it undoes split_heads"


def check_merge_heads(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(x)``: ``(B, H, T, D)`` -> ``(B, T, H * D)``, the inverse of split_heads."""
    return run_check("merge_heads", lambda: _merge_steps(fn, timeout))


# --- multi-head attention -----------------------------------------------------------


def _mha_reference(ref: MultiHeadAttention, query, key, value, mask, bug: str = "") -> Tensor:
    """The reference forward pass, or the same with one common mistake planted."""
    B, T, C = query.shape
    H, D = ref.n_heads, ref.d_head
    key, value = {
        "kv_from_query": (query, query),
        "kv_swapped": (value, key),
        "value_from_key": (key, key),
        "key_from_value": (value, value),
    }.get(bug, (key, value))
    q, k, v = ref.q_proj(query), ref.k_proj(key), ref.v_proj(value)
    if bug == "split_order":
        q, k, v = (t.reshape(B, H, t.shape[1], D) for t in (q, k, v))  # (B, H, T, D), wrongly
    elif bug == "split_transpose_first":
        q, k, v = (t.transpose(1, 2).reshape(B, H, t.shape[1], D) for t in (q, k, v))  # wrongly
    else:
        q, k, v = (split_heads(t, H) for t in (q, k, v))  # (B, H, T, D)
    scale = {"no_scale": 1.0, "scale_d_model": 1 / math.sqrt(C)}.get(bug, 1 / math.sqrt(D))
    scores = q @ k.transpose(-2, -1) * scale  # (B, H, T, S)
    if mask is not None:
        scores = mask_scores(scores, mask)
    x = scores.softmax(dim=-1) @ v  # (B, H, T, D)
    if bug == "merge_order":
        x = x.reshape(B, T, C)  # (B, T, C), wrongly
    elif bug == "merge_reshape_first":
        x = x.reshape(B, C, T).transpose(1, 2)  # (B, T, C), wrongly
    else:
        x = merge_heads(x)  # (B, T, C)
    return x if bug == "no_out_proj" else ref.out_proj(x)


_MHA_BUGS = {
    "split_order": "heads split in the wrong order: view as (B, T, H, D), then transpose(1, 2) "
    "to (B, H, T, D); reshaping straight to (B, H, T, D) mixes positions and heads",
    "split_transpose_first": "heads split in the wrong order: transposing (B, T, C) before "
    "the reshape mixes positions and features; view as (B, T, H, D), then transpose(1, 2)",
    "merge_order": "heads merged in the wrong order: transpose(1, 2) back to (B, T, H, D) "
    "before reshaping to (B, T, C)",
    "merge_reshape_first": "heads merged in the wrong order: reshaping (B, H, T, D) before the "
    "transpose mixes heads and positions; transpose(1, 2) first, then reshape to (B, T, C)",
    "no_out_proj": "output projection missing: pass the merged heads through out_proj",
    "no_scale": "missing 1/sqrt(d_head) scaling of the scores",
    "scale_d_model": "scaled by sqrt(d_model) instead of sqrt(d_head): each head's "
    "dot products have d_head terms",
    "kv_from_query": "keys and values must be projected from `key` and `value`, not `query`",
    "kv_swapped": "key and value swapped: k_proj projects `key`, v_proj projects `value`",
    "value_from_key": "the values come from `key`: v_proj must project `value`",
    "key_from_value": "the keys come from `value`: k_proj must project `key`",
}

_MHA_D_MODEL, _MHA_HEADS = 16, 4


def _build_mha(factory: Callable[..., Any], timeout: float | None) -> tuple[nn.Module, nn.Module]:
    """Build the learner's module and the reference, and copy the reference's weights in."""
    module = build_module(factory, (_MHA_D_MODEL, _MHA_HEADS), {}, timeout)
    torch.manual_seed(0)
    ref = MultiHeadAttention(_MHA_D_MODEL, _MHA_HEADS).eval()
    if not any("out_proj" in name for name, _ in module.named_parameters()):
        raise Fail(
            "your module has no out_proj: multi-head attention ends with an output projection "
            "nn.Linear(d_model, d_model) named out_proj"
        )
    load_reference_weights(module, ref, "q_proj, k_proj, v_proj, out_proj")
    return module.eval(), ref


def _compare_cross(module, ref, query: Tensor, key: Tensor, value: Tensor, timeout) -> None:
    """Attend from ``query`` to a different ``key`` and ``value``; name the bug if it differs."""
    got = call("forward(query, key, value)", module, query, key, value, timeout=timeout)
    out, weights = expect_pair(got, "forward")
    expected = _mha_reference(ref, query, key, value, None)
    expect_tensor(out, "out", shape=expected.shape)
    B, T, S = query.shape[0], query.shape[1], key.shape[1]
    if weights.shape == (B, _MHA_HEADS, T, T):
        raise Fail(
            f"weights have shape (B, H, T, T) although key has S={S} positions: keys and values "
            "must be projected from `key` and `value`, not `query`"
        )
    expect_tensor(weights, "weights, (B, H, T, S),", shape=(B, _MHA_HEADS, T, S))
    if close(out, expected):
        return
    for bug, message in _MHA_BUGS.items():
        if close(out, _mha_reference(ref, query, key, value, None, bug)):
            raise Fail(message)
    raise Fail(
        f"output differs from the reference by up to {max_gap(out, expected):.3g} "
        "with copied weights"
    )


def _mha_steps(factory: Callable[..., Any], timeout: float | None) -> str:
    module, ref = _build_mha(factory, timeout)
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(2, 4, _MHA_D_MODEL, generator=gen)
    key, value = (torch.randn(2, 6, _MHA_D_MODEL, generator=gen) for _ in range(2))
    with torch.no_grad():
        _compare_cross(module, ref, query, key, value, timeout)  # key != value: no swap hides
        keep = torch.tensor([[True] * 4, [True, True, False, False]])
        mask = padding_mask(keep) & causal_mask(4)
        got = call("forward with a mask", module, query, query, query, mask=mask, timeout=timeout)
        out_m, weights_m = expect_pair(got, "forward with a mask")
        if weights_m.shape == (2, _MHA_HEADS, 4, 4) and (weights_m * ~mask).abs().max() > 0:
            raise Fail(
                "with a mask, blocked positions get non-zero weight: pass the mask on to the "
                "attention (True = may attend)"
            )
        if not close(out_m, _mha_reference(ref, query, query, query, mask)):
            raise Fail("with a padding and causal mask, the output differs from the reference")
    return (
        "parameter names, shapes, head split and merge, scaling, output projection, masks "
        "and parity with the course's MultiHeadAttention all agree"
    )


def check_multi_head_attention(
    factory: Callable[..., Any], timeout: float | None = None
) -> CheckResult:
    """Check a multi-head attention class, called as ``factory(d_model, n_heads)``.

    The module must name its parameters like the course (``q_proj``, ``k_proj``,
    ``v_proj``, ``out_proj``) and return ``(out, weights)`` from
    ``forward(query, key, value, mask=None)``; the check copies the reference weights in.
    """
    return run_check("multi_head_attention", lambda: _mha_steps(factory, timeout))


# --- multi-query attention (transfer: one key and one value head for all query heads) ------


class _MultiQueryWeights(nn.Module):
    """The parameters of multi-query attention: H query heads share one key and one value head."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        d_head = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_head)
        self.v_proj = nn.Linear(d_model, d_head)
        self.out_proj = nn.Linear(d_model, d_model)


def _as_multi_head(ref: _MultiQueryWeights, n_heads: int) -> MultiHeadAttention:
    """Return the course's MultiHeadAttention whose H key and value heads are copies of one head."""
    d_model = ref.q_proj.in_features
    mha = MultiHeadAttention(d_model, n_heads).eval()
    with torch.no_grad():
        for name in ("q_proj", "out_proj"):
            getattr(mha, name).load_state_dict(getattr(ref, name).state_dict())
        for name in ("k_proj", "v_proj"):
            shared = getattr(ref, name)
            getattr(mha, name).weight.copy_(shared.weight.repeat(n_heads, 1))  # (C, C)
            getattr(mha, name).bias.copy_(shared.bias.repeat(n_heads))  # (C,)
    return mha


def _mqa_variant(ref: _MultiQueryWeights, query, key, value, mask, bug: str) -> Tensor:
    """Multi-query attention with one common mistake planted (``bug``, as in ``_MQA_BUGS``)."""
    B, T, C = query.shape
    D = ref.k_proj.out_features
    key, value = {"kv_swapped": (value, key), "value_from_key": (key, key)}.get(bug, (key, value))
    q = split_heads(ref.q_proj(query), C // D)  # (B, H, T, D)
    k, v = ref.k_proj(key)[:, None], ref.v_proj(value)[:, None]  # (B, 1, S, D): one head, shared
    scale = {"no_scale": 1.0, "scale_d_model": C**-0.5}.get(bug, D**-0.5)
    scores = mask_scores(q @ k.transpose(-2, -1) * scale, mask)  # (B, H, T, S)
    x = scores.softmax(dim=-1) @ v  # (B, H, T, D)
    x = x.reshape(B, T, C) if bug == "merge_order" else merge_heads(x)  # (B, T, C)
    return x if bug == "no_out_proj" else ref.out_proj(x)


_MQA_BUGS = {
    "no_scale": "missing the 1/sqrt(d_head) scaling of the scores",
    "scale_d_model": "scaled by sqrt(d_model) instead of sqrt(d_head): the shared key head has "
    "d_head features, so each dot product has d_head terms",
    "kv_swapped": "key and value swapped: k_proj projects `key`, v_proj projects `value`",
    "value_from_key": "the values come from `key`: v_proj must project `value`",
    "merge_order": "heads merged in the wrong order: transpose(1, 2) back to (B, T, H, D) before "
    "reshaping to (B, T, C)",
    "no_out_proj": "output projection missing: pass the merged heads through out_proj",
}


def _build_mqa(factory: Callable[..., Any], timeout: float | None) -> tuple[nn.Module, nn.Module]:
    module = build_module(factory, (_MHA_D_MODEL, _MHA_HEADS), {}, timeout)
    torch.manual_seed(0)
    ref = _MultiQueryWeights(_MHA_D_MODEL, _MHA_HEADS).eval()
    D = _MHA_D_MODEL // _MHA_HEADS
    params = dict(module.named_parameters())
    for name in ("k_proj.weight", "v_proj.weight"):
        if name in params and params[name].shape != (D, _MHA_D_MODEL):
            raise Fail(
                f"{name} has shape {shape_str(params[name])}: in multi-query attention the keys "
                f"and values have one head, so k_proj and v_proj map d_model={_MHA_D_MODEL} to "
                f"d_head={D}, nn.Linear(d_model, d_model // n_heads)"
            )
    load_reference_weights(module, ref, "q_proj, k_proj, v_proj, out_proj")
    return module.eval(), ref


def _mqa_case(module, ref, query: Tensor, kv: tuple[Tensor, Tensor], mask, timeout) -> None:
    """Compare with multi-head attention whose key and value heads are H copies of one."""
    what = "forward(query, key, value)" if mask is None else "forward with a mask"
    out, weights = expect_pair(call(what, module, query, *kv, mask, timeout=timeout), what)
    expected, expected_weights = _as_multi_head(ref, _MHA_HEADS)(query, *kv, mask)
    B, T, S = query.shape[0], query.shape[1], kv[0].shape[1]
    expect_tensor(out, f"{what}: out", shape=expected.shape)
    expect_tensor(weights, f"{what}: weights, (B, H, T, S),", shape=(B, _MHA_HEADS, T, S))
    if mask is not None and (weights * ~mask).abs().max() > 0:
        raise Fail("with a mask, blocked positions get non-zero weight: pass the mask on to the "
                   "attention (True = may attend)")  # fmt: skip
    if close(out, expected) and close(weights, expected_weights):
        return
    for bug, message in _MQA_BUGS.items():
        if close(out, _mqa_variant(ref, query, *kv, mask, bug)):
            raise Fail(message)
    raise Fail(f"{what}: the output differs by up to {max_gap(out, expected):.3g} from multi-head "
               "attention whose H key and value heads are copies of your one head")  # fmt: skip


def _mqa_steps(factory: Callable[..., Any], timeout: float | None) -> str:
    module, ref = _build_mqa(factory, timeout)
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(2, 4, _MHA_D_MODEL, generator=gen)
    key, value = (torch.randn(2, 6, _MHA_D_MODEL, generator=gen) for _ in range(2))
    keep = torch.tensor([[True] * 4, [True, True, False, False]])
    with torch.no_grad():
        _mqa_case(module, ref, query, (key, value), None, timeout)  # key != value: no swap hides
        _mqa_case(module, ref, query, (query, query), padding_mask(keep) & causal_mask(4), timeout)
    return (
        "one key and one value head (d_model -> d_head) shared by all query heads: equals "
        "multi-head attention whose key and value heads are H copies of yours, with and without "
        "a mask"
    )


def check_multi_query_attention(
    factory: Callable[..., Any], timeout: float | None = None
) -> CheckResult:
    """Check a multi-query attention class, called as ``factory(d_model, n_heads)``.

    ``q_proj`` and ``out_proj`` map d_model to d_model; ``k_proj`` and ``v_proj`` map d_model to
    d_head (one head, shared by every query head). ``forward(query, key, value, mask=None)``
    returns ``(out, weights)`` with weights of shape ``(B, H, T, S)``.
    """
    return run_check("multi_query_attention", lambda: _mqa_steps(factory, timeout))
