"""Lesson 03's checks (positional encoding): planted bugs are named,
other correct implementations pass."""

from __future__ import annotations

import math

import torch
from check_helpers import planted_bug_tests

from tfx_course import checks
from tfx_course.layers import sinusoidal_encoding


def _table(max_len, d_model, *, swap=False, halves=False, i_not_2i=False, start=0):
    pos = torch.arange(start, start + max_len, dtype=torch.float32)[:, None]
    i = torch.arange(d_model // 2, dtype=torch.float32)
    angles = pos / 10000 ** ((i if i_not_2i else 2 * i) / d_model)
    a, b = (angles.cos(), angles.sin()) if swap else (angles.sin(), angles.cos())
    if halves:
        return torch.cat([a, b], dim=-1)
    return torch.stack([a, b], dim=-1).flatten(1)


def _table_loop(max_len, d_model):
    pe = torch.zeros(max_len, d_model)
    for pos in range(max_len):
        for i in range(0, d_model, 2):
            pe[pos, i] = math.sin(pos / 10000 ** (i / d_model))
            pe[pos, i + 1] = math.cos(pos / 10000 ** (i / d_model))
    return pe


def _table_log_space(max_len, d_model):
    pos = torch.arange(max_len).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


def _embed(tokens, embedding, pe, *, scale=None, scale_sum=False, rows=None):
    C = embedding.embedding_dim
    T = tokens.shape[1]
    factor = math.sqrt(C) if scale is None else scale
    if scale_sum:
        return (embedding(tokens) + pe[:T]) * factor
    return embedding(tokens) * factor + (pe[:T] if rows is None else rows(pe, tokens))


BUGS = {
    "sinusoidal_encoding": [
        (lambda n, d: _table(n, d, swap=True), "sin and cos swapped"),
        (lambda n, d: _table(n, d, halves=True), "two halves"),
        (lambda n, d: _table(n, d, i_not_2i=True), "uses i instead of 2i"),
        (lambda n, d: _table(n, d, start=1), "positions start at 1"),
        (lambda n, d: _table(n, d).T, "(d_model, max_len)"),
        (lambda n, d: _table(n, d).double(), "dtype"),
    ],
    "embed_tokens": [
        (lambda t, e, pe: _embed(t, e, pe, scale=1.0), "not scaled"),
        (lambda t, e, pe: _embed(t, e, pe, scale=float(e.embedding_dim)), "scaled by d_model"),
        (lambda t, e, pe: _embed(t, e, pe, scale_sum=True), "the sum is scaled"),
        (
            lambda t, e, pe: _embed(t, e, pe, rows=lambda p, t: p[: t.shape[0], None, :]),
            "sliced by the batch size",
        ),
        (lambda t, e, pe: e(t) * math.sqrt(e.embedding_dim) + pe, "raised RuntimeError"),
    ],
}

ALTERNATIVES = {
    "sinusoidal_encoding": [_table, _table_loop, _table_log_space],
    "embed_tokens": [
        lambda t, e, pe: e.weight[t] * e.embedding_dim**0.5 + pe[: t.size(1)].unsqueeze(0),
        lambda t, e, pe: torch.addcmul(
            pe[: t.shape[-1]], e(t), torch.tensor(math.sqrt(e.embedding_dim))
        ),
    ],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}


def test_the_library_table_passes():
    assert checks.check_sinusoidal_encoding(sinusoidal_encoding).passed


# --- alibi_bias -----------------------------------------------------------------------


def _alibi_loops(n_heads, T):
    """Written from the paper's description, one entry at a time."""
    bias = torch.zeros(n_heads, T, T)
    for h in range(n_heads):
        slope = 2 ** (-8 * (h + 1) / n_heads)
        for t in range(T):
            for s in range(t + 1):
                bias[h, t, s] = -slope * (t - s)
    return bias


def _alibi(n_heads, T, *, sign=-1, first=1, reverse=False, eight=8, transpose=False, same=False, dtype=None):  # fmt: skip
    slopes = 2.0 ** (-eight * torch.arange(first, first + n_heads) / n_heads)  # (H,)
    slopes = slopes.flip(0) if reverse else slopes
    slopes = torch.ones(n_heads) if same else slopes
    pos = torch.arange(T, dtype=dtype)
    offset = pos[:, None] - pos[None, :]  # (T, T): t - s
    offset = -offset if transpose else offset
    return sign * slopes[:, None, None] * offset.clamp(min=0)


def _alibi_symmetric(n_heads, T):
    # -m_h * |t - s| everywhere, as an encoder would use it: the same on the causal part.
    pos = torch.arange(T)
    slopes = torch.tensor(2.0 ** (-8.0 / n_heads)) ** torch.arange(1, n_heads + 1)
    return -slopes[:, None, None] * (pos[:, None] - pos[None, :]).abs()


def _alibi_with_mask(n_heads, T):
    # The causal mask folded into the bias: -inf above the diagonal.
    bias = _alibi(n_heads, T)
    return bias.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))


def test_alibi_makes_scores_depend_only_on_the_offset():
    # With queries and keys equal at every position, the biased scores of a query depend only
    # on how far back each key is: shifting both by one position changes nothing.
    H, T = 4, 6
    q = k = torch.randn(1, H, 1, 8).expand(1, H, T, 8)
    scores = q @ k.transpose(-2, -1) / 8**0.5 + _alibi_loops(H, T)  # (1, H, T, T)
    causal = torch.ones(T - 1, T - 1, dtype=torch.bool).tril()
    torch.testing.assert_close(scores[..., 1:, 1:][..., causal], scores[..., :-1, :-1][..., causal])
    assert (scores[0, :, -1, :-1].diff(dim=-1) > 0).all()  # nearer keys score higher


BUGS["alibi_bias"] = [
    (lambda H, T: _alibi(H, T, sign=1), "the wrong sign"),
    (lambda H, T: _alibi(H, T, transpose=True), "wrong side of the diagonal"),
    (lambda H, T: _alibi(H, T, first=0), "the first head's slope is 1"),
    (lambda H, T: _alibi(H, T, reverse=True), "reverse order"),
    (lambda H, T: _alibi(H, T, eight=1), "not -h / H"),
    (lambda H, T: _alibi(H, T, same=True), "the same slope"),
    (lambda H, T: _alibi(H, T).permute(1, 2, 0), "put the heads first"),
    (lambda H, T: _alibi(H, T) * torch.arange(1, T + 1)[:, None], "depend only on the offset"),
    (lambda H, T: _alibi(H, T, dtype=torch.long).long(), "return floats"),
]
ALTERNATIVES["alibi_bias"] = [_alibi, _alibi_loops, _alibi_symmetric, _alibi_with_mask]
CHECKS["alibi_bias"] = checks.check_alibi_bias

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)
