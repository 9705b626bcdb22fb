"""Lessons 03-04's checks: planted bugs are named, other correct implementations pass."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from check_helpers import planted_bug_tests

from tfx_course import checks
from tfx_course.layers import LayerNorm, sinusoidal_encoding


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


def _ln(x, w, b, eps=1e-5, *, correction=0, eps_outside=False, affine=True, dim=-1):
    mean = x.mean(dim, keepdim=True)
    var = x.var(dim, correction=correction, keepdim=True)
    x_hat = (x - mean) / (var.sqrt() + eps) if eps_outside else (x - mean) / torch.sqrt(var + eps)
    return x_hat * w + b if affine else x_hat


def _ln_no_eps(x, w, b, eps=1e-5):
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, correction=0, keepdim=True) * w + b


def _ln_manual(x, w, b, eps=1e-5):
    centred = x - x.mean(dim=-1, keepdim=True)
    return centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps) * w + b


def _ln_var_mean(x, w, b, eps=1e-5):
    var, mean = torch.var_mean(x, dim=-1, unbiased=False, keepdim=True)
    return torch.addcmul(b, (x - mean) / (var + eps).sqrt(), w)


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
    "layer_norm": [
        (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, correction=1), "unbiased variance"),
        (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, eps_outside=True), "outside the square root"),
        (
            lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, affine=False),
            "weight and bias are not applied",
        ),
        (lambda x, w, b, eps=1e-5: _ln(x, b, w, eps), "weight and bias swapped"),
        (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, dim=-2), "wrong axis"),
        (_ln_no_eps, "variance 0"),
    ],
    "pre_ln_residual": [
        (lambda x, f, n: n(x + f(x)), "this is Post-LN"),
        (lambda x, f, n: f(n(x)), "the residual is missing"),
        (lambda x, f, n: n(x) + f(n(x)), "add the raw input x"),
        (lambda x, f, n: x + f(x), "the norm is missing"),
        (lambda x, f, n: x + n(f(x)), "applied to the sublayer's output"),
    ],
    "post_ln_residual": [
        (lambda x, f, n: x + f(n(x)), "this is Pre-LN"),
        (lambda x, f, n: n(f(x)), "the residual is missing"),
        (lambda x, f, n: x + f(x), "the norm is missing"),
        (lambda x, f, n: (x + f(x)).detach().numpy(), "torch.Tensor"),
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
    "layer_norm": [
        _ln_manual,
        _ln_var_mean,
        lambda x, w, b, eps=1e-5: F.layer_norm(x, x.shape[-1:], w, b, eps),
    ],
    "pre_ln_residual": [lambda x, f, n: f(n(x)) + x, lambda x, f, n: torch.add(x, f(n(x)))],
    "post_ln_residual": [lambda x, f, n: n(f(x) + x)],
}

CHECKS = {
    "sinusoidal_encoding": checks.check_sinusoidal_encoding,
    "embed_tokens": checks.check_embed_tokens,
    "layer_norm": checks.check_layer_norm,
    "pre_ln_residual": checks.check_pre_ln_residual,
    "post_ln_residual": checks.check_post_ln_residual,
}

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)


def test_library_versions_pass():
    assert checks.check_sinusoidal_encoding(sinusoidal_encoding).passed

    def library_layer_norm(x, w, b, eps=1e-5):
        norm = LayerNorm(x.shape[-1], eps)
        with torch.no_grad():
            norm.weight.copy_(w)
            norm.bias.copy_(b)
        return norm(x)

    assert checks.check_layer_norm(library_layer_norm).passed


def test_every_exercise_has_three_bugs_and_an_alternative():
    from tfx_course.exercises import LESSONS

    for name in LESSONS["03"] + LESSONS["04"]:
        assert len(BUGS[name]) >= 3 and len(ALTERNATIVES[name]) >= 1, name
