"""Masks, scaled dot-product attention and multi-head attention.

Shapes: B batch, H heads, T query length, S key length, C = d_model, D = d_head.

Masks are boolean and True means "may attend", the convention of
``torch.nn.functional.scaled_dot_product_attention``. They broadcast to the scores'
shape ``(B, H, T, S)``; combine rules with ``&``. ``nn.MultiheadAttention`` uses the
opposite polarity (True = blocked): ``to_nn_attn_mask`` is the one place that converts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfx_course.validation import check_positive_int, check_probability, shape_str

__all__ = [
    "causal_mask",
    "padding_mask",
    "to_nn_attn_mask",
    "mask_scores",
    "scaled_dot_product_attention",
    "split_heads",
    "merge_heads",
    "MultiHeadAttention",
]


def _require_bool_mask(mask: object, name: str = "mask") -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of dtype torch.bool, got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be boolean with True = may attend, got dtype {mask.dtype}. "
            "If it holds 0/1 with 1 = attend, pass `mask.bool()`; if it is an additive float "
            "mask (0 = attend, -inf = blocked), pass `mask == 0`."
        )
    return mask


def causal_mask(size: int, device: torch.device | str | None = None) -> Tensor:
    """Return a ``(T, T)`` mask that lets position t attend to positions 0..t only."""
    check_positive_int(size=size)
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()


def padding_mask(keep: Tensor) -> Tensor:
    """Turn a ``(B, S)`` mask of real tokens into a ``(B, 1, 1, S)`` attention mask.

    ``keep[b, s]`` is True where token s of sequence b is real and False where it is
    padding; with token ids, pass ``tokens != pad_id``. The result broadcasts over heads
    and queries, so every query ignores the padded keys.
    """
    _require_bool_mask(keep, "keep")
    if keep.dim() != 2:
        raise ValueError(
            f"padding_mask expects a (B, S) mask of real tokens, got shape {shape_str(keep)}"
        )
    return keep[:, None, None, :]  # (B, 1, 1, S)


def to_nn_attn_mask(mask: Tensor) -> Tensor:
    """Convert a True-means-attend mask to ``nn.MultiheadAttention``'s True-means-blocked one.

    ``nn.MultiheadAttention`` (its ``attn_mask`` and ``key_padding_mask``) and
    ``nn.Transformer`` block the positions marked True; this course and
    ``F.scaled_dot_product_attention`` allow them. Forgetting to invert is a silent bug.
    """
    return ~_require_bool_mask(mask)


def mask_scores(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Set blocked scores to the dtype's most negative value, so softmax gives them 0.

    ``finfo(dtype).min`` instead of ``-inf`` keeps a fully blocked row finite (uniform
    weights instead of NaN), and instead of ``-1e9`` it does not overflow in float16.
    """
    if mask is None:
        return scores
    _check_mask(mask, scores.shape)
    return scores.masked_fill(~mask, torch.finfo(scores.dtype).min)


def _check_mask(mask: Tensor, scores_shape: torch.Size) -> None:
    _require_bool_mask(mask)
    try:
        shape = torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        shape = None
    if shape != scores_shape:
        raise ValueError(
            f"mask of shape {shape_str(mask)} does not broadcast to the scores' shape "
            f"{shape_str(scores_shape)} = (..., T, S); expected e.g. (T, S), (B, 1, 1, S) or "
            "(B, 1, T, S)"
        )


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (..., length, dim), got {shape_str(t)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share their last dimension d_k, got q {shape_str(q)} and k {shape_str(k)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same number of positions S, got k {shape_str(k)} and v {shape_str(v)}"
        )


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Compute softmax(q k^T / sqrt(d_k)) v and return the output and the weights.

    Shapes:
        q: (..., T, D), k: (..., S, D), v: (..., S, Dv), mask: broadcastable to (..., T, S)
        returns out (..., T, Dv) and weights (..., T, S), one row per query summing to 1.

    The weights are returned before dropout, so they are the attention distribution.
    """
    _check_qkv(q, k, v)
    check_probability(dropout_p, "dropout_p")
    d_k = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T, S)
    scores = mask_scores(scores, mask)
    weights = scores.softmax(dim=-1)  # (..., T, S)
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return dropped @ v, weights  # (..., T, Dv), (..., T, S)


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """Split the feature axis into heads: ``(B, T, C)`` -> ``(B, H, T, C // H)``."""
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)  # (B, H, T, D)


def merge_heads(x: Tensor) -> Tensor:
    """Undo ``split_heads``: ``(B, H, T, D)`` -> ``(B, T, H * D)``."""
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query, key, value and output projections.

    Shapes:
        query: (B, T, C), key and value: (B, S, C), mask: broadcastable to (B, H, T, S)
        returns out (B, T, C) and weights (B, H, T, S), or None with ``need_weights=False``.

    ``need_weights=False`` runs PyTorch's fused kernel, which never forms the weights;
    its output equals the explicit path (tested).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        check_positive_int(d_model=d_model, n_heads=n_heads)
        if d_model % n_heads != 0:
            raise ValueError(
                f"d_model={d_model} is not divisible by n_heads={n_heads}; "
                "each head gets d_model // n_heads features, so pick sizes that divide"
            )
        check_probability(dropout)
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() != 3 or t.shape[-1] != self.d_model:
                raise ValueError(
                    f"{name} must have shape (B, length, d_model={self.d_model}) "
                    f"(batch first), got {shape_str(t)}"
                )
        if key.shape[:2] != value.shape[:2] or query.shape[0] != key.shape[0]:
            raise ValueError(
                f"query (B, T, C), key and value (B, S, C) must agree on B and S, got "
                f"{shape_str(query)}, {shape_str(key)}, {shape_str(value)}; inputs are batch first "
                "(unlike nn.MultiheadAttention's default (T, B, C))"
            )

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor | None = None,
        need_weights: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        self._check_inputs(query, key, value)
        q = split_heads(self.q_proj(query), self.n_heads)  # (B, H, T, D)
        k, v = self.project_kv(key, value)  # (B, H, S, D) each
        return self._attend_heads(q, k, v, mask, need_weights)  # (B, T, C), (B, H, T, S)

    def project_kv(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Project and split the keys and values, the part of ``forward`` a KV cache keeps.

        Shapes: key and value (B, S, C) -> k and v (B, H, S, D).
        """
        k = split_heads(self.k_proj(key), self.n_heads)  # (B, H, S, D)
        v = split_heads(self.v_proj(value), self.n_heads)  # (B, H, S, D)
        return k, v

    def attend(
        self,
        query: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        need_weights: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to keys and values already made by ``project_kv``.

        Shapes: query (B, T, C), k and v (B, H, S, D), mask broadcastable to (B, H, T, S)
        -> out (B, T, C) and weights (B, H, T, S) or None. ``forward(query, key, value)``
        equals ``attend(query, *project_kv(key, value))``.
        """
        q = split_heads(self.q_proj(query), self.n_heads)  # (B, H, T, D)
        return self._attend_heads(q, k, v, mask, need_weights)

    def _attend_heads(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        p = self.dropout if self.training else 0.0
        if need_weights:
            x, weights = scaled_dot_product_attention(q, k, v, mask, p)  # (B, H, T, D)
        else:
            x, weights = _fused_attention(q, k, v, mask, p), None  # (B, H, T, D)
        return self.out_proj(merge_heads(x)), weights  # (B, T, C)


def _fused_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float) -> Tensor:
    """Run ``F.scaled_dot_product_attention`` with the same masking as the explicit path."""
    bias = None
    if mask is not None:
        # An additive mask of finfo.min (not a boolean one, which becomes -inf) keeps
        # fully blocked rows uniform instead of NaN, exactly like mask_scores.
        scores_shape = q.shape[:-1] + (k.shape[-2],)  # (B, H, T, S)
        _check_mask(mask, scores_shape)
        bias = mask_scores(q.new_zeros(mask.shape), mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
