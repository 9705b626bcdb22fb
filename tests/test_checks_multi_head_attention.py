"""Lesson 02's checks (multi-head and multi-query attention): planted bugs are named,
other correct implementations pass."""

from __future__ import annotations

import math

import torch
from check_helpers import bugged, planted_bug_tests
from torch import nn

from tfx_course import attention as A
from tfx_course import checks


def _split_no_transpose(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads)


def _split_straight(x, n_heads):
    B, T, C = x.shape
    return x.reshape(B, n_heads, T, C // n_heads)


def _split_d_h(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, C // n_heads, n_heads).permute(0, 3, 1, 2)


def _split_fixed_heads(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, 3, C // 3).transpose(1, 2)  # ignores n_heads


def _merge_straight(x):
    B, H, T, D = x.shape
    return x.reshape(B, T, H * D)


def _merge_view(x):
    B, H, T, D = x.shape
    return x.transpose(1, 2).view(B, T, H * D)


def _merge_d_h(x):
    B, H, T, D = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, H * D)


class _Attention(nn.Module):
    """Multi-head attention with one planted bug (or none), named by ``bug``."""

    bug = ""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, query, key, value, mask=None):
        B, T, C = query.shape
        H, D = self.n_heads, self.d_head
        if self.bug == "kv_from_query":
            key = value = query
        key, value = {"kv_swapped": (value, key), "value_from_key": (key, key)}.get(
            self.bug, (key, value)
        )
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if self.bug == "split_order":
            q, k, v = (t.reshape(B, H, t.shape[1], D) for t in (q, k, v))
        elif self.bug == "split_transpose_first":
            q, k, v = (t.transpose(1, 2).reshape(B, H, t.shape[1], D) for t in (q, k, v))
        else:
            q, k, v = (A.split_heads(t, H) for t in (q, k, v))
        scale = math.sqrt(C) if self.bug == "scale_d_model" else math.sqrt(D)
        scores = q @ k.transpose(-2, -1) / scale
        if mask is not None and self.bug != "mask_ignored":
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1)
        x = weights @ v
        if self.bug == "merge_reshape_first":
            x = x.reshape(B, C, T).transpose(1, 2)
        else:
            x = x.reshape(B, T, C) if self.bug == "merge_order" else A.merge_heads(x)
        out = x if self.bug == "no_out_proj" else self.out_proj(x)
        return out if self.bug == "out_only" else (out, weights)


def _bugged(bug: str) -> type[nn.Module]:
    return type(f"Attention_{bug}", (_Attention,), {"bug": bug})


class _Renamed(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.inner = A.MultiHeadAttention(d_model, n_heads)

    def forward(self, query, key, value, mask=None):
        return self.inner(query, key, value, mask)


class _EinsumAttention(_Attention):
    """A correct alternative: einsum, scaling q first, heads via unflatten and permute."""

    def forward(self, query, key, value, mask=None):
        H, D = self.n_heads, self.d_head

        def heads(t):
            return t.unflatten(-1, (H, D)).permute(0, 2, 1, 3)

        q = heads(self.q_proj(query)) / math.sqrt(D)
        k, v = heads(self.k_proj(key)), heads(self.v_proj(value))
        scores = torch.einsum("bhtd,bhsd->bhts", q, k)
        if mask is not None:
            scores = torch.where(mask, scores, torch.tensor(-1e9))
        weights = torch.softmax(scores, dim=-1)
        x = torch.einsum("bhts,bhsd->bthd", weights, v).flatten(2)
        return self.out_proj(x), weights


def _split_transpose_first(x, n_heads):
    B, T, C = x.shape
    return x.transpose(1, 2).reshape(B, n_heads, T, C // n_heads)


def _split_last_two(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).permute(0, 2, 3, 1)


def _merge_reshape_first(x):
    B, H, T, D = x.shape
    return x.reshape(B, H * D, T).transpose(1, 2)


def _merge_transpose_23(x):
    B, H, T, D = x.shape
    return x.transpose(2, 3).reshape(B, T, H * D)


BUGS = {
    "split_heads": [
        (_split_transpose_first, "transposed before splitting"),
        (_split_last_two, "= (B, H, D, T): the wrong axes moved"),
        (_split_no_transpose, "transpose axes 1 and 2"),
        (_split_straight, "reshaped straight to (B, H, T, D)"),
        (_split_d_h, "features split as (D, H)"),
        (_split_fixed_heads, "n_heads=2"),
        (lambda x, n: _split_straight(x, n).numpy(), "should be a torch.Tensor"),
    ],
    "merge_heads": [
        (_merge_reshape_first, "reshaped before transposing"),
        (_merge_transpose_23, "transposed the wrong axes"),
        (_merge_straight, "without moving the head axis back"),
        (_merge_view, "use .reshape(...) or .contiguous().view(...)"),
        (_merge_d_h, "features interleaved as (D, H)"),
        (lambda x: x.transpose(1, 2), "expected (2, 5, 12)"),
    ],
    "multi_head_attention": [
        (_bugged("kv_swapped"), "key and value swapped"),
        (_bugged("value_from_key"), "the values come from `key`"),
        (_bugged("split_transpose_first"), "transposing (B, T, C) before the reshape"),
        (_bugged("merge_reshape_first"), "reshaping (B, H, T, D) before the transpose"),
        (_bugged("split_order"), "heads split in the wrong order"),
        (_bugged("merge_order"), "heads merged in the wrong order"),
        (_bugged("no_out_proj"), "output projection missing"),
        (_bugged("scale_d_model"), "sqrt(d_model) instead of sqrt(d_head)"),
        (_bugged("kv_from_query"), "projected from `key` and `value`"),
        (_bugged("mask_ignored"), "blocked positions get non-zero weight"),
        (_bugged("out_only"), "should return a pair"),
        (_Renamed, "parameter names differ"),
    ],
}

ALTERNATIVES = {
    "split_heads": [
        lambda x, n: x.unflatten(-1, (n, x.shape[-1] // n)).permute(0, 2, 1, 3),
        lambda x, n: torch.stack(x.chunk(n, dim=-1), dim=1),
    ],
    "merge_heads": [
        lambda x: torch.cat(x.unbind(1), dim=-1),
        lambda x: x.permute(0, 2, 1, 3).flatten(2),
        lambda x: x.transpose(1, 2).contiguous().view(x.shape[0], x.shape[2], -1),
    ],
    "multi_head_attention": [_Attention, _EinsumAttention, A.MultiHeadAttention],
}

CHECKS = {
    "split_heads": checks.check_split_heads,
    "merge_heads": checks.check_merge_heads,
    "multi_head_attention": checks.check_multi_head_attention,
}


# --- multi_query_attention ------------------------------------------------------------


class _MultiQuery(nn.Module):
    """Multi-query attention with one planted bug (or none), named by ``bug``."""

    bug = ""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        kv_size = d_model if self.bug == "kv_full_size" else self.d_head
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, kv_size)
        self.v_proj = nn.Linear(d_model, kv_size)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, query, key, value, mask=None):
        B, T, C = query.shape
        key, value = {"kv_swapped": (value, key), "value_from_key": (key, key)}.get(
            self.bug, (key, value)
        )
        q = A.split_heads(self.q_proj(query), self.n_heads)  # (B, H, T, D)
        k = self.k_proj(key).unsqueeze(1)  # (B, 1, S, D)
        v = self.v_proj(value).unsqueeze(1)  # (B, 1, S, D)
        scale = {"no_scale": 1.0, "scale_d_model": C**-0.5}.get(self.bug, self.d_head**-0.5)
        scores = q @ k.transpose(-2, -1) * scale  # (B, H, T, S)
        if mask is not None and self.bug != "mask_ignored":
            scores = A.mask_scores(scores, mask)
        weights = scores.softmax(dim=-1)
        x = weights @ v  # (B, H, T, D)
        x = x.reshape(B, T, C) if self.bug == "merge_order" else A.merge_heads(x)
        out = x if self.bug == "no_out_proj" else self.out_proj(x)
        return out if self.bug == "out_only" else (out, weights)


class _MultiQueryRepeated(_MultiQuery):
    """Correct: copy the key and value head H times, then run the standard attention."""

    def forward(self, query, key, value, mask=None):
        H = self.n_heads
        q = A.split_heads(self.q_proj(query), H)  # (B, H, T, D)
        k = A.split_heads(self.k_proj(key).repeat(1, 1, H), H)  # (B, H, S, D), H equal heads
        v = A.split_heads(self.v_proj(value).repeat(1, 1, H), H)  # (B, H, S, D)
        x, weights = A.scaled_dot_product_attention(q, k, v, mask)
        return self.out_proj(A.merge_heads(x)), weights


class _MultiQueryEinsum(_MultiQuery):
    """Correct: einsum over the shared head, without copying it."""

    def forward(self, query, key, value, mask=None):
        H, D = self.n_heads, self.d_head
        q = self.q_proj(query).unflatten(-1, (H, D))  # (B, T, H, D)
        k, v = self.k_proj(key), self.v_proj(value)  # (B, S, D)
        scores = torch.einsum("bthd,bsd->bhts", q, k) / math.sqrt(D)
        if mask is not None:
            scores = scores.masked_fill(~mask, -1e9)
        weights = scores.softmax(dim=-1)  # (B, H, T, S)
        x = torch.einsum("bhts,bsd->bthd", weights, v).flatten(2)  # (B, T, C)
        return self.out_proj(x), weights


def test_the_multi_query_reference_equals_torchs_grouped_query_attention():
    # The check compares with the course's MultiHeadAttention whose H key and value heads are
    # copies of one; PyTorch's enable_gqa path broadcasts the one head instead.
    from tfx_course.checks.multi_head_attention import _as_multi_head, _MultiQueryWeights

    torch.manual_seed(0)
    ref = _MultiQueryWeights(16, 4)
    gen = torch.Generator().manual_seed(1)
    query, key = torch.randn(2, 5, 16, generator=gen), torch.randn(2, 7, 16, generator=gen)
    mask = A.padding_mask(torch.tensor([[True] * 7, [True] * 4 + [False] * 3]))
    with torch.no_grad():
        out, _ = _as_multi_head(ref, 4)(query, key, key, mask)
        q = A.split_heads(ref.q_proj(query), 4)  # (B, H, T, D)
        k, v = ref.k_proj(key)[:, None], ref.v_proj(key)[:, None]  # (B, 1, S, D)
        x = torch.nn.functional.scaled_dot_product_attention(q, k, v, mask, enable_gqa=True)
        torch.testing.assert_close(out, ref.out_proj(A.merge_heads(x)))


BUGS["multi_query_attention"] = [
    (bugged(_MultiQuery, "kv_full_size"), "k_proj and v_proj map d_model=16 to d_head=4"),
    (bugged(_MultiQuery, "no_scale"), "missing the 1/sqrt(d_head) scaling"),
    (bugged(_MultiQuery, "scale_d_model"), "sqrt(d_model) instead of sqrt(d_head)"),
    (bugged(_MultiQuery, "kv_swapped"), "key and value swapped"),
    (bugged(_MultiQuery, "value_from_key"), "the values come from `key`"),
    (bugged(_MultiQuery, "merge_order"), "heads merged in the wrong order"),
    (bugged(_MultiQuery, "no_out_proj"), "output projection missing"),
    (bugged(_MultiQuery, "mask_ignored"), "blocked positions get non-zero weight"),
    (bugged(_MultiQuery, "out_only"), "should return a pair"),
    (A.MultiHeadAttention, "k_proj and v_proj map d_model=16 to d_head=4"),
]
ALTERNATIVES["multi_query_attention"] = [_MultiQuery, _MultiQueryRepeated, _MultiQueryEinsum]
CHECKS["multi_query_attention"] = checks.check_multi_query_attention

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)
