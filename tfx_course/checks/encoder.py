"""Checks for lesson 05 (the encoder): the feed-forward block, the encoder layer, and the
parallel block (attention and feed-forward side by side on one norm).

Shapes: B batch, S source length, C = d_model, H heads. The learner's modules use the
library's parameter names, so the check copies the reference weights in, compares outputs
and names the mistake the output matches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfx_course.attention import (
    MultiHeadAttention,
    padding_mask,
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
    EncoderLayer,
    FeedForward,
    LayerNorm,
)

__all__ = [
    "check_feed_forward",
    "check_encoder_layer",
    "check_parallel_block",
]

D_MODEL, N_HEADS, D_FF = 16, 4, 32


# --- feed-forward -------------------------------------------------------------------


def _ff_steps(factory: Callable[..., Any], timeout: float | None) -> str:
    module = build_module(factory, (D_MODEL, D_FF), {}, timeout)
    torch.manual_seed(0)
    ref = FeedForward(D_MODEL, D_FF).eval()
    load_reference_weights(module, ref, "linear1, linear2")
    module.eval()
    x = torch.randn(2, 5, D_MODEL, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = call("forward(x)", module, x.clone(), timeout=timeout)
        got = expect_tensor(got, "the output", dtype=x.dtype, shape=x.shape)
        l1, l2 = ref.linear1, ref.linear2
        expected = l2(F.relu(l1(x)))
        if close(got, expected):
            return (
                "linear2(relu(linear1(x))) at every position, parity with the library's FeedForward"
            )
        mistakes = {
            "the activation is missing: linear2(relu(linear1(x)))": lambda: l2(l1(x)),
            "ReLU after the second layer too: the block ends with linear2, so its output "
            "can be negative": lambda: F.relu(l2(F.relu(l1(x)))),
            "the ReLU is applied after linear2 instead of between the layers": lambda: F.relu(
                l2(l1(x))
            ),
            "GELU instead of ReLU: the paper's block uses ReLU": lambda: l2(F.gelu(l1(x))),
            "linear1's bias is added after the ReLU: apply linear1 whole (weight and bias), "
            "then the ReLU": lambda: l2(F.relu(x @ l1.weight.T) + l1.bias),
            "the block adds its input: return linear2(...) only, the layer around it adds the "
            "residual": lambda: x + l2(F.relu(l1(x))),
        }
        diagnose(got, mistakes)
    raise Fail(
        f"the output differs from linear2(relu(linear1(x))) by up to {max_gap(got, expected):.3g}"
    )


def check_feed_forward(factory: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check a feed-forward class built as ``factory(d_model, d_ff)`` with ``linear1``, ``linear2``."""
    return run_check("feed_forward", lambda: _ff_steps(factory, timeout))


# --- encoder layer ------------------------------------------------------------------


def _encoder_variant(ref: EncoderLayer, x: Tensor, mask: Tensor, pre: bool, bug: str) -> Tensor:
    """The reference forward pass (bug="") or the same with one common mistake planted."""
    attn_mask = None if bug == "no_mask" else mask
    norm2 = ref.norm1 if bug == "norm1_twice" else ref.norm2
    if bug == "other_mode":
        pre = not pre
    skips = {"no_attn_residual": (0, 1), "no_ff_residual": (1, 0)}.get(bug, (1, 1))
    skips = {"attn_residual_twice": (2, 1), "ff_residual_twice": (1, 2)}.get(bug, skips)
    if pre:
        h = ref.norm1(x)
        kv = x if bug == "raw_kv" else h
        x = skips[0] * x + ref.self_attn(h, kv, kv, attn_mask)[0]
        return skips[1] * x + ref.ff(norm2(x))
    x = ref.norm1(skips[0] * x + ref.self_attn(x, x, x, attn_mask)[0])
    return norm2(skips[1] * x + ref.ff(x))


def _encoder_bugs(pre: bool) -> dict[str, str]:
    mode = "norm_first=True (Pre-LN)" if pre else "norm_first=False (Post-LN)"
    wanted = "x + f(norm(x))" if pre else "norm(x + f(x))"
    return {
        "other_mode": f"with {mode} each sublayer must compute {wanted}; yours computes the other form",
        "no_mask": "the mask is not passed to self-attention, so padded positions get attention",
        "no_attn_residual": f"with {mode}, the residual around self-attention is missing",
        "no_ff_residual": f"with {mode}, the residual around the feed-forward block is missing",
        "norm1_twice": "norm1 is used twice: norm1 goes with self-attention, norm2 with the "
        "feed-forward block",
        "raw_kv": "keys and values come from the raw x; in Pre-LN the query, key and value "
        "are all norm1(x)",
        "attn_residual_twice": f"with {mode}, the residual around self-attention is added twice: "
        f"add x once, {wanted}",
        "ff_residual_twice": f"with {mode}, the residual around the feed-forward block is added "
        f"twice: add its input once, {wanted}",
    }


def _encoder_case(factory: Callable[..., Any], pre: bool, timeout: float | None) -> None:
    module = build_module(factory, (D_MODEL, N_HEADS, D_FF), {"norm_first": pre}, timeout)
    torch.manual_seed(0)
    ref = EncoderLayer(D_MODEL, N_HEADS, D_FF, norm_first=pre).eval()
    jitter_norms(ref, seed=1)
    load_reference_weights(module, ref, "self_attn, ff, norm1, norm2")
    module.eval()
    gen = torch.Generator().manual_seed(2)
    x = 2 * torch.randn(2, 5, D_MODEL, generator=gen)
    mask = padding_mask(torch.tensor([[True] * 5, [True, True, True, False, False]]))
    with torch.no_grad():
        got = call(
            f"forward(x, mask) with norm_first={pre}", module, x.clone(), mask, timeout=timeout
        )
        got = expect_tensor(got, "the output", dtype=x.dtype, shape=x.shape)
        expected = ref(x, mask)
        if close(got, expected):
            return
        mistakes = {
            msg: (lambda bug=bug: _encoder_variant(ref, x, mask, pre, bug))
            for bug, msg in _encoder_bugs(pre).items()
        }
        diagnose(got, mistakes)
    raise Fail(
        f"with norm_first={pre} the output differs from the library's EncoderLayer by up to "
        f"{max_gap(got, expected):.3g}"
    )


def _encoder_steps(factory: Callable[..., Any], timeout: float | None) -> str:
    for pre in (True, False):
        _encoder_case(factory, pre, timeout)
    return "Pre-LN and Post-LN wiring, residuals, norms and the padding mask match the library's EncoderLayer"


def check_encoder_layer(factory: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check an encoder layer built as ``factory(d_model, n_heads, d_ff, norm_first=...)``."""
    return run_check("encoder_layer", lambda: _encoder_steps(factory, timeout))


# --- the parallel block: attention and feed-forward side by side (transfer) --------------


class _ParallelWeights(nn.Module):
    """The parameters of a parallel encoder layer: one norm shared by both branches."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads)
        self.ff = FeedForward(d_model, d_ff)
        self.norm = LayerNorm(d_model)


def _parallel_variant(ref: _ParallelWeights, x: Tensor, mask: Tensor | None, bug: str = "") -> Tensor:  # fmt: skip
    """``x + attn(norm(x)) + ff(norm(x))``, or the same with one common mistake planted."""

    def attn(q: Tensor, kv: Tensor) -> Tensor:
        return ref.self_attn(q, kv, kv, None if bug == "no_mask" else mask)[0]

    if bug == "sequential":
        x = x + attn(ref.norm(x), ref.norm(x))
        return x + ref.ff(ref.norm(x))
    if bug == "post_norm":
        return ref.norm(x + attn(x, x) + ref.ff(x))
    h = ref.norm(x)
    q, kv = {"attn_raw": (x, x), "kv_raw": (h, x)}.get(bug, (h, h))
    a = attn(q, kv)
    f = ref.ff(x if bug == "ff_raw" else h)
    if bug == "averaged":
        return x + (a + f) / 2
    return {"no_residual": 0, "residual_twice": 2}.get(bug, 1) * x + a + f


_PARALLEL_BUGS = {
    "sequential": "this is the sequential Pre-LN layer: in the parallel block both branches "
    "read the same h = norm(x) of the layer's input, and the feed-forward does not see the "
    "attention's output",
    "ff_raw": "the feed-forward branch reads the raw x: both branches read h = norm(x)",
    "attn_raw": "the attention branch reads the raw x: both branches read h = norm(x)",
    "kv_raw": "keys and values come from the raw x: query, key and value are all h = norm(x)",
    "post_norm": "the sum is normalised (Post-LN): the parallel block normalises its input once, "
    "h = norm(x), and adds both branches to the raw x",
    "no_residual": "the residual is missing: y = x + attention(h) + feed_forward(h)",
    "residual_twice": "x is added twice: y = x + attention(h) + feed_forward(h) adds it once",
    "averaged": "the branches are averaged; add them, y = x + attention(h) + feed_forward(h)",
    "no_mask": "the mask is not passed to self-attention, so padded positions get attention",
}


def _parallel_case(module: nn.Module, ref: _ParallelWeights, mask, timeout) -> None:
    x = 2 * torch.randn(2, 5, D_MODEL, generator=torch.Generator().manual_seed(2))
    what = "forward(x)" if mask is None else "forward(x, mask)"
    with torch.no_grad():
        got = call(what, module, x.clone(), mask, timeout=timeout)
        got = expect_tensor(got, "the output", dtype=x.dtype, shape=x.shape)
        expected = _parallel_variant(ref, x, mask)
        if close(got, expected):
            return
        mistakes = {
            msg: (lambda bug=bug: _parallel_variant(ref, x, mask, bug))
            for bug, msg in _PARALLEL_BUGS.items()
        }
        diagnose(got, mistakes)
    raise Fail(f"{what}: the output differs from x + attention(norm(x)) + feed_forward(norm(x)) "
               f"by up to {max_gap(got, expected):.3g}")  # fmt: skip


def _parallel_steps(factory: Callable[..., Any], timeout: float | None) -> str:
    module = build_module(factory, (D_MODEL, N_HEADS, D_FF), {}, timeout)
    torch.manual_seed(0)
    ref = _ParallelWeights(D_MODEL, N_HEADS, D_FF).eval()
    jitter_norms(ref, seed=1)
    load_reference_weights(module, ref, "self_attn, ff, norm")
    module.eval()
    _parallel_case(module, ref, None, timeout)
    _parallel_case(module, ref, padding_mask(torch.tensor([[True] * 5, [True] * 3 + [False] * 2])), timeout)  # fmt: skip
    return (
        "x + attention(h) + feed_forward(h) with one h = norm(x), with and without a padding "
        "mask, equal to the library's modules with copied weights"
    )


def check_parallel_block(factory: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check a parallel encoder layer built as ``factory(d_model, n_heads, d_ff)``.

    ``forward(x, mask=None)`` must return ``x + self_attn(h, h, h, mask) + ff(h)`` with
    ``h = norm(x)``; the parameters are named ``self_attn``, ``ff`` and ``norm``.
    """
    return run_check("parallel_block", lambda: _parallel_steps(factory, timeout))
