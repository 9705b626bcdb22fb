"""Lessons 05-06's checks: planted bugs are named, other correct implementations pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from check_helpers import planted_bug_tests
from torch import nn

from tfx_course import checks
from tfx_course.attention import MultiHeadAttention, causal_mask, padding_mask
from tfx_course.layers import DecoderLayer, EncoderLayer, FeedForward, LayerNorm


class _FF(nn.Module):
    bug = ""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x):
        h = self.linear1(x)
        if self.bug == "no_act":
            return self.linear2(h)
        if self.bug == "gelu":
            return self.linear2(F.gelu(h))
        out = self.linear2(F.relu(h))
        return {"relu_out": F.relu(out), "residual": x + out}.get(self.bug, out)


class _FFMatmul(_FF):
    """Correct, written with explicit matrix products and clamp."""

    def forward(self, x):
        h = (x @ self.linear1.weight.T + self.linear1.bias).clamp(min=0)
        return torch.addmm(
            self.linear2.bias, h.reshape(-1, h.shape[-1]), self.linear2.weight.T
        ).view_as(x)


class _Encoder(nn.Module):
    bug = ""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, norm_first: bool = True):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads)
        self.ff = FeedForward(d_model, d_ff)
        self.norm1, self.norm2 = LayerNorm(d_model), LayerNorm(d_model)

    def forward(self, x, mask=None):
        mask = None if self.bug == "no_mask" else mask
        pre = self.norm_first if self.bug != "always_pre" else True
        norm2 = self.norm1 if self.bug == "norm1_twice" else self.norm2
        if pre:
            h = self.norm1(x)
            x = x + self.self_attn(h, h, h, mask)[0]
            f = self.ff(norm2(x))
            return f if self.bug == "no_ff_residual" else x + f
        a = self.self_attn(x, x, x, mask)[0]
        x = self.norm1(a if self.bug == "no_attn_residual" else x + a)
        return norm2(x + self.ff(x))


class _EncoderTorchNorm(_Encoder):
    """Correct, with nn.LayerNorm, the fused attention path and a sublayer helper."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, norm_first: bool = True):
        super().__init__(d_model, n_heads, d_ff, norm_first)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def _sublayer(self, x, f, norm):
        return x + f(norm(x)) if self.norm_first else norm(x + f(x))

    def forward(self, x, mask=None):
        x = self._sublayer(
            x, lambda h: self.self_attn(h, h, h, mask, need_weights=False)[0], self.norm1
        )
        return self._sublayer(x, self.ff, self.norm2)


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
        x = x + self.self_attn(h, h, h, self_mask)[0]
        h = self.norm2(x)
        kv = {"cross_from_x": h, "normed_memory": self.norm2(memory)}.get(self.bug, memory)
        c = self.cross_attn(h, kv, kv, memory_mask if self.bug != "cross_from_x" else self_mask)[0]
        x = c if self.bug == "no_cross_residual" else x + c
        out = x + self.ff(self.norm3(x))
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


def _bugged(cls: type, bug: str) -> type:
    return type(f"{cls.__name__}_{bug}", (cls,), {"bug": bug})


def _tm(tokens, pad_id, *, combine="and", rows=False, upper=False):
    T = tokens.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    causal = causal.T if upper else causal
    keep = (tokens != pad_id)[:, None, :, None] if rows else (tokens != pad_id)[:, None, None, :]
    return causal & keep if combine == "and" else causal | keep


BUGS = {
    "feed_forward": [
        (_bugged(_FF, "no_act"), "the activation is missing"),
        (_bugged(_FF, "gelu"), "GELU instead of ReLU"),
        (_bugged(_FF, "relu_out"), "ReLU after the second layer too"),
        (_bugged(_FF, "residual"), "the block adds its input"),
    ],
    "encoder_layer": [
        (_bugged(_Encoder, "no_mask"), "the mask is not passed"),
        (_bugged(_Encoder, "always_pre"), "norm_first=False (Post-LN) each sublayer must compute"),
        (_bugged(_Encoder, "norm1_twice"), "norm1 is used twice"),
        (_bugged(_Encoder, "no_ff_residual"), "residual around the feed-forward block is missing"),
        (_bugged(_Encoder, "no_attn_residual"), "residual around self-attention is missing"),
    ],
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
        (_bugged(_Decoder, "no_self_mask"), "ignores self_mask"),
        (_bugged(_Decoder, "no_memory_mask"), "ignores memory_mask"),
        (_bugged(_Decoder, "cross_from_x"), "keys and values from the decoder"),
        (_bugged(_Decoder, "normed_memory"), "the memory is normalised"),
        (_bugged(_Decoder, "no_cross_residual"), "residual around cross-attention is missing"),
        (_bugged(_Decoder, "pair"), "should be a torch.Tensor, got tuple"),
    ],
}

ALTERNATIVES = {
    "feed_forward": [_FF, _FFMatmul, FeedForward],
    "encoder_layer": [_Encoder, _EncoderTorchNorm, EncoderLayer],
    "target_mask": [
        _tm,
        lambda t, p: causal_mask(t.shape[1]) & padding_mask(t != p),
        lambda t, p: torch.tril((t != p)[:, None, None, :].expand(-1, 1, t.shape[1], -1)),
    ],
    "decoder_layer": [_Decoder, _DecoderTorchNorm, DecoderLayer],
}

CHECKS = {
    "feed_forward": checks.check_feed_forward,
    "encoder_layer": checks.check_encoder_layer,
    "target_mask": checks.check_target_mask,
    "decoder_layer": checks.check_decoder_layer,
}

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)


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


def test_every_exercise_has_three_bugs_and_an_alternative():
    from tfx_course.exercises import LESSONS

    for name in LESSONS["05"] + LESSONS["06"]:
        assert len(BUGS[name]) >= 3 and len(ALTERNATIVES[name]) >= 1, name
