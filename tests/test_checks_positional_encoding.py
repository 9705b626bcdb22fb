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

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)


def test_the_library_table_passes():
    assert checks.check_sinusoidal_encoding(sinusoidal_encoding).passed
