"""The Transformer's building blocks: embeddings, positions, LayerNorm, FFN, encoder and decoder
layers, and the KV cache of incremental decoding.

Shapes: B batch, T target/query length, S source/key length, C = d_model, H heads,
V vocabulary size. Everything is batch-first; masks are boolean with True = may attend.

Both layers take ``norm_first`` (True: Pre-LN, ``x + f(norm(x))``; False: Post-LN,
``norm(x + f(x))``, the original paper and PyTorch's default) and ``residual`` (False drops
the skip connections, for the ablation and gradient-flow experiments). Attention weights
are returned by ``forward_with_weights``, never stored on the module; the same goes for the
keys and values of cached decoding: ``DecoderLayer.step`` returns a new ``KVCache``, and
``DecoderCache`` holds one per layer with the masks' inputs (``Transformer.decode_step``).
``StaticDecoderCache`` is the same cache preallocated at a fixed length and written in place
(``DecoderLayer.write_step``): every step then has the same shapes, which a GPU can replay as
one CUDA graph.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfx_course.attention import MultiHeadAttention
from tfx_course.validation import check_positive_int, check_probability, shape_str

__all__ = [
    "TokenEmbedding",
    "sinusoidal_encoding",
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEncoding",
    "NoPositionalEncoding",
    "LayerNorm",
    "FeedForward",
    "EncoderLayer",
    "DecoderLayer",
    "KVCache",
    "DecoderCache",
    "StaticDecoderCache",
]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu}


def _tracing() -> bool:
    """Return True while torch.compile traces or a CUDA graph is being captured."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class TokenEmbedding(nn.Module):
    """Look up token vectors and multiply them by sqrt(d_model).

    Shapes: tokens (B, T) long -> (B, T, C).

    The scale keeps the embeddings as large as the positional encodings they are added to
    when the table is initialised small (std d_model ** -0.5, as ``Transformer`` does). The
    row of ``pad_id`` starts at zero and gets no gradient; pass ``pad_id=None`` for no pad row.
    """

    def __init__(self, vocab_size: int, d_model: int, pad_id: int | None = 0):
        super().__init__()
        check_positive_int(vocab_size=vocab_size, d_model=d_model)
        if pad_id is not None and not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id={pad_id} is outside the vocabulary [0, {vocab_size})")
        self.vocab_size, self.d_model = vocab_size, d_model
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dtype not in (torch.long, torch.int):
            raise TypeError(f"tokens must be integer ids (torch.long), got dtype {tokens.dtype}")
        # The range check reads the ids back to the CPU: a compiled graph or a CUDA graph being
        # captured cannot, so there the caller checks its ids once, beforehand.
        if tokens.numel() > 0 and not _tracing():
            low, high = torch.aminmax(tokens)
            if low < 0 or high >= self.vocab_size:
                raise ValueError(
                    f"token ids must be in [0, {self.vocab_size}), got values from {int(low)} "
                    f"to {int(high)}; was the tokenizer built with a larger vocabulary?"
                )
        return self.embedding(tokens) * math.sqrt(self.d_model)  # (B, T, C)


def sinusoidal_encoding(max_len: int, d_model: int) -> Tensor:
    """Return the ``(max_len, d_model)`` table PE[pos, 2i] = sin(pos / 10000^(2i/d_model)), PE[pos, 2i+1] = cos(...)."""
    check_positive_int(max_len=max_len, d_model=d_model)
    if d_model % 2 != 0:
        raise ValueError(
            f"sinusoidal encodings pair sin and cos, so d_model must be even, got {d_model}"
        )
    position = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len, 1)
    inv_freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (C/2,)
    angles = position * inv_freq  # (max_len, C/2)
    pe = torch.empty(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe.float()


class _PositionalEncoding(nn.Module):
    """Add ``self.pe[:T]`` to the input, then apply dropout."""

    pe: Tensor

    def __init__(self, d_model: int, max_len: int, dropout: float):
        super().__init__()
        check_positive_int(d_model=d_model, max_len=max_len)
        check_probability(dropout)
        self.d_model, self.max_len = d_model, max_len
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """Add the encodings of positions offset..offset+T-1 (offset > 0 for cached decoding)."""
        B, T, C = x.shape
        if offset + T > self.max_len:
            where = f"sequence length {T}" if offset == 0 else f"position {offset + T - 1}"
            raise ValueError(
                f"{where} exceeds max_len={self.max_len}; build the model with a "
                "larger max_len or truncate the inputs"
            )
        if C != self.d_model:
            raise ValueError(f"expected (B, T, d_model={self.d_model}), got {shape_str(x)}")
        return self.dropout(x + self.pe[offset : offset + T])  # (B, T, C)

    def at(self, x: Tensor, positions: Tensor) -> Tensor:
        """Add the encodings of ``positions`` (a tensor, so a CUDA graph can replay it).

        Shapes: x (B, T, C), positions (T,) long -> (B, T, C). Positions are not checked
        against max_len here (that would read them back to the CPU).
        """
        return self.dropout(x + self.pe.index_select(0, positions))  # (B, T, C)


class SinusoidalPositionalEncoding(_PositionalEncoding):
    """Add the fixed sinusoidal encodings of positions 0..T-1, then dropout.

    Shapes: x (B, T, C) -> (B, T, C).

    The table is a buffer, not a parameter: it is not trained and, being a function of
    (max_len, d_model) alone, is left out of the state dict.
    """

    def __init__(self, d_model: int, max_len: int, dropout: float = 0.0):
        super().__init__(d_model, max_len, dropout)
        self.register_buffer("pe", sinusoidal_encoding(max_len, d_model), persistent=False)


class LearnedPositionalEncoding(_PositionalEncoding):
    """Add a trained vector per position 0..T-1, then dropout.

    Shapes: x (B, T, C) -> (B, T, C).

    Starts small (std 0.02, as BERT and GPT-2 do) and cannot handle positions past max_len.
    """

    def __init__(self, d_model: int, max_len: int, dropout: float = 0.0):
        super().__init__(d_model, max_len, dropout)
        self.pe = nn.Parameter(torch.randn(max_len, d_model) * 0.02)


class NoPositionalEncoding(nn.Module):
    """Add no positions, only dropout: the ablation that shows what positions are for.

    Shapes: x (B, T, C) -> (B, T, C). Takes ``offset`` like the other encodings and ignores it.
    """

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        check_probability(dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        return self.dropout(x)  # (B, T, C)

    def at(self, x: Tensor, positions: Tensor) -> Tensor:
        """Ignore ``positions``, as ``forward`` ignores ``offset``."""
        return self.dropout(x)  # (B, T, C)


class LayerNorm(nn.Module):
    """Normalise each position's features to mean 0 and variance 1, then scale and shift.

    Shapes: x (..., C) -> (..., C).

    y = (x - mean) / sqrt(var + eps) * weight + bias, with the biased variance (divide
    by C) as ``nn.LayerNorm`` uses; parameter names match it, so state dicts move across.
    ``fused=True`` computes the same formula with PyTorch's single ``F.layer_norm`` kernel
    (equal output, tested; several times faster on a CPU, where each step above is a pass
    over memory).
    """

    def __init__(self, d_model: int, eps: float = 1e-5, fused: bool = False):
        super().__init__()
        check_positive_int(d_model=d_model)
        self.d_model, self.eps, self.fused = d_model, eps, fused
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            return F.layer_norm(x, (self.d_model,), self.weight, self.bias, self.eps)
        var, mean = torch.var_mean(x, dim=-1, correction=0, keepdim=True)  # (..., 1)
        x_hat = (x - mean) * torch.rsqrt(var + self.eps)  # (..., C)
        return torch.addcmul(self.bias, x_hat, self.weight)  # x_hat * weight + bias

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}, fused={self.fused}"


class FeedForward(nn.Module):
    """Apply the same two-layer MLP to every position: linear2(dropout(act(linear1(x)))).

    Shapes: x (B, T, C) -> (B, T, C); the hidden layer has d_ff features.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu"):
        super().__init__()
        check_positive_int(d_model=d_model, d_ff=d_ff)
        check_probability(dropout)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = ACTIVATIONS[self.activation](self.linear1(x))  # (B, T, d_ff)
        return self.linear2(self.dropout(h))  # (B, T, C)


class _ResidualLayer(nn.Module):
    """The wiring shared by both layers: "Add & Norm" around each sublayer, Pre-LN or Post-LN."""

    def __init__(
        self, d_model: int, dropout: float, norm_first: bool, residual: bool, fused_norm: bool
    ):
        super().__init__()
        check_probability(dropout)
        self.d_model, self.fused_norm = d_model, fused_norm
        self.norm_first, self.residual = norm_first, residual
        self.dropout = nn.Dropout(dropout)

    def _norm(self) -> LayerNorm:
        return LayerNorm(self.d_model, fused=self.fused_norm)

    def _pre_norm(self, x: Tensor, norm: nn.Module) -> Tensor:
        """Pre-LN normalises what goes into the sublayer; Post-LN passes x as it is."""
        return norm(x) if self.norm_first else x

    def _add_and_norm(self, x: Tensor, out: Tensor, norm: nn.Module) -> Tensor:
        """Add the sublayer's output to its input (unless residual=False); Post-LN then normalises."""
        out = self.dropout(out)
        if self.residual:
            out = x + out
        return out if self.norm_first else norm(out)


class EncoderLayer(_ResidualLayer):
    """Self-attention then a feed-forward network, each wrapped in a residual and a LayerNorm.

    Shapes: x (B, S, C), mask broadcastable to (B, H, S, S) -> (B, S, C).

    ``fused_attention=True`` makes ``forward`` use PyTorch's fused attention kernel (same
    output, faster, no weights; ``forward_with_weights`` always computes the weights), and
    ``fused_norm=True`` makes the LayerNorms use ``F.layer_norm`` (same output, faster).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        norm_first: bool = True,
        residual: bool = True,
        fused_attention: bool = False,
        fused_norm: bool = False,
    ):
        super().__init__(d_model, dropout, norm_first, residual, fused_norm)
        self.fused_attention = fused_attention
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.norm1, self.norm2 = self._norm(), self._norm()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self._forward(x, mask, need_weights=not self.fused_attention)[0]

    def forward_with_weights(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return the output and the self-attention weights (B, H, S, S)."""
        x, weights = self._forward(x, mask, need_weights=True)
        assert weights is not None
        return x, weights

    def _forward(
        self, x: Tensor, mask: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        h = self._pre_norm(x, self.norm1)
        h, weights = self.self_attn(h, h, h, mask, need_weights=need_weights)  # (B, S, C)
        x = self._add_and_norm(x, h, self.norm1)
        h = self.ff(self._pre_norm(x, self.norm2))
        return self._add_and_norm(x, h, self.norm2), weights  # (B, S, C)


@dataclass(frozen=True)
class KVCache:
    """The keys and values one ``DecoderLayer`` has computed so far, for incremental decoding.

    Shapes: self_k, self_v (B, H, t, D) for the t target positions decoded so far;
    cross_k, cross_v (B, H, S, D) projected from the memory once.

    Immutable: ``DecoderLayer.step`` returns a new cache, so nothing is stored on the module.
    ``DecoderCache`` holds one per layer and knows their length and how to reorder them.
    """

    self_k: Tensor
    self_v: Tensor
    cross_k: Tensor
    cross_v: Tensor


@dataclass(frozen=True)
class DecoderCache:
    """What cached decoding keeps between steps: each layer's ``KVCache`` and the masks' inputs.

    Shapes: layers, one ``KVCache`` per decoder layer; memory_mask (B, 1, 1, S) hides padded
    source tokens; keep (B, t) is True for the real (not padding) target tokens so far.
    Made by ``Transformer.start_cache``, grown by ``Transformer.decode_step`` (which returns
    a new cache: nothing is stored on the model).
    """

    layers: tuple[KVCache, ...]
    memory_mask: Tensor
    keep: Tensor

    @property
    def length(self) -> int:
        """Target positions cached so far (t)."""
        return self.keep.shape[1]

    def reorder(self, index: Tensor, memory: bool = True) -> DecoderCache:
        """Return the cache of the sequences ``index`` picks (row i of the result is row index[i]).

        ``memory=False`` leaves the memory's keys, values and mask alone: correct when
        ``index`` only moves rows between copies of the same source sentence, as beam search
        does, and it saves copying them at every step.

        Shapes: index (B',) long -> a cache of B' sequences.
        """
        rows = self.memory_mask.shape[0]
        if not memory and index.shape[0] != rows:
            raise ValueError(
                f"memory=False keeps the memory's {rows} rows, so index must pick as many "
                f"sequences, got {index.shape[0]}; pass memory=True"
            )

        def pick(t: Tensor, moves: bool = True) -> Tensor:
            return t.index_select(0, index) if moves else t

        layers = tuple(
            KVCache(
                pick(c.self_k), pick(c.self_v), pick(c.cross_k, memory), pick(c.cross_v, memory)
            )
            for c in self.layers
        )
        return DecoderCache(layers, pick(self.memory_mask, memory), pick(self.keep))


@dataclass(frozen=True)
class StaticDecoderCache:
    """A decoder's KV cache preallocated for ``length`` target positions and written in place.

    Shapes: layers, one ``KVCache`` per decoder layer whose self_k, self_v are (B, H, L, D)
    buffers (L = length); memory_mask (B, 1, 1, S); keep (B, L) True at the real target tokens
    written so far (False at padding and at positions not written yet); position (1,) long, where
    the next token goes. ``Transformer.static_decode_step`` writes one position and advances
    ``position``; no tensor changes shape, so the step can be captured as a CUDA graph.
    """

    layers: tuple[KVCache, ...]
    memory_mask: Tensor
    keep: Tensor
    position: Tensor

    @property
    def length(self) -> int:
        """Target positions the buffers hold (L)."""
        return self.keep.shape[1]

    def reorder_(self, index: Tensor) -> None:
        """Make row i continue row ``index[i]`` of the same sentence, in place (beam search).

        The memory's keys, values and mask stay: ``index`` only moves rows between copies of
        one source sentence. Shapes: index (B,) long.
        """
        for cache in self.layers:
            cache.self_k.copy_(cache.self_k.index_select(0, index))
            cache.self_v.copy_(cache.self_v.index_select(0, index))
        self.keep.copy_(self.keep.index_select(0, index))

    def clone(self) -> StaticDecoderCache:
        """Return a copy with buffers of its own."""
        layers = tuple(
            KVCache(c.self_k.clone(), c.self_v.clone(), c.cross_k.clone(), c.cross_v.clone())
            for c in self.layers
        )
        rest = (self.memory_mask.clone(), self.keep.clone(), self.position.clone())
        return StaticDecoderCache(layers, *rest)

    def load_(self, other: StaticDecoderCache) -> None:
        """Copy ``other``'s contents into this cache's buffers (same shapes), in place."""
        pairs = [(self.memory_mask, other.memory_mask), (self.keep, other.keep)]
        pairs.append((self.position, other.position))
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            pairs += [(getattr(mine, f), getattr(theirs, f)) for f in ("self_k", "self_v", "cross_k", "cross_v")]  # fmt: skip
        for target, source in pairs:
            target.copy_(source)


class DecoderLayer(_ResidualLayer):
    """Masked self-attention, cross-attention over the encoder's memory, then a feed-forward network.

    Shapes: x (B, T, C), memory (B, S, C), self_mask broadcastable to (B, H, T, T) (causal
    and padding), memory_mask broadcastable to (B, H, T, S) (source padding) -> (B, T, C).

    ``norm_first``, ``residual``, ``fused_attention`` and ``fused_norm`` work as in
    ``EncoderLayer``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        norm_first: bool = True,
        residual: bool = True,
        fused_attention: bool = False,
        fused_norm: bool = False,
    ):
        super().__init__(d_model, dropout, norm_first, residual, fused_norm)
        self.fused_attention = fused_attention
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.norm1, self.norm2, self.norm3 = self._norm(), self._norm(), self._norm()

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        need_weights = not self.fused_attention
        return self._forward(x, memory, self_mask, memory_mask, need_weights)[0]

    def forward_with_weights(
        self,
        x: Tensor,
        memory: Tensor,
        self_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return the output, the self-attention weights (B, H, T, T) and the cross-attention weights (B, H, T, S)."""
        x, self_weights, cross_weights = self._forward(x, memory, self_mask, memory_mask, True)
        assert self_weights is not None and cross_weights is not None
        return x, self_weights, cross_weights

    def _forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_mask: Tensor | None,
        memory_mask: Tensor | None,
        need_weights: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        h = self._pre_norm(x, self.norm1)
        h, self_weights = self.self_attn(h, h, h, self_mask, need_weights=need_weights)
        x = self._add_and_norm(x, h, self.norm1)  # (B, T, C)
        h = self._pre_norm(x, self.norm2)
        h, cross_weights = self.cross_attn(
            h, memory, memory, memory_mask, need_weights=need_weights
        )
        x = self._add_and_norm(x, h, self.norm2)  # (B, T, C)
        h = self.ff(self._pre_norm(x, self.norm3))
        return self._add_and_norm(x, h, self.norm3), self_weights, cross_weights  # (B, T, C)

    def start_cache(self, memory: Tensor, length: int = 0) -> KVCache:
        """Project the memory's keys and values once and return a cache with no target positions.

        Shapes: memory (B, S, C) -> cross_k, cross_v (B, H, S, D); self_k, self_v (B, H, 0, D),
        or zero buffers (B, H, length, D) for ``write_step`` to fill.
        """
        cross_k, cross_v = self.cross_attn.project_kv(memory, memory)  # (B, H, S, D)
        B, H, S, D = cross_k.shape
        self_k = cross_k.new_zeros(B, H, length, D)  # (B, H, length, D)
        return KVCache(self_k, torch.zeros_like(self_k), cross_k, cross_v)

    def step(
        self,
        x: Tensor,
        cache: KVCache,
        self_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> tuple[Tensor, KVCache]:
        """Run the layer on the new target positions only, reusing the cached keys and values.

        Shapes: x (B, T, C) holds only the T new positions (usually T = 1); self_mask
        broadcastable to (B, H, T, t + T) over the cached and new positions; memory_mask
        broadcastable to (B, H, T, S) -> (B, T, C) and the cache grown to t + T positions.
        Equals the last T positions of ``forward`` on the whole prefix.
        """
        h = self._pre_norm(x, self.norm1)
        k, v = self.self_attn.project_kv(h, h)  # (B, H, T, D): the new positions only
        k = torch.cat([cache.self_k, k], dim=2)  # (B, H, t + T, D)
        v = torch.cat([cache.self_v, v], dim=2)  # (B, H, t + T, D)
        cache = dataclasses.replace(cache, self_k=k, self_v=v)
        return self._attend_cached(x, h, cache, self_mask, memory_mask), cache

    def write_step(
        self,
        x: Tensor,
        cache: KVCache,
        position: Tensor,
        self_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        """``step`` with a preallocated cache: write the new keys and values at ``position``.

        Shapes: x (B, 1, C) the token at ``position`` (1,) long; cache.self_k, self_v (B, H, L, D)
        buffers, written in place; self_mask broadcastable to (B, H, 1, L), False at the
        positions not written yet -> (B, 1, C). Equals ``step`` (tested) without changing any
        shape, so a CUDA graph can replay it.
        """
        h = self._pre_norm(x, self.norm1)
        k, v = self.self_attn.project_kv(h, h)  # (B, H, 1, D)
        cache.self_k.index_copy_(2, position, k)  # (B, H, L, D): written in place
        cache.self_v.index_copy_(2, position, v)
        return self._attend_cached(x, h, cache, self_mask, memory_mask)

    def _attend_cached(
        self,
        x: Tensor,
        h: Tensor,
        cache: KVCache,
        self_mask: Tensor | None,
        memory_mask: Tensor | None,
    ) -> Tensor:
        """The rest of a cached step once the keys and values are in ``cache``."""
        need_weights = not self.fused_attention
        h, _ = self.self_attn.attend(h, cache.self_k, cache.self_v, self_mask, need_weights)
        x = self._add_and_norm(x, h, self.norm1)  # (B, T, C)
        h = self._pre_norm(x, self.norm2)
        h, _ = self.cross_attn.attend(h, cache.cross_k, cache.cross_v, memory_mask, need_weights)
        x = self._add_and_norm(x, h, self.norm2)  # (B, T, C)
        h = self.ff(self._pre_norm(x, self.norm3))
        return self._add_and_norm(x, h, self.norm3)  # (B, T, C)
