"""Lesson 05's checks (the encoder and the parallel block): planted bugs are named,
other correct implementations pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from check_helpers import bugged, planted_bug_tests
from torch import nn

from tfx_course import checks
from tfx_course.attention import MultiHeadAttention
from tfx_course.layers import (
    EncoderLayer,
    FeedForward,
    LayerNorm,
)


class _FF(nn.Module):
    bug = ""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x):
        h = self.linear1(x)
        if self.bug == "bias_after_relu":
            return self.linear2(F.relu(x @ self.linear1.weight.T) + self.linear1.bias)
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
            a = self.self_attn(h, h, h, mask)[0]
            x = x + (x + a if self.bug == "attn_residual_twice" else a)
            f = self.ff(norm2(x))
            return f if self.bug == "no_ff_residual" else x + f
        a = self.self_attn(x, x, x, mask)[0]
        x = self.norm1(a if self.bug == "no_attn_residual" else x + a)
        f = self.ff(x)
        return norm2(x + (x + f if self.bug == "ff_residual_twice" else f))


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


BUGS = {
    "feed_forward": [
        (bugged(_FF, "bias_after_relu"), "bias is added after the ReLU"),
        (bugged(_FF, "no_act"), "the activation is missing"),
        (bugged(_FF, "gelu"), "GELU instead of ReLU"),
        (bugged(_FF, "relu_out"), "ReLU after the second layer too"),
        (bugged(_FF, "residual"), "the block adds its input"),
    ],
    "encoder_layer": [
        (bugged(_Encoder, "attn_residual_twice"), "residual around self-attention is added twice"),
        (bugged(_Encoder, "ff_residual_twice"), "feed-forward block is added twice"),
        (bugged(_Encoder, "no_mask"), "the mask is not passed"),
        (bugged(_Encoder, "always_pre"), "norm_first=False (Post-LN) each sublayer must compute"),
        (bugged(_Encoder, "norm1_twice"), "norm1 is used twice"),
        (bugged(_Encoder, "no_ff_residual"), "residual around the feed-forward block is missing"),
        (bugged(_Encoder, "no_attn_residual"), "residual around self-attention is missing"),
    ],
}

ALTERNATIVES = {
    "feed_forward": [_FF, _FFMatmul, FeedForward],
    "encoder_layer": [_Encoder, _EncoderTorchNorm, EncoderLayer],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}


# --- parallel_block ---------------------------------------------------------------------


class _Parallel(nn.Module):
    """The parallel encoder layer with one planted bug (or none), named by ``bug``."""

    bug = ""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads)
        self.ff = FeedForward(d_model, d_ff)
        self.norm = LayerNorm(d_model)

    def forward(self, x, mask=None):
        mask = None if self.bug == "no_mask" else mask
        h = self.norm(x)
        if self.bug == "sequential":
            y = x + self.self_attn(h, h, h, mask)[0]
            return y + self.ff(self.norm(y))
        if self.bug == "post_norm":
            return self.norm(x + self.self_attn(x, x, x, mask)[0] + self.ff(x))
        kv = x if self.bug == "kv_raw" else h
        a = self.self_attn(h, kv, kv, mask)[0]
        f = self.ff(x if self.bug == "ff_raw" else h)
        if self.bug == "averaged":
            return x + 0.5 * (a + f)
        if self.bug == "no_residual":
            return a + f
        return x + a + f


class _ParallelSum(_Parallel):
    """Correct: the branches summed in a loop, the attention on its fused path."""

    def forward(self, x, mask=None):
        h = self.norm(x)
        branches = (lambda t: self.self_attn(t, t, t, mask, need_weights=False)[0], self.ff)
        return x + sum(branch(h) for branch in branches)


class _ParallelTorchNorm(_Parallel):
    """Correct: nn.LayerNorm instead of the course's (the same parameter names)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__(d_model, n_heads, d_ff)
        self.norm = nn.LayerNorm(d_model)


BUGS["parallel_block"] = [
    (bugged(_Parallel, "sequential"), "this is the sequential Pre-LN layer"),
    (bugged(_Parallel, "post_norm"), "the sum is normalised (Post-LN)"),
    (bugged(_Parallel, "kv_raw"), "keys and values come from the raw x"),
    (bugged(_Parallel, "ff_raw"), "the feed-forward branch reads the raw x"),
    (bugged(_Parallel, "averaged"), "the branches are averaged"),
    (bugged(_Parallel, "no_residual"), "the residual is missing"),
    (bugged(_Parallel, "no_mask"), "the mask is not passed"),
    (lambda d, h, f: EncoderLayer(d, h, f), "parameter names differ"),
]
ALTERNATIVES["parallel_block"] = [_Parallel, _ParallelSum, _ParallelTorchNorm]
CHECKS["parallel_block"] = checks.check_parallel_block

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)
