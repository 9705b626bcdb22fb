"""Checks for lesson 01 (self-attention): attention scores, masks, softmax and scaled
dot-product attention.

Shapes: B batch, H heads, T queries, S keys, D = d_k.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tfx_course.attention import (
    causal_mask,
    mask_scores,
    padding_mask,
)
from tfx_course.checks.core import (
    CheckResult,
    Fail,
    call,
    close,
    diagnose,
    expect_pair,
    expect_tensor,
    max_gap,
    run_check,
)
from tfx_course.validation import shape_str

__all__ = [
    "check_attention_scores",
    "check_padding_mask",
    "check_causal_mask",
    "check_masked_softmax",
    "check_attention",
]


# --- attention scores ------------------------------------------------------------------


def _scores_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 4, 8, generator=gen), torch.randn(2, 3, 5, 8, generator=gen)
    got = call("attention_scores(q, k)", fn, q.clone(), k.clone(), timeout=timeout)
    got = expect_tensor(got, "the scores", dtype=torch.float32)
    raw = q @ k.transpose(-2, -1)  # (B, H, T, S)
    if got.shape == (2, 3, 5, 4):
        raise Fail(
            "scores have shape (2, 3, 5, 4) = (..., S, T); expected (..., T, S) = (2, 3, 4, 5): "
            "compute q @ k.transpose(-2, -1), one row per query"
        )
    expect_tensor(got, "the scores for q (2, 3, 4, 8) and k (2, 3, 5, 8)", shape=raw.shape)
    if not close(got, raw / math.sqrt(8)):
        mistakes = {
            "missing scaling: divide q k^T by math.sqrt(d_k)": lambda: raw,
            "divided by d_k instead of sqrt(d_k): use math.sqrt(d_k)": lambda: raw / 8,
            "multiplied by sqrt(d_k) instead of dividing by it": lambda: raw * math.sqrt(8),
            "scaled by the number of keys S: d_k is the feature size q.shape[-1]": lambda: (
                raw / math.sqrt(5)
            ),
            "scaled by the number of queries T: d_k is the feature size q.shape[-1]": lambda: (
                raw / math.sqrt(4)
            ),
        }
        diagnose(got, mistakes)
        gap = max_gap(got, raw / math.sqrt(8))
        raise Fail(f"scores differ from q k^T / sqrt(d_k) by up to {gap:.3g}")
    q3, k3 = torch.randn(2, 4, 6, generator=gen), torch.randn(2, 7, 6, generator=gen)
    try:
        got3 = call("attention_scores(q, k) on (B, T, D) inputs", fn, q3, k3, timeout=timeout)
        got3 = expect_tensor(got3, "for (B, T, D) inputs, the scores", shape=(2, 4, 7))
    except Fail as failure:
        raise Fail(
            f"works for (B, H, T, D) inputs but not for (B, T, D): {failure}; transpose the "
            "last two axes with k.transpose(-2, -1) and read d_k from q.shape[-1]"
        ) from None
    if not close(got3, q3 @ k3.transpose(-2, -1) / math.sqrt(6)):
        raise Fail("for (B, T, D) inputs the scores are wrong: read d_k from q.shape[-1]")
    return "shape (..., T, S), 1/sqrt(d_k) scaling and any number of leading axes all agree"


def check_attention_scores(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(q, k) -> scores``: ``q k^T / sqrt(d_k)`` of shape ``(..., T, S)``."""
    return run_check("attention_scores", lambda: _scores_steps(fn, timeout))


# --- padding mask -------------------------------------------------------------------


def _padding_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    tokens = torch.tensor([[5, 7, 4, 9, 6], [8, 5, 6, 0, 0]])
    got = call("padding_mask(tokens, pad_id=0)", fn, tokens.clone(), 0, timeout=timeout)
    got = expect_tensor(got, "the mask", finite=False)
    if got.dtype != torch.bool:
        raise Fail(
            f"the mask has dtype {got.dtype}; return a boolean mask (True = may attend): "
            "tokens != pad_id is already boolean, do not convert it"
        )
    expected = (tokens != 0)[:, None, None, :]  # (B, 1, 1, S)
    if got.shape == tokens.shape:
        raise Fail(
            "the mask has shape (B, S) = (2, 5); add a head axis and a query axis, "
            "(B, 1, 1, S), so it broadcasts over heads and queries: mask[:, None, None, :]"
        )
    if got.shape in {(2, 1, 5, 1), (2, 5, 1, 1)}:
        raise Fail(
            f"the mask has shape {shape_str(got)}; the keys are the last axis of the scores, "
            "so the mask must be (B, 1, 1, S) = (2, 1, 1, 5)"
        )
    expect_tensor(got, "the mask", shape=expected.shape, finite=False)
    if torch.equal(got, ~expected):
        raise Fail("mask inverted: True must mark the real tokens (may attend), False the padding")
    if not torch.equal(got, expected):
        raise Fail("the mask is wrong: it should be True exactly where tokens != pad_id")
    tokens = torch.tensor([[4, 0, 7, 9, 3], [6, 5, 3, 3, 3]])  # pad_id 3; 0 is a real token
    got = call("padding_mask(tokens, pad_id=3)", fn, tokens.clone(), 3, timeout=timeout)
    got = expect_tensor(got, "with pad_id=3, the mask", shape=expected.shape, finite=False)
    if torch.equal(got, (tokens != 0)[:, None, None, :]):
        raise Fail("with pad_id=3 the mask marks token 0 as padding: compare with pad_id, not 0")
    if not torch.equal(got, (tokens != 3)[:, None, None, :]):
        raise Fail("with pad_id=3 the mask is wrong: it should be True where tokens != pad_id")
    return "boolean, shape (B, 1, 1, S), True on real tokens for any pad_id"


def check_padding_mask(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(tokens, pad_id) -> mask``: True on real tokens, shape ``(B, 1, 1, S)``."""
    return run_check("padding_mask", lambda: _padding_steps(fn, timeout))


# --- causal mask --------------------------------------------------------------------


def _causal_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    for size in (5, 1, 3):
        got = call(f"causal_mask({size})", fn, size, timeout=timeout)
        got = expect_tensor(got, f"causal_mask({size})", finite=False)
        if got.dtype != torch.bool:
            raise Fail(
                f"causal_mask({size}) has dtype {got.dtype}; return a boolean mask "
                "(True = may attend), e.g. torch.ones(size, size, dtype=torch.bool).tril()"
            )
        expect_tensor(got, f"causal_mask({size})", shape=(size, size), finite=False)
        expected = torch.ones(size, size, dtype=torch.bool).tril()
        if torch.equal(got, expected):
            continue
        if torch.equal(got, ~expected):
            raise Fail(
                "mask inverted: True means 'may attend', so position t is True at 0..t "
                "(that is nn.MultiheadAttention's opposite polarity)"
            )
        if torch.equal(got, expected.T):
            raise Fail(
                "mask transposed: row t (the query) must allow columns 0..t, the past; "
                "yours allows the future (use tril, not triu)"
            )
        if torch.equal(got, expected.tril(-1)):
            raise Fail(
                "the diagonal must be True: each position may attend to itself "
                "(otherwise the first row blocks everything)"
            )
        raise Fail(f"causal_mask({size}) is wrong: row t should be True at columns 0..t only")
    return "boolean, (T, T), lower triangle with the diagonal, for sizes 1, 3 and 5"


def check_causal_mask(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(size) -> mask``: ``(T, T)`` boolean, True where a query may see a key."""
    return run_check("causal_mask", lambda: _causal_steps(fn, timeout))


# --- masked softmax -----------------------------------------------------------------


_INVERTED = (
    "mask inverted: True means 'may attend'; fill the scores where the mask is False: "
    "scores.masked_fill(~mask, ...)"
)


def _inverted_with_inf(weights: Any, scores: Tensor, mask: Tensor | None) -> None:
    """Name an inverted mask before blaming -inf: with -inf, an inverted mask gives NaN rows.

    The last row of a causal mask allows every key; inverted, it blocks them all, and a row
    of -inf scores has no softmax. The NaN is the symptom, the inverted mask the bug.
    """
    if mask is None or not isinstance(weights, Tensor) or weights.shape != scores.shape:
        return
    if not weights.dtype.is_floating_point or torch.isfinite(weights).all():
        return
    inverted = scores.masked_fill(mask, float("-inf")).softmax(-1)
    both = weights.detach().double(), inverted.double()
    if torch.allclose(*both, atol=1e-5, rtol=1e-4, equal_nan=True):
        raise Fail(_INVERTED)


def _check_weights(got: Any, scores: Tensor, mask: Tensor | None, what: str) -> Tensor:
    _inverted_with_inf(got, scores, mask)
    got = expect_tensor(got, what, dtype=scores.dtype)
    expect_tensor(got, what, shape=scores.shape)
    expected = scores.softmax(-1) if mask is None else mask_scores(scores, mask).softmax(-1)
    if close(got, expected):
        return got
    filled = scores if mask is None else mask_scores(scores, mask)
    mistakes = {
        "softmax over the wrong axis: each query's weights (a row) must sum to 1; use "
        "softmax(dim=-1), over the keys": lambda: filled.softmax(-2),
    }
    if mask is not None:
        mistakes |= {
            _INVERTED: lambda: mask_scores(scores, ~mask).softmax(-1),
            "masked after the softmax, so rows no longer sum to 1: fill the blocked scores "
            "before the softmax": lambda: scores.softmax(-1) * mask,
            "blocked scores filled with 0, which still gets weight: fill them with "
            "torch.finfo(scores.dtype).min": lambda: scores.masked_fill(~mask, 0).softmax(-1),
            "the mask is ignored: fill the scores where the mask is False before the "
            "softmax": lambda: scores.softmax(-1),
        }
    diagnose(got, mistakes)
    if mask is not None and got[~mask.expand_as(got)].abs().max() > 0:
        raise Fail(f"{what}: blocked positions get non-zero weight (they must get exactly 0)")
    raise Fail(
        f"{what} differ from softmax over the last axis by up to {max_gap(got, expected):.3g}"
    )


def _softmax_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    gen = torch.Generator().manual_seed(0)
    scores = 3 * torch.randn(2, 3, 5, 5, generator=gen)
    got = call("masked_softmax(scores, mask=None)", fn, scores.clone(), None, timeout=timeout)
    _check_weights(got, scores, None, "with mask=None, the weights")
    keep = torch.tensor([[True] * 5, [True, True, True, False, False]])
    mask = padding_mask(keep) & causal_mask(5)  # (B, 1, T, S)
    got = call("masked_softmax(scores, mask)", fn, scores.clone(), mask, timeout=timeout)
    _check_weights(got, scores, mask, "with a padding and causal mask, the weights")
    scores3 = torch.randn(2, 4, 6, generator=gen)
    try:
        got = call("masked_softmax on (B, T, S) scores", fn, scores3.clone(), None, timeout=timeout)
        _check_weights(got, scores3, None, "for (B, T, S) scores, the weights")
    except Fail as failure:
        raise Fail(f"{failure} (use dim=-1, which works for any number of axes)") from None
    # Row 2 blocks every key. Its weights are undefined; they only have to stay finite.
    blocked = padding_mask(torch.tensor([[True] * 5, [False] * 5]))  # (B, 1, 1, S)
    got = call(
        "masked_softmax with a fully blocked row", fn, scores.clone(), blocked, timeout=timeout
    )
    got = expect_tensor(got, "weights", dtype=scores.dtype, shape=scores.shape, finite=False)
    if not torch.isfinite(got).all():
        raise Fail(
            "a row whose keys are all blocked gives NaN: fill with torch.finfo(scores.dtype).min "
            "instead of float('-inf'), so that row becomes uniform instead of NaN"
        )
    _check_weights(got[:1], scores[:1], blocked[:1], "with a fully blocked row, the other weights")
    return "softmax over the keys (dim=-1), blocked positions get 0, no NaN on blocked rows"


def check_masked_softmax(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(scores, mask) -> weights``: softmax over the keys with blocked scores filled."""
    return run_check("masked_softmax", lambda: _softmax_steps(fn, timeout))


# --- scaled dot-product attention ---------------------------------------------------


def _softmax_attention(q: Tensor, k: Tensor, scale: float, mask: Tensor | None) -> Tensor:
    scores = q @ k.transpose(-2, -1) * scale  # (..., T, S)
    return (scores if mask is None else mask_scores(scores, mask)).softmax(dim=-1)


def _diagnose_weights(weights: Tensor, q: Tensor, k: Tensor, v: Tensor) -> None:
    """Compare unmasked weights with the reference and with common mistakes."""
    d_k, d_v = q.shape[-1], v.shape[-1]
    expected_shape = q.shape[:-1] + (k.shape[-2],)
    if weights.shape == k.shape[:-1] + (q.shape[-2],):
        raise Fail(
            f"weights have shape {shape_str(weights)} = (..., S, T); expected (..., T, S) "
            f"{shape_str(expected_shape)}: compute q @ k.transpose(-2, -1)"
        )
    expect_tensor(weights, "the weights", shape=expected_shape)
    reference = _softmax_attention(q, k, 1 / math.sqrt(d_k), None)
    if close(weights, reference):
        return
    mistakes = {
        "softmax over the wrong axis: each query's weights (a row) must sum to 1; use "
        "softmax(dim=-1), over the keys": lambda: (
            q @ k.transpose(-2, -1) / math.sqrt(d_k)
        ).softmax(-2),
        "missing 1/sqrt(d_k) scaling: divide the scores by math.sqrt(d_k)": lambda: (
            _softmax_attention(q, k, 1.0, None)
        ),
        "divided by d_k instead of sqrt(d_k): use math.sqrt(d_k)": lambda: _softmax_attention(
            q, k, 1 / d_k, None
        ),
        "multiplied by sqrt(d_k) instead of dividing by it": lambda: _softmax_attention(
            q, k, math.sqrt(d_k), None
        ),
        "scaled by the size of v; use d_k = q.shape[-1]": lambda: _softmax_attention(
            q, k, 1 / math.sqrt(d_v), None
        ),
    }
    diagnose(weights, mistakes)
    rows = weights.sum(-1)
    if not torch.allclose(rows, torch.ones_like(rows), atol=1e-4):
        raise Fail("rows of the weights do not sum to 1: apply softmax over the keys (dim=-1)")
    raise Fail(
        f"weights differ from softmax(q k^T / sqrt(d_k)) by up to {max_gap(weights, reference):.3g}"
    )


def _diagnose_masked(
    weights: Tensor, out: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor
) -> None:
    reference = _softmax_attention(q, k, 1 / math.sqrt(q.shape[-1]), mask)
    if close(weights, reference):
        if not close(out, reference @ v):
            raise Fail("with a mask, the output is not weights @ v")
        return
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    mistakes = {
        "mask inverted: True means 'may attend'; fill the scores where the mask is False "
        "(scores.masked_fill(~mask, ...))": lambda: mask_scores(scores, ~mask).softmax(-1),
        "with a mask, rows no longer sum to 1: you masked after the softmax; fill the "
        "blocked scores before it": lambda: scores.softmax(-1) * mask,
        "the mask is ignored: fill the scores where the mask is False with "
        "torch.finfo(scores.dtype).min before the softmax": lambda: scores.softmax(-1),
    }
    diagnose(weights, mistakes)
    leak = weights[~mask.expand_as(weights)].abs().max().item()
    if leak > 0:
        raise Fail(
            f"positions the mask blocks get weight up to {leak:.3g} (should be exactly 0): fill "
            "the scores where mask is False with torch.finfo(scores.dtype).min before softmax"
        )
    raise Fail("with a mask, the weights of the allowed positions are wrong")


def _attention_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 4, 8, generator=gen), torch.randn(2, 3, 5, 8, generator=gen)
    v = torch.randn(2, 3, 5, 6, generator=gen)
    # The learner-visible wording below also appears in lessons 00-01's stored outputs.
    got = call("your attention", fn, q.clone(), k.clone(), v.clone(), timeout=timeout)
    out, weights = expect_pair(got, "it")
    _diagnose_weights(weights, q, k, v)
    if out.shape != (2, 3, 4, 6):
        raise Fail(f"out has shape {shape_str(out)}, expected (..., T, Dv) = (2, 3, 4, 6)")
    if not close(out, weights @ v):
        raise Fail("out is not weights @ v: multiply the weights by the values")
    q5 = torch.randn(2, 3, 5, 8, generator=gen)
    keep = torch.tensor([[True] * 5, [True, True, True, False, False]])
    mask = padding_mask(keep) & causal_mask(5)
    got = call(
        "your attention with a mask",
        fn,
        q5.clone(),
        k.clone(),
        v.clone(),
        mask=mask,
        timeout=timeout,
    )
    if isinstance(got, tuple | list) and len(got) == 2:
        _inverted_with_inf(got[1], q5 @ k.transpose(-2, -1) / math.sqrt(q5.shape[-1]), mask)
    out_m, weights_m = expect_pair(got, "with a mask, it")
    expect_tensor(weights_m, "with a mask, the weights", shape=(2, 3, 5, 5))
    _diagnose_masked(weights_m, out_m, q5, k, v, mask)
    torch_out = F.scaled_dot_product_attention(q5, k, v, attn_mask=mask)
    if not close(out_m, torch_out):
        raise Fail("the output differs from F.scaled_dot_product_attention")
    return (
        "shapes, softmax axis, 1/sqrt(d_k) scaling, padding and causal masks, and parity "
        "with F.scaled_dot_product_attention all agree"
    )


def check_attention(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(q, k, v, mask=None) -> (out, weights)``, scaled dot-product attention."""
    return run_check("attention", lambda: _attention_steps(fn, timeout))
