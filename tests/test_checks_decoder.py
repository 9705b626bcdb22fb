"""Lesson 06's checks (the decoder and a cross-attention cache): planted bugs are named,
other correct implementations pass."""

from __future__ import annotations

import torch
from check_helpers import bugged, planted_bug_tests
from torch import nn

from tfx_course import attention as A
from tfx_course import checks
from tfx_course.attention import MultiHeadAttention, causal_mask, padding_mask
from tfx_course.layers import (
    DecoderLayer,
    FeedForward,
    LayerNorm,
)


class _Decoder(nn.Module):
    bug = ""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads)
        self.cross_attn = MultiHeadAttention(d_model, n_heads)
        self.ff = FeedForward(d_model, d_ff)
        self.norm1, self.norm2, self.norm3 = (
            LayerNorm(d_model),
            LayerNorm(d_model),
            LayerNorm(d_model),
        )

    def forward(self, x, memory, self_mask=None, memory_mask=None):
        if self.bug == "no_self_mask":
            self_mask = None
        if self.bug == "no_memory_mask":
            memory_mask = None
        h = self.norm1(x)
        x = (2 * x if self.bug == "self_residual_twice" else x) + self.self_attn(
            h, h, h, self_mask
        )[0]
        h = self.norm2(x)
        kv = {"cross_from_x": h, "normed_memory": self.norm2(memory)}.get(self.bug, memory)
        c = self.cross_attn(h, kv, kv, memory_mask if self.bug != "cross_from_x" else self_mask)[0]
        x = c if self.bug == "no_cross_residual" else x + c
        out = (x + x if self.bug == "ff_residual_twice" else x) + self.ff(self.norm3(x))
        return (out, None) if self.bug == "pair" else out


class _DecoderTorchNorm(_Decoder):
    """Correct, with nn.LayerNorm and the fused attention path."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__(d_model, n_heads, d_ff)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))

    def forward(self, x, memory, self_mask=None, memory_mask=None):
        for attn, norm, kv, mask in (
            (self.self_attn, self.norm1, None, self_mask),
            (self.cross_attn, self.norm2, memory, memory_mask),
        ):
            h = norm(x)
            x = (
                x
                + attn(
                    h, h if kv is None else kv, h if kv is None else kv, mask, need_weights=False
                )[0]
            )
        return x + self.ff(self.norm3(x))


def _tm(tokens, pad_id, *, combine="and", rows=False, upper=False):
    T = tokens.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    causal = causal.T if upper else causal
    keep = (tokens != pad_id)[:, None, :, None] if rows else (tokens != pad_id)[:, None, None, :]
    return causal & keep if combine == "and" else causal | keep


def test_a_layer_that_leaks_the_future_is_caught_by_the_property():
    class Leaky(_Decoder):
        """Right on the compared inputs, but mixes in later positions given a (T, T) mask."""

        def forward(self, x, memory, self_mask=None, memory_mask=None):
            out = super().forward(x, memory, self_mask, memory_mask)
            if self_mask is not None and self_mask.dim() == 2:
                out = out + 1e-3 * x.flip(1)
            return out

    result = checks.check_decoder_layer(Leaky)
    assert not result.passed and "the future leaks" in result.message


BUGS = {
    "target_mask": [
        (lambda t, p: _tm(t, p, combine="or"), "combined with |"),
        (lambda t, p: _tm(t, p, rows=True), "padding applied to the queries"),
        (lambda t, p: _tm(t, p, upper=True), "causal part is transposed"),
        (lambda t, p: ~_tm(t, p), "mask inverted"),
        (
            lambda t, p: torch.ones(t.shape[1], t.shape[1], dtype=torch.bool).tril(),
            "causal rule alone",
        ),
        (lambda t, p: (t != p)[:, None, None, :], "padding rule alone"),
        (lambda t, p: _tm(t, 0), "use the pad_id argument"),
    ],
    "decoder_layer": [
        (bugged(_Decoder, "self_residual_twice"), "around self-attention is added twice"),
        (bugged(_Decoder, "ff_residual_twice"), "around the feed-forward block is added twice"),
        (bugged(_Decoder, "no_self_mask"), "ignores self_mask"),
        (bugged(_Decoder, "no_memory_mask"), "ignores memory_mask"),
        (bugged(_Decoder, "cross_from_x"), "keys and values from the decoder"),
        (bugged(_Decoder, "normed_memory"), "the memory is normalised"),
        (bugged(_Decoder, "no_cross_residual"), "residual around cross-attention is missing"),
        (bugged(_Decoder, "pair"), "should be a torch.Tensor, got tuple"),
    ],
}

ALTERNATIVES = {
    "target_mask": [
        _tm,
        lambda t, p: causal_mask(t.shape[1]) & padding_mask(t != p),
        lambda t, p: torch.tril((t != p)[:, None, None, :].expand(-1, 1, t.shape[1], -1)),
    ],
    "decoder_layer": [_Decoder, _DecoderTorchNorm, DecoderLayer],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}


# --- cross_attention_cache ------------------------------------------------------------


class _CrossCache:
    """A cross-attention cache with one planted bug (or none), named by ``bug``."""

    bug = ""

    def __init__(self, attn, memory, memory_mask=None):
        self.attn, self.memory, self.mask, self.first = attn, memory, memory_mask, None
        self.stored = memory.clone()
        H = attn.n_heads
        key_proj, value_proj = attn.k_proj, attn.v_proj
        if self.bug == "kv_swapped":
            key_proj, value_proj = value_proj, key_proj
        if self.bug == "value_from_key":
            value_proj = key_proj
        if self.bug == "unprojected":
            key_proj = value_proj = torch.nn.Identity()
        self.k = A.split_heads(key_proj(memory), H)  # (B, H, S, D)
        self.v = A.split_heads(value_proj(memory), H)  # (B, H, S, D)

    def __call__(self, query):
        if self.bug == "recompute":
            return self.attn(query, self.memory, self.memory, self.mask)[0]
        if self.bug == "recompute_copy":
            return self.attn(query, self.stored, self.stored, self.mask)[0]
        if self.bug == "stale" and self.first is not None:
            return self.first
        q = A.split_heads(self.attn.q_proj(query), self.attn.n_heads)  # (B, H, T, D)
        mask = None if self.bug == "no_mask" else self.mask
        x, weights = A.scaled_dot_product_attention(q, self.k, self.v, mask)
        out = (
            A.merge_heads(x) if self.bug == "no_out_proj" else self.attn.out_proj(A.merge_heads(x))
        )
        self.first = out if self.first is None else self.first
        return (out, weights) if self.bug == "pair" else out


class _CrossCacheLibrary:
    """Correct: the library's own split of MultiHeadAttention into project_kv and attend."""

    def __init__(self, attn, memory, memory_mask=None):
        self.attn, self.mask = attn, memory_mask
        self.k, self.v = attn.project_kv(memory, memory)

    def __call__(self, query):
        return self.attn.attend(query, self.k, self.v, self.mask)[0]


class _CrossCacheLazy:
    """Correct: projects on the first call (still once), with PyTorch's fused attention."""

    def __init__(self, attn, memory, memory_mask=None):
        self.attn, self.memory, self.mask, self.kv = attn, memory.clone(), memory_mask, None

    def __call__(self, query):
        H, attn = self.attn.n_heads, self.attn
        if self.kv is None:
            self.kv = [
                p(self.memory).unflatten(-1, (H, -1)).transpose(1, 2)
                for p in (attn.k_proj, attn.v_proj)
            ]
        q = attn.q_proj(query).unflatten(-1, (H, -1)).transpose(1, 2)  # (B, H, T, D)
        x = torch.nn.functional.scaled_dot_product_attention(q, *self.kv, attn_mask=self.mask)
        return attn.out_proj(x.transpose(1, 2).flatten(2))


BUGS["cross_attention_cache"] = [
    (bugged(_CrossCache, "recompute"), "computed from memory again"),
    (bugged(_CrossCache, "recompute_copy"), "k_proj or v_proj ran 2 times"),
    (bugged(_CrossCache, "stale"), "does not change with the query"),
    (bugged(_CrossCache, "kv_swapped"), "keys and values swapped"),
    (bugged(_CrossCache, "value_from_key"), "the values are k_proj(memory)"),
    (bugged(_CrossCache, "unprojected"), "the memory itself was used"),
    (bugged(_CrossCache, "no_out_proj"), "output projection is missing"),
    (bugged(_CrossCache, "no_mask"), "memory_mask is not applied"),
    (bugged(_CrossCache, "pair"), "should be a torch.Tensor, got tuple"),
]
ALTERNATIVES["cross_attention_cache"] = [_CrossCache, _CrossCacheLibrary, _CrossCacheLazy]
CHECKS["cross_attention_cache"] = checks.check_cross_attention_cache

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)
