"""Checks for lesson 16 (modern components): RoPE, RMSNorm and the sliding-window mask.

Shapes: B batch, H heads, T positions, D = d_head, C = d_model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from tfx_course.checks.core import (
    CheckResult,
    Fail,
    call,
    close,
    diagnose,
    expect_tensor,
    max_gap,
    run_check,
)
from tfx_course.modern import apply_rope, sliding_window_mask

__all__ = ["check_apply_rope", "check_rms_norm", "check_sliding_window_mask"]


# --- RoPE ---------------------------------------------------------------------------------


def _rope_variant(x: Tensor, bug: str) -> Tensor:
    """RoPE with one planted mistake (computed in float64, returned as float32)."""
    T, D = x.shape[-2:]
    pair = torch.arange(D // 2, dtype=torch.float64)
    exponent = pair / D if bug == "i_not_2i" else 2 * pair / D
    position = torch.arange(T, dtype=torch.float64) + (1 if bug == "from_one" else 0)
    angles = position[:, None] * 10000.0 ** (-exponent)  # (T, D/2)
    cos, sin = angles.cos(), angles.sin()
    x = x.double()
    first, second = (x[..., : D // 2], x[..., D // 2 :]) if bug == "halves" else (x[..., 0::2], x[..., 1::2])  # fmt: skip
    if bug == "backwards":
        sin = -sin
    if bug == "cos_only":
        return (x * cos.repeat_interleave(2, -1)).float()
    a, b = first * cos - second * sin, first * sin + second * cos  # (..., T, D/2) each
    if bug in ("halves", "not_interleaved"):
        return torch.cat([a, b], dim=-1).float()
    return torch.stack([a, b], dim=-1).flatten(-2).float()


_ROPE_BUGS = {
    "halves": "you rotated feature i with feature i + D/2 (the 'rotate half' layout of some "
    "libraries); this course pairs neighbouring features (2i, 2i+1), as the paper writes it",
    "not_interleaved": "the rotated pairs went back as two halves; put them back in place: "
    "feature 2i gets x_2i cos - x_2i+1 sin, feature 2i+1 gets x_2i sin + x_2i+1 cos",
    "backwards": "rotated the wrong way (by -angle): x'_2i = x_2i cos - x_2i+1 sin, "
    "x'_2i+1 = x_2i sin + x_2i+1 cos",
    "i_not_2i": "the exponent uses i instead of 2i: pair i turns at theta_i = 10000^(-2i / D)",
    "from_one": "positions start at 1; the first position is 0 and is left unrotated",
    "cos_only": "only the cosine terms: each feature must also receive its partner times sin",
}


def _rope_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    gen = torch.Generator().manual_seed(0)
    for shape in ((2, 3, 7, 8), (1, 1, 5, 4)):
        x = torch.randn(*shape, generator=gen)
        got = call(f"apply_rope(x of shape {shape})", fn, x.clone(), timeout=timeout)
        got = expect_tensor(got, "the result", dtype=x.dtype, shape=x.shape)
        expected = apply_rope(x)
        if close(got, expected, atol=1e-5):
            continue
        if close(got, x):
            raise Fail("the result equals x: rotate pair (2i, 2i+1) at position t by t * theta_i")
        mistakes = {
            msg: (lambda bug=bug, x=x: _rope_variant(x, bug)) for bug, msg in _ROPE_BUGS.items()
        }
        diagnose(got, mistakes, atol=1e-5)
        raise Fail(f"the result differs from RoPE by up to {max_gap(got, expected):.3g}")
    return "pairs (2i, 2i+1) rotated by t * 10000^(-2i/D), position 0 unrotated, any leading axes"


def check_apply_rope(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(x) -> x rotated``: RoPE on (..., T, D), pairs (2i, 2i+1), base 10000."""
    return run_check("apply_rope", lambda: _rope_steps(fn, timeout))


# --- RMSNorm ------------------------------------------------------------------------------


def _rms_inputs() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, generator=gen) * 3 + 2  # a mean far from 0: centring shows
    x[0, 1] = x[0, 1] * 1e-3  # mean square ~1e-5: shows where eps goes
    x[1, 2] = 0.0  # an all-zero row: only eps keeps it finite
    return x, 1 + 0.5 * torch.randn(8, generator=gen)


def _rms_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    x, weight = _rms_inputs()
    eps = 1e-6
    got = call("rms_norm(x, weight)", fn, x.clone(), weight.clone(), timeout=timeout)
    if isinstance(got, Tensor) and got.dtype.is_floating_point and not torch.isfinite(got).all():
        raise Fail("NaN or inf for an all-zero row: add eps inside the square root")
    got = expect_tensor(got, "the result", dtype=x.dtype, shape=x.shape)
    expected = torch.nn.functional.rms_norm(x, (8,), weight, eps)
    if close(got, expected, atol=1e-4):
        return "x / sqrt(mean(x^2) + eps) * weight over the last axis, no mean subtracted"
    ms = x.pow(2).mean(-1, keepdim=True)
    centred = x - x.mean(-1, keepdim=True)
    mistakes = {
        "the mean was subtracted: RMSNorm only divides by the root mean square (that is "
        "LayerNorm without its bias)": lambda: (
            centred / (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt() * weight
        ),  # fmt: skip
        "divided by the standard deviation, which measures around the mean: use the root mean "
        "square, sqrt(mean(x**2) + eps)": lambda: (
            x / (x.var(-1, correction=0, keepdim=True) + eps).sqrt() * weight
        ),  # fmt: skip
        "eps added outside the square root: divide by sqrt(mean(x**2) + eps)": lambda: (
            x / (ms.sqrt() + eps) * weight
        ),  # fmt: skip
        "the weight is not applied: multiply by weight at the end": lambda: x / (ms + eps).sqrt(),
        "divided by the mean square itself: take its square root": lambda: x / (ms + eps) * weight,
        "summed the squares instead of averaging them: divide the sum by C (use .mean)": lambda: (
            x / (x.pow(2).sum(-1, keepdim=True) + eps).sqrt() * weight
        ),
        "normalised over the wrong axis: each position's own features, the last axis "
        "(dim=-1)": lambda: x / (x.pow(2).mean(0, keepdim=True) + eps).sqrt() * weight,
        "normalised over the positions axis (dim=-2); use the features, dim=-1": lambda: (
            x / (x.pow(2).mean(-2, keepdim=True) + eps).sqrt() * weight
        ),
    }
    diagnose(got, mistakes, atol=1e-4)
    raise Fail(f"the result differs from torch.nn.RMSNorm by up to {max_gap(got, expected):.3g}")


def check_rms_norm(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(x, weight, eps=1e-6)`` against ``torch.nn.functional.rms_norm``."""
    return run_check("rms_norm", lambda: _rms_steps(fn, timeout))


# --- the sliding-window mask ----------------------------------------------------------------


def _window_mistakes(size: int, window: int) -> dict[str, Tensor]:
    t = torch.arange(size)[:, None]
    s = torch.arange(size)[None, :]
    back = t - s  # how far back key s lies from query t
    expected = (back >= 0) & (back < window)
    return {
        "mask inverted: True means 'may attend', so query t is True at keys t - window + 1 .. t": ~expected,  # fmt: skip
        "the window looks forward: row t (the query) must allow the keys before it, "
        "t - window + 1 .. t, not after it": expected.T,
        "the window sees the future: it also allows keys after t; keep only 0 <= t - s < window "
        "(combine the band with the causal rule, &)": back.abs() < window,
        "one key too many: a window of w keys counts the query itself, so t - s < window, not <=": (
            back >= 0
        )
        & (back <= window),
        "the diagonal must be True: the window counts the query itself, 0 <= t - s": (back > 0)
        & (back <= window),  # fmt: skip
        "one key too few: a window of w keys is t - w + 1 .. t, w keys including t": (back >= 0)
        & (back < window - 1),  # fmt: skip
        "no window: this is the plain causal mask; block keys window or more positions back": back
        >= 0,  # fmt: skip
    }


def _window_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    for size, window in ((7, 3), (5, 1), (4, 6), (6, 6)):
        what = f"sliding_window_mask({size}, {window})"
        got = expect_tensor(call(what, fn, size, window, timeout=timeout), what, finite=False)
        if got.dtype != torch.bool:
            raise Fail(
                f"{what} has dtype {got.dtype}; return a boolean mask (True = may attend), "
                "e.g. from comparisons such as (offset >= 0) & (offset < window)"
            )
        expect_tensor(got, what, shape=(size, size), finite=False)
        expected = sliding_window_mask(size, window)
        if torch.equal(got, expected):
            continue
        for message, mistake in _window_mistakes(size, window).items():
            if torch.equal(got, mistake):
                raise Fail(f"{what}: {message}")
        wrong = int((got != expected).sum())
        raise Fail(f"{what}: {wrong} entries wrong; row t should be True at keys t - window + 1 .. t")  # fmt: skip
    return "boolean (T, T), query t sees keys t - window + 1 .. t, for windows shorter and longer than T"  # fmt: skip


def check_sliding_window_mask(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(size, window) -> mask``: True where 0 <= t - s < window (causal window)."""
    return run_check("sliding_window_mask", lambda: _window_steps(fn, timeout))
