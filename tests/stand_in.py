"""Stand-ins for the course's Transformer in the training and decoding tests.

``StandIn`` is a tiny seq2seq model on torch's own Transformer layers; ``PrefixDecoding`` gives
any model with ``encode`` and ``decode`` the cache methods of ``tfx_course.decoding``'s
``DecodableModel`` by re-decoding the whole prefix, so scripted models run through both paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class PrefixCache:
    """A stand-in KV cache: the memory, the source and the target prefix so far."""

    memory: Tensor
    src: Tensor
    tokens: Tensor  # (B, t)

    def reorder(self, index: Tensor, memory: bool = True) -> PrefixCache:
        def pick(t: Tensor, moves: bool = True) -> Tensor:
            return t.index_select(0, index) if moves else t

        return PrefixCache(pick(self.memory, memory), pick(self.src, memory), pick(self.tokens))


class PrefixDecoding:
    """``start_cache`` and ``decode_step`` for a model with ``encode`` and ``decode`` only."""

    device = torch.device("cpu")

    def start_cache(self, memory: Tensor, src: Tensor) -> PrefixCache:
        return PrefixCache(memory, src, src.new_zeros(src.shape[0], 0))

    def decode_step(self, tgt: Tensor, cache: PrefixCache) -> tuple[Tensor, PrefixCache]:
        tokens = torch.cat([cache.tokens, tgt], dim=1)  # (B, t + T)
        logits = self.decode(tokens, cache.memory, cache.src)[:, -tgt.shape[1] :]  # (B, T, V)
        return logits, PrefixCache(cache.memory, cache.src, tokens)


@dataclass(frozen=True)
class StandInConfig:
    vocab_size: int
    d_model: int = 16
    max_len: int = 16
    dropout: float = 0.0
    pad_id: int = 0
    position_std: float = 0.1  # scale of the learned position table at initialisation


class StandIn(PrefixDecoding, nn.Module):
    """A tiny seq2seq model on torch's own Transformer layers, with the course model's interface."""

    def __init__(self, config: StandInConfig) -> None:
        super().__init__()
        self.config = config
        d, v = config.d_model, config.vocab_size
        self.src_embedding, self.tgt_embedding = nn.Embedding(v, d), nn.Embedding(v, d)
        self.positions = nn.Parameter(config.position_std * torch.randn(config.max_len, d))
        layer = dict(
            d_model=d, nhead=4, dim_feedforward=32, dropout=config.dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), 1, enable_nested_tensor=False)  # fmt: skip
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), 1)
        self.lm_head = nn.Linear(d, v)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def encode(self, src):
        x = self.src_embedding(src) + self.positions[: src.shape[1]]
        return self.encoder(x, src_key_padding_mask=src == self.config.pad_id)

    def decode(self, tgt, memory, src):
        T = tgt.shape[1]
        blocked = torch.ones(T, T, dtype=torch.bool).triu(1)  # torch's polarity: True = blocked
        x = self.tgt_embedding(tgt) + self.positions[:T]
        x = self.decoder(x, memory, tgt_mask=blocked, tgt_key_padding_mask=tgt == self.config.pad_id,
                         memory_key_padding_mask=src == self.config.pad_id)  # fmt: skip
        return self.lm_head(x)

    def forward(self, src, tgt):
        return self.decode(tgt, self.encode(src), src)
