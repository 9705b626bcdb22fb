"""Pieces of today's Transformers, built small: RoPE, RMSNorm, SwiGLU, grouped-query attention,
sliding-window attention and linear attention.

Shapes: B batch, H query heads, G key/value heads (groups), T query length, S key length,
C = d_model, D = d_head, Dv = the values' width.

Masks follow the course's convention (boolean, True = may attend, combined with ``&``) and
softmax attention fills blocked scores through ``tfx_course.attention.mask_scores``. Linear
attention has no softmax: a blocked pair simply contributes nothing (its weight is 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfx_course.attention import (
    causal_mask,
    mask_scores,
    merge_heads,
    scaled_dot_product_attention,
    split_heads,
)
from tfx_course.validation import check_positive_int, check_probability, shape_str

__all__ = [
    "rope_angles",
    "apply_rope",
    "RMSNorm",
    "SwiGLU",
    "swiglu_width",
    "GroupedQueryAttention",
    "kv_cache_size",
    "sliding_window_mask",
    "sliding_window_attention",
    "elu_feature_map",
    "linear_attention",
    "linear_attention_quadratic",
    "attention_cpu_seconds",
    "ATTENTION_KERNELS",
]

ATTENTION_KERNELS = ("softmax", "linear")


# --- rotary position embeddings (RoPE) --------------------------------------------------------


def rope_angles(
    size: int, d_head: int, base: float = 10000.0, offset: int = 0
) -> tuple[Tensor, Tensor]:
    """Return cos and sin of the angles t * theta_i, theta_i = base^(-2i / d_head), each (T, D/2).

    Positions run from ``offset`` to ``offset + size - 1``. The angles are computed in float64:
    t * theta_i loses digits in float32 at large positions.
    """
    check_positive_int(size=size, d_head=d_head)
    if d_head % 2 != 0:
        raise ValueError(f"RoPE rotates pairs of features, so d_head must be even, got {d_head}")
    position = torch.arange(offset, offset + size, dtype=torch.float64)[:, None]  # (T, 1)
    theta = base ** (-torch.arange(0, d_head, 2, dtype=torch.float64) / d_head)  # (D/2,)
    angles = position * theta  # (T, D/2)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, base: float = 10000.0, offset: int = 0) -> Tensor:
    """Rotate each feature pair (2i, 2i+1) of the vector at position t by the angle t * theta_i.

    Shapes: x (..., T, D) -> (..., T, D). Applied to queries and keys (never values), it makes
    the score q_m . k_n depend on the positions only through their offset m - n (Su et al.).
    """
    if x.dim() < 2:
        raise ValueError(f"apply_rope expects (..., T, D), got shape {shape_str(x)}")
    T, D = x.shape[-2:]
    cos, sin = (a.to(x.dtype).to(x.device) for a in rope_angles(T, D, base, offset))  # (T, D/2)
    even, odd = x[..., 0::2], x[..., 1::2]  # (..., T, D/2) each
    rotated = torch.stack(
        [even * cos - odd * sin, even * sin + odd * cos], dim=-1
    )  # (..., T, D/2, 2)
    return rotated.flatten(-2)  # (..., T, D): pairs back in place


# --- RMSNorm and SwiGLU -----------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Divide each position's features by their root mean square, then scale (no mean, no bias).

    Shapes: x (..., C) -> (..., C). y = x / sqrt(mean(x^2) + eps) * weight; the parameter is
    named ``weight`` as in ``torch.nn.RMSNorm``, so state dicts move across. ``fused=True``
    computes the same formula with PyTorch's single ``F.rms_norm`` kernel (faster).
    """

    def __init__(self, d_model: int, eps: float = 1e-6, fused: bool = False):
        super().__init__()
        check_positive_int(d_model=d_model)
        self.d_model, self.eps, self.fused = d_model, eps, fused
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            return F.rms_norm(x, (self.d_model,), self.weight, self.eps)
        rms_inv = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., 1)
        return x * rms_inv * self.weight

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}, fused={self.fused}"


def swiglu_width(d_model: int, d_ff: int) -> int:
    """Return the hidden width that gives SwiGLU (three matrices) the weights of a two-matrix FFN.

    2 * d_model * d_ff = 3 * d_model * width, so width = 2 * d_ff / 3, rounded to a multiple of 8.
    """
    check_positive_int(d_model=d_model, d_ff=d_ff)
    return max(8, 8 * round(2 * d_ff / 3 / 8))


class SwiGLU(nn.Module):
    """The gated feed-forward network of Shazeer (2020): down(silu(gate(x)) * up(x)).

    Shapes: x (B, T, C) -> (B, T, C); the hidden layer has d_ff features. No biases, as in
    the language models that use it.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        check_positive_int(d_model=d_model, d_ff=d_ff)
        check_probability(dropout)
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.gate_proj(x)) * self.up_proj(x)  # (B, T, d_ff): the gate times the value
        return self.down_proj(self.dropout(h))  # (B, T, C)


# --- grouped-query attention --------------------------------------------------------------


class GroupedQueryAttention(nn.Module):
    """Attention with ``n_heads`` query heads sharing ``n_kv_heads`` key/value heads.

    Shapes: query (B, T, C), key and value (B, S, C), mask broadcastable to (B, H, T, S)
    -> out (B, T, C) and weights (B, H, T, S).

    ``n_kv_heads == n_heads`` is multi-head attention (the same parameter names and shapes as
    ``tfx_course.attention.MultiHeadAttention``, so its weights load); ``n_kv_heads == 1`` is
    multi-query attention. ``rope=True`` rotates queries and keys (``apply_rope``);
    ``kernel="linear"`` replaces the softmax by linear attention (causal when ``causal``).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        rope: bool = False,
        kernel: str = "softmax",
    ):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        check_positive_int(d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads)
        _check_heads(d_model, n_heads, n_kv_heads)
        if kernel not in ATTENTION_KERNELS:
            raise ValueError(f"kernel must be one of {ATTENTION_KERNELS}, got {kernel!r}")
        check_probability(dropout)
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.d_head, self.dropout, self.rope, self.kernel = (
            d_model // n_heads,
            dropout,
            rope,
            kernel,
        )
        kv_width = n_kv_heads * self.d_head
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, kv_width, bias=bias)
        self.v_proj = nn.Linear(d_model, kv_width, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor | None = None,
        causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        q = split_heads(self.q_proj(query), self.n_heads)  # (B, H, T, D)
        k = split_heads(self.k_proj(key), self.n_kv_heads)  # (B, G, S, D): what a KV cache keeps
        v = split_heads(self.v_proj(value), self.n_kv_heads)  # (B, G, S, D)
        if self.rope:
            q, k = apply_rope(q), apply_rope(k)
        group = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(group, dim=1)  # (B, H, S, D): query head h reads group h // group
        v = v.repeat_interleave(group, dim=1)  # (B, H, S, D)
        if self.kernel == "linear":
            if mask is not None:
                raise ValueError("linear attention takes no mask here; pass causal=True instead")
            return self.out_proj(merge_heads(linear_attention(q, k, v, causal=causal))), None
        if causal:
            rule = causal_mask(q.shape[2], device=q.device)  # (T, T): self-attention only
            mask = rule if mask is None else mask & rule
        p = self.dropout if self.training else 0.0
        x, weights = scaled_dot_product_attention(q, k, v, mask, p)  # (B, H, T, D)
        return self.out_proj(merge_heads(x)), weights  # (B, T, C)

    def extra_repr(self) -> str:
        return (
            f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, rope={self.rope}, "
            f"kernel={self.kernel!r}"
        )


def _check_heads(d_model: int, n_heads: int, n_kv_heads: int) -> None:
    if d_model % n_heads != 0:
        raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
    if n_heads % n_kv_heads != 0:
        raise ValueError(
            f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}: each key/value head "
            "serves the same number of query heads, so pick n_kv_heads among the divisors"
        )


def kv_cache_size(n_layers: int, n_kv_heads: int, d_head: int, length: int, batch: int = 1) -> int:
    """Return how many numbers a KV cache holds: keys and values, per layer, head and position.

    2 * n_layers * n_kv_heads * d_head * length * batch; multiply by the bytes of one number
    (2 in float16) for its memory. Grouped-query attention divides it by n_heads / n_kv_heads.
    """
    check_positive_int(n_layers=n_layers, n_kv_heads=n_kv_heads, d_head=d_head, length=length)
    check_positive_int(batch=batch)
    return 2 * n_layers * n_kv_heads * d_head * length * batch


# --- sliding-window attention ---------------------------------------------------------------


def sliding_window_mask(
    size: int, window: int, causal: bool = True, device: torch.device | str | None = None
) -> Tensor:
    """Return a ``(T, T)`` mask that lets query t see only keys near it.

    ``causal=True``: the ``window`` latest positions, itself included (t - window < s <= t).
    ``causal=False``: every key less than ``window`` positions away, on either side
    (|t - s| < window); ``sliding_window_mask(T, w, causal=False) & causal_mask(T)`` is the
    causal one.
    """
    check_positive_int(size=size, window=window)
    position = torch.arange(size, device=device)
    offset = position[:, None] - position[None, :]  # (T, T): t - s, how far back key s lies
    if causal:
        return (offset >= 0) & (offset < window)
    return offset.abs() < window


def sliding_window_attention(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """Causal attention to the ``window`` latest keys, computed in blocks: O(T * window) work.

    Shapes: q, k (B, H, T, D), v (B, H, T, Dv) -> (B, H, T, Dv). Equals full softmax attention
    with ``sliding_window_mask(T, window)``, but each block of ``window`` queries scores only
    the 2 * window keys that can reach it, instead of all T.
    """
    check_positive_int(window=window)
    B, H, T, D = q.shape
    n = math.ceil(T / window)  # query blocks
    pad = n * window - T
    q = F.pad(q, (0, 0, 0, pad)).view(B, H, n, window, D)  # (B, H, n, W, D)
    # window empty keys in front, so that block j's keys are positions (j - 1)W .. (j + 1)W - 1
    k = F.pad(k, (0, 0, window, pad)).unfold(2, 2 * window, window)  # (B, H, n, D, 2W)
    v = F.pad(v, (0, 0, window, pad)).unfold(2, 2 * window, window)  # (B, H, n, Dv, 2W)
    scores = q @ k / math.sqrt(D)  # (B, H, n, W, 2W)
    scores = mask_scores(scores, _block_mask(n, window, q.device))
    out = scores.softmax(dim=-1) @ v.transpose(-2, -1)  # (B, H, n, W, Dv)
    return out.reshape(B, H, n * window, -1)[:, :, :T]  # (B, H, T, Dv)


def _block_mask(n: int, window: int, device: torch.device) -> Tensor:
    """The mask of ``sliding_window_attention``'s blocks, (n, W, 2W): in the window, not padding."""
    i = torch.arange(window, device=device)[:, None]  # query i of a block: position jW + i
    r = torch.arange(2 * window, device=device)[None, :]  # key r of its keys: position (j-1)W + r
    offset = window + i - r  # (W, 2W): query position - key position
    band = (offset >= 0) & (offset < window)  # (W, 2W)
    real = torch.arange(n, device=device)[:, None] * window - window + r >= 0  # (n, 2W)
    return band[None] & real[:, None, :]  # (n, W, 2W)


# --- linear attention ---------------------------------------------------------------------


def elu_feature_map(x: Tensor) -> Tensor:
    """Return elu(x) + 1, the positive feature map of Katharopoulos et al. (2020)."""
    return F.elu(x) + 1


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    feature_map: Callable[[Tensor], Tensor] = elu_feature_map,
    eps: float = 1e-6,
) -> Tensor:
    """Compute phi(q) (phi(k)^T v) / (phi(q) . sum phi(k)) without forming the (T, S) weights.

    Shapes: q (B, H, T, D), k (B, H, S, D), v (B, H, S, Dv) -> (B, H, T, Dv); O(T * D * Dv) work.
    ``causal=True`` sums keys and values up to each query's position (prefix sums, S = T).
    """
    phi_q, phi_k = feature_map(q), feature_map(k)  # positive, (B, H, T, D) and (B, H, S, D)
    if not causal:
        kv = phi_k.transpose(-2, -1) @ v  # (B, H, D, Dv): every key-value product summed once
        numerator = phi_q @ kv  # (B, H, T, Dv)
        denominator = phi_q @ phi_k.sum(dim=-2)[..., None]  # (B, H, T, 1)
        return numerator / (denominator + eps)
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal linear attention needs T = S, got q {shape_str(q)}, k {shape_str(k)}")  # fmt: skip
    kv = torch.einsum("bhsd,bhse->bhsde", phi_k, v).cumsum(dim=2)  # (B, H, T, D, Dv): prefix sums
    numerator = torch.einsum("bhtd,bhtde->bhte", phi_q, kv)  # (B, H, T, Dv)
    denominator = (phi_q * phi_k.cumsum(dim=2)).sum(dim=-1, keepdim=True)  # (B, H, T, 1)
    return numerator / (denominator + eps)


def linear_attention_quadratic(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    feature_map: Callable[[Tensor], Tensor] = elu_feature_map,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """Compute linear attention the quadratic way: form the (T, S) weights, then average.

    Shapes: as ``linear_attention``, mask broadcastable to (B, H, T, S) -> out (B, H, T, Dv)
    and weights (B, H, T, S) whose rows sum to 1 (up to eps). The same numbers as
    ``linear_attention`` (with ``causal_mask(T)`` for ``causal=True``), in O(T * S) work.
    """
    similarity = feature_map(q) @ feature_map(k).transpose(-2, -1)  # (B, H, T, S), all > 0
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError("mask must be a boolean tensor with True = may attend")
        similarity = similarity * mask  # a blocked pair contributes nothing: no softmax to fill
    weights = similarity / (similarity.sum(dim=-1, keepdim=True) + eps)  # (B, H, T, S)
    return weights @ v, weights


# --- what each costs ----------------------------------------------------------------------


def _best_cpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


@torch.no_grad()
def attention_cpu_seconds(
    length: int, window: int, heads: int = 2, d_head: int = 16, repeats: int = 3
) -> dict[str, float]:
    """Return the CPU seconds of causal full, sliding-window and linear attention at one length.

    One sequence of random queries, keys and values (1, heads, length, d_head); each kind is
    run ``repeats`` times and its shortest time kept. CPU time of this process
    (``time.process_time``), so other programs on a shared machine do not count; on more than
    one thread it adds up the threads.
    """
    check_positive_int(length=length, window=window, heads=heads, d_head=d_head, repeats=repeats)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, length, d_head, generator=gen) for _ in range(3))
    mask = causal_mask(length)
    return {
        "full": _best_cpu_seconds(lambda: scaled_dot_product_attention(q, k, v, mask), repeats),
        "sliding window": _best_cpu_seconds(
            lambda: sliding_window_attention(q, k, v, window), repeats
        ),
        "linear": _best_cpu_seconds(lambda: linear_attention(q, k, v, causal=True), repeats),
    }
