"""The encoder-decoder Transformer: its configuration, the encoder and decoder stacks, the model.

Shapes: B batch, S source length, T target length, C = d_model, H heads, V vocabulary size.

Final LayerNorm: with Pre-LN (``norm_first=True``) each layer adds to an un-normalised
residual stream, so the stack ends with one more LayerNorm (``encoder.norm``,
``decoder.norm``). With Post-LN every layer already ends in a LayerNorm and, as in the
original paper, no extra one is added (``norm`` is ``nn.Identity``). ``nn.Transformer``
always adds the final norm; to compare a Post-LN model with it, set its
``encoder.norm`` and ``decoder.norm`` to ``None``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tfx_course.attention import causal_mask, padding_mask
from tfx_course.layers import (
    DecoderCache,
    DecoderLayer,
    EncoderLayer,
    KVCache,
    LayerNorm,
    LearnedPositionalEncoding,
    NoPositionalEncoding,
    SinusoidalPositionalEncoding,
    StaticDecoderCache,
    TokenEmbedding,
)
from tfx_course.validation import check_positive_int, check_probability, is_int

__all__ = [
    "POSITIONAL_KINDS",
    "ModelConfig",
    "source_mask",
    "target_mask",
    "Encoder",
    "Decoder",
    "Transformer",
    "eval_mode",
]

POSITIONAL_KINDS = ("sinusoidal", "learned", "none")
_SIZE_FIELDS = ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "n_encoder_layers",
                "n_decoder_layers", "d_ff", "max_len")  # fmt: skip


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and switches of a ``Transformer``; defaults are the paper's base model.

    Make variants with ``dataclasses.replace(config, n_heads=1)``. ``fused_attention`` turns on
    both of PyTorch's fused kernels, attention (the layers' ``fused_attention``) and LayerNorm
    (their ``fused_norm``): same outputs within float tolerance, faster, no attention weights
    in ``forward`` (``attention_maps`` still computes them).
    """

    src_vocab_size: int  # source tokens, including the special ones
    tgt_vocab_size: int  # target tokens, including the special ones
    d_model: int = 512  # width of every hidden state
    n_heads: int = 8  # attention heads per layer; each gets d_head = d_model // n_heads
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    d_ff: int = 2048  # hidden width of the position-wise feed-forward network
    dropout: float = 0.1  # on embeddings, attention weights and every sublayer's output
    max_len: int = 256  # longest sequence the positional encodings cover
    norm_first: bool = True  # True: Pre-LN (stable without warmup); False: Post-LN (the paper)
    positional: str = "sinusoidal"  # "sinusoidal", "learned" or "none" (for the ablation)
    residual: bool = True  # False drops every skip connection (for the ablation)
    tie_embeddings: bool = False  # the decoder's input embedding shares lm_head's weight
    pad_id: int = 0  # padding token, the same id in both vocabularies
    fused_attention: bool = False  # PyTorch's fused kernels for attention AND LayerNorm (faster)

    def __post_init__(self) -> None:
        check_positive_int(**{name: getattr(self, name) for name in _SIZE_FIELDS})
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "each head gets d_model // n_heads features"
            )
        if self.positional not in POSITIONAL_KINDS:
            raise ValueError(
                f"positional must be one of {POSITIONAL_KINDS}, got {self.positional!r}"
            )
        if self.positional == "sinusoidal" and self.d_model % 2 != 0:
            raise ValueError(
                f"sinusoidal positions need an even d_model, got d_model={self.d_model}"
            )
        check_probability(self.dropout)
        for name in ("norm_first", "residual", "tie_embeddings", "fused_attention"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        smallest = min(self.src_vocab_size, self.tgt_vocab_size)
        if not is_int(self.pad_id) or not 0 <= self.pad_id < smallest:
            raise ValueError(
                f"pad_id={self.pad_id!r} must be a token id of both vocabularies, in [0, {smallest})"
            )

    @property
    def d_head(self) -> int:
        """Features per attention head."""
        return self.d_model // self.n_heads

    @classmethod
    def tiny(cls, src_vocab_size: int, tgt_vocab_size: int) -> ModelConfig:
        """A small model (about 240k parameters with a character vocabulary) for CPU lessons."""
        return cls(
            src_vocab_size,
            tgt_vocab_size,
            d_model=64,
            n_heads=4,
            n_encoder_layers=2,
            n_decoder_layers=2,
            d_ff=256,
            dropout=0.1,
            max_len=64,
        )

    @classmethod
    def course(cls, src_vocab_size: int, tgt_vocab_size: int) -> ModelConfig:
        """The course checkpoint's model (presets cpu-smoke and cpu-course): 2.5M parameters
        with a 6,000-token vocabulary, trained on 2 CPU cores."""
        return cls(
            src_vocab_size,
            tgt_vocab_size,
            d_model=128,
            n_heads=4,
            n_encoder_layers=2,
            n_decoder_layers=2,
            d_ff=512,
            dropout=0.1,
            max_len=128,  # subwords; Multi30k's longest sentences are about 60
            tie_embeddings=True,
            fused_attention=True,
        )

    @classmethod
    def base(cls, src_vocab_size: int, tgt_vocab_size: int) -> ModelConfig:
        """The paper's base model as the gpu-base preset trains it on Multi30k: 6 + 6 layers,
        d_model 512, dropout 0.3 (29,000 sentence pairs overfit the paper's 0.1)."""
        return cls(
            src_vocab_size,
            tgt_vocab_size,
            d_model=512,
            n_heads=8,
            n_encoder_layers=6,
            n_decoder_layers=6,
            d_ff=2048,
            dropout=0.3,
            max_len=128,
            tie_embeddings=True,
            fused_attention=True,
        )


def source_mask(src: Tensor, pad_id: int) -> Tensor:
    """Return the ``(B, 1, 1, S)`` mask that hides padded source tokens from every query."""
    return padding_mask(src != pad_id)  # (B, 1, 1, S)


def target_mask(tgt: Tensor, pad_id: int) -> Tensor:
    """Return the ``(B, 1, T, T)`` mask: position t sees positions <= t that are not padding."""
    B, T = tgt.shape
    return causal_mask(T, device=tgt.device) & padding_mask(tgt != pad_id)  # (B, 1, T, T)


def _positional(config: ModelConfig) -> nn.Module:
    """Return the positional encoding of ``config``; each adds positions offset..offset+T-1."""
    if config.positional == "sinusoidal":
        return SinusoidalPositionalEncoding(config.d_model, config.max_len, config.dropout)
    if config.positional == "learned":
        return LearnedPositionalEncoding(config.d_model, config.max_len, config.dropout)
    return NoPositionalEncoding(config.dropout)  # "none": token embeddings only


def _final_norm(config: ModelConfig) -> nn.Module:
    """Pre-LN stacks end in a LayerNorm; Post-LN layers already end in one (see the module doc)."""
    if config.norm_first:
        return LayerNorm(config.d_model, fused=config.fused_attention)
    return nn.Identity()


# The arguments EncoderLayer and DecoderLayer both take, named as in ModelConfig.
_LAYER_OPTIONS = "d_model n_heads d_ff dropout norm_first residual fused_attention".split()


def _layer_options(config: ModelConfig) -> dict[str, Any]:
    """Return the config's values for the arguments ``EncoderLayer`` and ``DecoderLayer`` share."""
    options = {name: getattr(config, name) for name in _LAYER_OPTIONS}
    return options | {"fused_norm": config.fused_attention}  # one switch for both kernels


def _check_tokens(name: str, tokens: Tensor) -> None:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"{name} must be a (B, length) tensor of token ids, got {shape}")


class Encoder(nn.Module):
    """Embed the source tokens, add positions, run the encoder layers.

    Shapes: src (B, S) long, mask broadcastable to (B, H, S, S) -> memory (B, S, C).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed = TokenEmbedding(config.src_vocab_size, config.d_model, config.pad_id)
        self.positional = _positional(config)
        self.layers = nn.ModuleList(
            EncoderLayer(**_layer_options(config)) for _ in range(config.n_encoder_layers)
        )
        self.norm = _final_norm(config)

    def forward(self, src: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.positional(self.embed(src))  # (B, S, C)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)  # (B, S, C)

    def forward_with_weights(
        self, src: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """Return the memory and each layer's self-attention weights (B, H, S, S)."""
        x = self.positional(self.embed(src))  # (B, S, C)
        weights = []
        for layer in self.layers:
            x, layer_weights = layer.forward_with_weights(x, mask)
            weights.append(layer_weights)
        return self.norm(x), weights


class Decoder(nn.Module):
    """Embed the target tokens, add positions, run the decoder layers over the memory.

    Shapes: tgt (B, T) long, memory (B, S, C), self_mask broadcastable to (B, H, T, T),
    memory_mask broadcastable to (B, H, T, S) -> hidden states (B, T, C).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed = TokenEmbedding(config.tgt_vocab_size, config.d_model, config.pad_id)
        self.positional = _positional(config)
        self.layers = nn.ModuleList(
            DecoderLayer(**_layer_options(config)) for _ in range(config.n_decoder_layers)
        )
        self.norm = _final_norm(config)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        self_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        x = self.positional(self.embed(tgt))  # (B, T, C)
        for layer in self.layers:
            x = layer(x, memory, self_mask, memory_mask)
        return self.norm(x)  # (B, T, C)

    def forward_with_weights(
        self,
        tgt: Tensor,
        memory: Tensor,
        self_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Return the hidden states and each layer's self- (B, H, T, T) and cross-attention (B, H, T, S) weights."""
        x = self.positional(self.embed(tgt))  # (B, T, C)
        self_weights, cross_weights = [], []
        for layer in self.layers:
            x, layer_self, layer_cross = layer.forward_with_weights(
                x, memory, self_mask, memory_mask
            )
            self_weights.append(layer_self)
            cross_weights.append(layer_cross)
        return self.norm(x), self_weights, cross_weights

    def start_cache(self, memory: Tensor, length: int = 0) -> tuple[KVCache, ...]:
        """Return one empty ``KVCache`` per layer, holding the memory's keys and values
        (with ``length`` preallocated target positions for ``write_step``)."""
        return tuple(layer.start_cache(memory, length) for layer in self.layers)

    def step(
        self,
        tgt: Tensor,
        caches: tuple[KVCache, ...],
        offset: int,
        self_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> tuple[Tensor, tuple[KVCache, ...]]:
        """Run the decoder on new target tokens only, reusing each layer's cached keys and values.

        Shapes: tgt (B, T) the new tokens, at positions offset..offset+T-1 after the ``offset``
        cached ones; self_mask broadcastable to (B, H, T, offset + T); memory_mask to
        (B, H, T, S) -> hidden states (B, T, C) and the grown caches.
        """
        x = self.positional(self.embed(tgt), offset=offset)  # (B, T, C)
        grown = []
        for layer, cache in zip(self.layers, caches, strict=True):
            x, cache = layer.step(x, cache, self_mask, memory_mask)
            grown.append(cache)
        return self.norm(x), tuple(grown)  # (B, T, C)

    def write_step(
        self,
        tgt: Tensor,
        caches: tuple[KVCache, ...],
        position: Tensor,
        self_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        """``step`` for one token per sequence at ``position`` (1,), writing the preallocated caches.

        Shapes: tgt (B, 1); self_mask broadcastable to (B, H, 1, L) -> hidden states (B, 1, C).
        """
        x = self.positional.at(self.embed(tgt), position)  # (B, 1, C)
        for layer, cache in zip(self.layers, caches, strict=True):
            x = layer.write_step(x, cache, position, self_mask, memory_mask)
        return self.norm(x)  # (B, 1, C)


class Transformer(nn.Module):
    """The encoder-decoder Transformer: source and target tokens in, next-token logits out.

    Shapes: src (B, S) long, tgt (B, T) long -> logits (B, T, V) with V = tgt_vocab_size.

    Masks are built from the tokens: padded source tokens are hidden from every attention,
    and target position t sees only the non-padded target positions up to t.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.lm_head = nn.Linear(config.d_model, config.tgt_vocab_size)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.decoder.embed.embedding.weight

    def _init_weights(self) -> None:
        """Xavier-uniform matrices and zero biases; embeddings with std d_model ** -0.5.

        The embedding scale makes ``TokenEmbedding``'s sqrt(d_model) factor give unit
        variance, and keeps tied logits near unit scale.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.config.d_model**-0.5)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        return self.decode(tgt, self.encode(src), src)  # (B, T, V)

    def encode(self, src: Tensor) -> Tensor:
        """Run the encoder. Shapes: src (B, S) -> memory (B, S, C)."""
        _check_tokens("src", src)
        return self.encoder(src, source_mask(src, self.config.pad_id))  # (B, S, C)

    def decode(self, tgt: Tensor, memory: Tensor, src: Tensor) -> Tensor:
        """Run the decoder and the output layer; src gives the memory's padding.

        Shapes: tgt (B, T), memory (B, S, C), src (B, S) -> logits (B, T, V).
        """
        self._check_pair(src, tgt)
        if memory.shape[:2] != src.shape:
            raise ValueError(
                f"memory {tuple(memory.shape)} does not match src {tuple(src.shape)}: pass the "
                "same src that produced the memory with encode(src)"
            )
        pad_id = self.config.pad_id
        x = self.decoder(tgt, memory, target_mask(tgt, pad_id), source_mask(src, pad_id))
        return self.lm_head(x)  # (B, T, V)

    def start_cache(self, memory: Tensor, src: Tensor) -> DecoderCache:
        """Prepare cached decoding: project the memory's keys and values once per layer.

        Shapes: memory (B, S, C) from ``encode(src)``, src (B, S) -> a cache with no target
        positions; feed it to ``decode_step`` with the first target tokens (usually BOS).
        """
        _check_tokens("src", src)
        if memory.shape[:2] != src.shape:
            raise ValueError(
                f"memory {tuple(memory.shape)} does not match src {tuple(src.shape)}: pass the "
                "same src that produced the memory with encode(src)"
            )
        keep = src.new_zeros(src.shape[0], 0, dtype=torch.bool)  # (B, 0): no target yet
        memory_mask = source_mask(src, self.config.pad_id)  # (B, 1, 1, S)
        return DecoderCache(self.decoder.start_cache(memory), memory_mask, keep)

    def decode_step(self, tgt: Tensor, cache: DecoderCache) -> tuple[Tensor, DecoderCache]:
        """Decode only the new target tokens, reusing the cache; return their logits and the new cache.

        Shapes: tgt (B, T) new tokens (usually T = 1: the token chosen at the last step)
        -> logits (B, T, V), equal to the last T positions of ``decode`` on the whole prefix.
        """
        _check_tokens("tgt", tgt)
        B, T = tgt.shape
        if B != cache.keep.shape[0]:
            raise ValueError(f"tgt holds {B} sequences but the cache {cache.keep.shape[0]}")
        keep = torch.cat([cache.keep, tgt != self.config.pad_id], dim=1)  # (B, t + T)
        total = keep.shape[1]
        causal = causal_mask(total, device=tgt.device)[total - T :]  # (T, t + T): rows of the new
        self_mask = causal & padding_mask(keep)  # (B, 1, T, t + T)
        x, layers = self.decoder.step(tgt, cache.layers, cache.length, self_mask, cache.memory_mask)
        return self.lm_head(x), DecoderCache(layers, cache.memory_mask, keep)  # (B, T, V)

    def start_static_cache(self, memory: Tensor, src: Tensor, length: int) -> StaticDecoderCache:
        """Prepare cached decoding into buffers of ``length`` target positions, written in place.

        Shapes: memory (B, S, C) from ``encode(src)``, src (B, S) -> a ``StaticDecoderCache``
        at position 0; feed it to ``static_decode_step``, one token per sequence per step.
        """
        check_positive_int(length=length)
        _check_tokens("src", src)
        if memory.shape[:2] != src.shape:
            raise ValueError(
                f"memory {tuple(memory.shape)} does not match src {tuple(src.shape)}: pass the "
                "same src that produced the memory with encode(src)"
            )
        keep = src.new_zeros(src.shape[0], length, dtype=torch.bool)  # (B, L): nothing written
        position = torch.zeros(1, dtype=torch.long, device=src.device)
        layers = self.decoder.start_cache(memory, length)
        return StaticDecoderCache(layers, source_mask(src, self.config.pad_id), keep, position)

    def static_decode_step(self, tgt: Tensor, cache: StaticDecoderCache) -> Tensor:
        """Decode one token per sequence into ``cache`` at its position, then advance it.

        Shapes: tgt (B, 1) -> logits (B, 1, V), equal to ``decode_step``'s. The buffers are
        written in place and no shape changes, so the step can be captured as a CUDA graph. It
        checks nothing that would read a value back: the caller takes at most
        ``cache.length`` steps.
        """
        cache.keep.index_copy_(1, cache.position, tgt != self.config.pad_id)  # (B, L)
        # Positions not written yet are False in keep, which makes the mask causal too.
        self_mask = padding_mask(cache.keep)  # (B, 1, 1, L)
        x = self.decoder.write_step(tgt, cache.layers, cache.position, self_mask, cache.memory_mask)
        cache.position.add_(1)
        return self.lm_head(x)  # (B, 1, V)

    @torch.no_grad()
    def attention_maps(self, src: Tensor, tgt: Tensor) -> dict[str, list[Tensor]]:
        """Return every layer's attention weights, computed in eval mode without gradients.

        Keys "encoder" (B, H, S, S), "decoder_self" (B, H, T, T) and "cross" (B, H, T, S),
        each a list with one tensor per layer. The model's train/eval mode is restored.
        """
        self._check_pair(src, tgt)
        with eval_mode(self):
            src_mask = source_mask(src, self.config.pad_id)
            memory, encoder = self.encoder.forward_with_weights(src, src_mask)
            tgt_mask = target_mask(tgt, self.config.pad_id)
            _, decoder_self, cross = self.decoder.forward_with_weights(
                tgt, memory, tgt_mask, src_mask
            )
        return {"encoder": encoder, "decoder_self": decoder_self, "cross": cross}

    @property
    def device(self) -> torch.device:
        """The device the weights are on (where ``greedy_decode`` and ``fit`` move the inputs)."""
        return self.lm_head.weight.device

    def num_parameters(self) -> int:
        """Count the trainable numbers, a tied matrix once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @staticmethod
    def _check_pair(src: Tensor, tgt: Tensor) -> None:
        _check_tokens("src", src)
        _check_tokens("tgt", tgt)
        if src.shape[0] != tgt.shape[0]:
            raise ValueError(
                f"src and tgt must hold the same number of sequences, got {src.shape[0]} and "
                f"{tgt.shape[0]}"
            )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run a ``with`` block with ``model`` in eval mode (no dropout), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
