"""Lesson 01's checks (self-attention): planted bugs are named,
other correct implementations pass."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from check_helpers import planted_bug_tests

from tfx_course import checks

MIN = torch.finfo(torch.float32).min


def _scores(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def _masked(scores, mask):
    return scores if mask is None else scores.masked_fill(~mask, MIN)


# Each entry: (check, planted bug, a fragment of the message that must name it).
BUGS = {
    "attention_scores": [
        (lambda q, k: q @ k.transpose(-2, -1), "missing scaling"),
        (lambda q, k: q @ k.transpose(-2, -1) / q.shape[-1], "divided by d_k instead of sqrt"),
        (lambda q, k: q @ k.transpose(-2, -1) * math.sqrt(q.shape[-1]), "multiplied by sqrt"),
        (lambda q, k: k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1]), "= (..., S, T)"),
        (lambda q, k: q @ k.transpose(-2, -1) / math.sqrt(k.shape[-2]), "number of keys S"),
        (lambda q, k: q @ k.transpose(2, 3) / math.sqrt(q.shape[-1]), "but not for (B, T, D)"),
        (lambda q, k: (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).double(), "dtype"),
    ],
    "padding_mask": [
        (lambda t, p: (t == p)[:, None, None, :], "mask inverted"),
        (lambda t, p: t != p, "add a head axis and a query axis"),
        (lambda t, p: (t != 0)[:, None, None, :], "compare with pad_id, not 0"),
        (lambda t, p: (t != p).float()[:, None, None, :], "return a boolean mask"),
        (lambda t, p: (t != p)[:, None, :, None], "the keys are the last axis"),
    ],
    "causal_mask": [
        (lambda n: torch.ones(n, n, dtype=torch.bool).triu(1), "mask inverted"),
        (lambda n: torch.ones(n, n, dtype=torch.bool).triu(), "mask transposed"),
        (lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1), "diagonal must be True"),
        (lambda n: torch.ones(n, n).tril(), "return a boolean mask"),
        (lambda n: torch.ones(1, 1, n, n, dtype=torch.bool).tril(), "expected (5, 5)"),
    ],
    "masked_softmax": [
        (
            lambda s, m: (s if m is None else s.masked_fill(m, float("-inf"))).softmax(-1),
            "mask inverted",
        ),
        (lambda s, m: _masked(s, m).softmax(dim=-2), "wrong axis"),
        (lambda s, m: (s if m is None else s.masked_fill(m, MIN)).softmax(-1), "mask inverted"),
        (lambda s, m: s.softmax(-1) * (1 if m is None else m), "masked after the softmax"),
        (lambda s, m: (s if m is None else s.masked_fill(~m, 0)).softmax(-1), "filled with 0"),
        (lambda s, m: s.softmax(-1), "the mask is ignored"),
        (
            lambda s, m: (s if m is None else s.masked_fill(~m, float("-inf"))).softmax(-1),
            "instead of float('-inf')",
        ),
        (lambda s, m: _masked(s, m).softmax(dim=3), "use dim=-1"),
    ],
    "attention": [
        (
            lambda q, k, v, mask=None: _attend(
                (
                    _scores(q, k)
                    if mask is None
                    else _scores(q, k).masked_fill(mask, float("-inf"))
                ).softmax(-1),
                v,
            ),
            "mask inverted",
        ),
        (lambda q, k, v, mask=None: _no_scale_attention(q, k, v, mask), "missing 1/sqrt(d_k)"),
        (
            lambda q, k, v, mask=None: _attend(_masked(_scores(q, k), mask).softmax(-2), v),
            "wrong axis",
        ),
        (
            lambda q, k, v, mask=None: _attend(
                (_scores(q, k) if mask is None else _scores(q, k).masked_fill(mask, MIN)).softmax(
                    -1
                ),
                v,
            ),
            "mask inverted",
        ),
        (
            lambda q, k, v, mask=None: _attend(
                _scores(q, k).softmax(-1) * (1 if mask is None else mask), v
            ),
            "masked after the softmax",
        ),
        (
            lambda q, k, v, mask=None: _attend(_masked(_scores(q, k), mask).softmax(-1), v)[0],
            "pair",
        ),
    ],
}


def _attend(weights, v):
    return weights @ v, weights


def _no_scale_attention(q, k, v, mask):
    return _attend(_masked(q @ k.transpose(-2, -1), mask).softmax(-1), v)


def _einsum_scores(q, k):
    return torch.einsum("...td,...sd->...ts", q, k) * q.shape[-1] ** -0.5


def _manual_softmax(scores, mask):
    if mask is not None:
        scores = torch.where(mask, scores, torch.full_like(scores, -1e9))
    e = (scores - scores.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def _renormalised_softmax(scores, mask):
    weights = scores.softmax(-1)
    if mask is None:
        return weights
    weights = weights * mask
    return weights / weights.sum(-1, keepdim=True).clamp_min(1e-30)


def _attention_from_pieces(q, k, v, mask=None):
    weights = _manual_softmax(_einsum_scores(q, k), mask)
    return torch.einsum("...ts,...sd->...td", weights, v), weights


def _attention_fused_and_explicit(q, k, v, mask=None):
    weights = _masked(torch.matmul(q / math.sqrt(q.shape[-1]), k.mT), mask).softmax(-1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), weights


ALTERNATIVES = {
    "attention_scores": [
        _einsum_scores,
        lambda q, k: torch.matmul(q / math.sqrt(q.size(-1)), k.mT),
        lambda q, k: (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1) / math.sqrt(q.shape[-1]),
    ],
    "padding_mask": [
        lambda t, p: t.ne(p).unsqueeze(1).unsqueeze(2),
        lambda t, p: ~(t == p).view(t.shape[0], 1, 1, t.shape[1]),
        lambda t, p: (t != p).reshape(t.shape[0], 1, 1, -1).contiguous(),
    ],
    "causal_mask": [
        lambda n: torch.tril(torch.ones(n, n)).bool(),
        lambda n: torch.arange(n)[:, None] >= torch.arange(n)[None, :],
        lambda n: ~torch.ones(n, n, dtype=torch.bool).triu(1),
    ],
    "masked_softmax": [
        _manual_softmax,
        _renormalised_softmax,
        lambda s, m: F.softmax(_masked(s, m), dim=-1),
    ],
    "attention": [_attention_from_pieces, _attention_fused_and_explicit],
}

CHECKS = {
    "attention_scores": checks.check_attention_scores,
    "padding_mask": checks.check_padding_mask,
    "causal_mask": checks.check_causal_mask,
    "masked_softmax": checks.check_masked_softmax,
    "attention": checks.check_attention,
}

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)


def test_library_reference_passes():
    from tfx_course import attention as A

    assert checks.check_attention(A.scaled_dot_product_attention).passed
    assert checks.check_causal_mask(A.causal_mask).passed
    assert checks.check_padding_mask(lambda t, p: A.padding_mask(t != p)).passed
    assert checks.check_masked_softmax(lambda s, m: A.mask_scores(s, m).softmax(-1)).passed
