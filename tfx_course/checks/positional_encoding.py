"""Checks for lesson 03 (positional encoding): the sinusoidal table, embeddings plus positions,
and ALiBi's linear bias on the attention scores.

Shapes: B batch, T positions, C = d_model, V vocabulary size, H heads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

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
from tfx_course.layers import (
    sinusoidal_encoding,
)
from tfx_course.validation import shape_str

__all__ = [
    "check_sinusoidal_encoding",
    "check_embed_tokens",
    "check_alibi_bias",
]


# --- sinusoidal encoding ------------------------------------------------------------


def _sinusoid_variant(max_len: int, d_model: int, bug: str) -> Tensor:
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len, 1)
    if bug == "i_not_2i":
        inv_freq = 10000.0 ** (-torch.arange(d_model // 2, dtype=torch.float64) / d_model)
    else:
        inv_freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    if bug == "from_one":
        pos = pos + 1
    angles = pos * inv_freq  # (max_len, C/2)
    sin, cos = torch.sin(angles), torch.cos(angles)
    if bug == "halves":
        return torch.cat([sin, cos], dim=-1).float()
    if bug == "swapped":
        sin, cos = cos, sin
    if bug == "per_column":  # exponent from the column index j, not from the pair index 2i
        inv_freq = 10000.0 ** (-torch.arange(d_model, dtype=torch.float64) / d_model)
        angles = pos * inv_freq  # (max_len, C)
        return torch.where(torch.arange(d_model) % 2 == 0, angles.sin(), angles.cos()).float()
    return torch.stack([sin, cos], dim=-1).flatten(1).float()  # interleave: sin, cos, sin, ...


_SINUSOID_BUGS = {
    "swapped": "sin and cos swapped: even columns 2i hold sin, odd columns 2i+1 hold cos",
    "halves": "sin and cos concatenated as two halves; interleave them: column 2i is sin, 2i+1 is cos",
    "i_not_2i": "the exponent uses i instead of 2i: the frequency of pair i is 1 / 10000^(2i / d_model)",
    "per_column": "the exponent uses the column index; columns 2i and 2i+1 share the frequency "
    "1 / 10000^(2i / d_model)",
    "from_one": "positions start at 1; the first row is position 0 (sin 0 = 0, cos 0 = 1)",
}


def _sinusoid_case(
    fn: Callable[..., Any], max_len: int, d_model: int, timeout: float | None
) -> None:
    got = call(f"sinusoidal_encoding({max_len}, {d_model})", fn, max_len, d_model, timeout=timeout)
    got = expect_tensor(got, "the table", dtype=torch.float32)
    if got.shape == (d_model, max_len):
        raise Fail(f"the table is (d_model, max_len) = {shape_str(got)}: one row per position")
    expect_tensor(got, f"sinusoidal_encoding({max_len}, {d_model})", shape=(max_len, d_model))
    expected = sinusoidal_encoding(max_len, d_model)
    if close(got, expected, atol=1e-5):
        return
    mistakes = {
        msg: (lambda bug=bug: _sinusoid_variant(max_len, d_model, bug))
        for bug, msg in _SINUSOID_BUGS.items()
    }
    diagnose(got, mistakes, atol=1e-5)
    raise Fail(
        f"for max_len={max_len}, d_model={d_model} the table differs from "
        f"PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...) by up to "
        f"{max_gap(got, expected):.3g}"
    )


def _sinusoid_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    for max_len, d_model in ((12, 16), (5, 6)):
        _sinusoid_case(fn, max_len, d_model, timeout)
    return "shape (max_len, d_model), sin on even and cos on odd columns, frequencies 10000^(-2i/d)"


def check_sinusoidal_encoding(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(max_len, d_model) -> (max_len, d_model)``, the paper's sinusoidal table."""
    return run_check("sinusoidal_encoding", lambda: _sinusoid_steps(fn, timeout))


# --- token embedding plus positions -------------------------------------------------


def _embed_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    gen = torch.Generator().manual_seed(0)
    V, C, max_len = 11, 16, 10
    embedding = nn.Embedding(V, C)
    with torch.no_grad():
        embedding.weight.copy_(torch.randn(V, C, generator=gen) * C**-0.5)
    pe = sinusoidal_encoding(max_len, C)
    tokens = torch.randint(0, V, (3, 6), generator=gen)  # B=3, T=6: B != T, T < max_len
    got = call(
        "embed_tokens(tokens, embedding, pe)",
        fn,
        tokens.clone(),
        embedding,
        pe.clone(),
        timeout=timeout,
    )
    got = expect_tensor(got, "the result", dtype=torch.float32)
    expect_tensor(got, "for tokens (B, T) = (3, 6), the result", shape=(3, 6, C))
    emb = embedding(tokens).detach()  # (B, T, C)
    expected = emb * math.sqrt(C) + pe[:6]
    if close(got, expected):
        return "embeddings scaled by sqrt(d_model) plus the encodings of positions 0..T-1"
    mistakes = {
        "the embeddings are not scaled: multiply them by math.sqrt(d_model)": lambda: emb + pe[:6],
        "scaled by d_model; the factor is math.sqrt(d_model)": lambda: emb * C + pe[:6],
        "the sum is scaled; scale only the embeddings, then add the encodings": lambda: (
            (emb + pe[:6]) * math.sqrt(C)
        ),
        "the encodings were sliced by the batch size: add pe[:T], one row per position": lambda: (
            emb * math.sqrt(C) + pe[:3, None, :]
        ),
        "the positional encodings are missing: add pe[:T]": lambda: emb * math.sqrt(C),
    }
    diagnose(got, mistakes)
    raise Fail(
        f"the result differs from embedding(tokens) * sqrt(d_model) + pe[:T] by up to {max_gap(got, expected):.3g}"
    )


def check_embed_tokens(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(tokens, embedding, pe) -> embedding(tokens) * sqrt(d_model) + pe[:T]``."""
    return run_check("embed_tokens", lambda: _embed_steps(fn, timeout))


# --- ALiBi: a linear bias on the scores (transfer) ----------------------------------


def _alibi_variant(n_heads: int, T: int, bug: str = "") -> Tensor:
    """The bias ``-m_h * (t - s)`` on the causal part (0 above it), or one planted mistake."""
    h = torch.arange(1, n_heads + 1, dtype=torch.float64)
    exponent = {"from_zero": h - 1, "no_eight": (h / 8)}.get(bug, h)
    slopes = 2.0 ** (-8.0 * exponent / n_heads)  # (H,)
    if bug == "reversed":
        slopes = slopes.flip(0)
    if bug == "no_slopes":
        slopes = torch.ones(n_heads, dtype=torch.float64)
    offset = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).double()  # (T, T): t - s
    if bug == "transposed":
        offset = -offset
    distance = offset.clamp(min=0)  # 0 above the diagonal (blocked by the causal mask)
    sign = 1.0 if bug == "positive" else -1.0
    return sign * slopes[:, None, None] * distance  # (H, T, T)


_ALIBI_BUGS = {
    "positive": "the bias has the wrong sign: distant keys must lose score, -m_h * (t - s) is "
    "negative below the diagonal",
    "transposed": "the bias is on the wrong side of the diagonal: row t is the query, column "
    "s <= t the key it may see, and the bias there is -m_h * (t - s)",
    "from_zero": "the first head's slope is 1: the slopes are 2^(-8h/H) for h = 1 .. H, so head "
    "0 (in code) gets 2^(-8/H) and the last head 2^(-8)",
    "reversed": "the slopes are in reverse order: head 0 (in code) gets the largest slope, "
    "2^(-8/H), the last head the smallest, 2^(-8)",
    "no_eight": "the slopes are 2^(-8h/H): the exponent is -8 h / H, not -h / H",
    "no_slopes": "every head has the same slope: head h gets its own m_h = 2^(-8h/H), so some "
    "heads look far and some near",
}


def _alibi_case(fn: Callable[..., Any], H: int, T: int, timeout: float | None) -> None:
    got = call(f"alibi_bias(n_heads={H}, T={T})", fn, H, T, timeout=timeout)
    got = expect_tensor(got, "the bias", finite=False)
    if not got.dtype.is_floating_point:
        raise Fail(f"the bias has dtype {got.dtype}; it is added to float scores, return floats")
    if got.shape == (T, T, H) and H != T:
        raise Fail(
            f"the bias has shape {shape_str(got)} = (T, T, H): put the heads first, (H, T, T)"
        )
    expect_tensor(got, f"alibi_bias(n_heads={H}, T={T})", shape=(H, T, T), finite=False)
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # (T, T): the entries attention uses
    seen = got[:, causal]  # (H, T(T+1)/2)
    if not torch.isfinite(seen).all():
        raise Fail("the bias is NaN or inf at or below the diagonal, where keys s <= t are seen")
    expected = _alibi_variant(H, T)
    if close(seen, expected[:, causal], atol=1e-5):
        return
    for bug, message in _ALIBI_BUGS.items():
        if close(seen, _alibi_variant(H, T, bug)[:, causal], atol=1e-5):
            raise Fail(message)
    if not close(got[:, 1:, 1:][:, causal[1:, 1:]], got[:, :-1, :-1][:, causal[:-1, :-1]]):
        raise Fail("the bias changes along a diagonal: it must depend only on the offset t - s, "
                   "so that bias[h, t, s] == bias[h, t + 1, s + 1]")  # fmt: skip
    raise Fail(f"for n_heads={H}, T={T} the bias differs from -m_h * (t - s) by up to "
               f"{max_gap(seen, expected[:, causal]):.3g}")  # fmt: skip


def _alibi_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    for H, T in ((8, 6), (4, 5), (3, 4)):
        _alibi_case(fn, H, T, timeout)
    return (
        "shape (H, T, T), slopes 2^(-8/H) .. 2^(-8), bias -m_h * (t - s) for keys s <= t: it "
        "depends only on the offset"
    )


def check_alibi_bias(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(n_heads, T) -> (H, T, T)``: ALiBi's bias ``-m_h * (t - s)`` for keys ``s <= t``.

    Entries above the diagonal are not compared: the causal mask blocks them.
    """
    return run_check("alibi_bias", lambda: _alibi_steps(fn, timeout))
