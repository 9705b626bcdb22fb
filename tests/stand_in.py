"""A tiny seq2seq stand-in on torch's own Transformer layers, for the training and decoding tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class StandInConfig:
    vocab_size: int
    d_model: int = 16
    max_len: int = 16
    dropout: float = 0.0
    pad_id: int = 0
    position_std: float = 0.1  # scale of the learned position table at initialisation


class StandIn(nn.Module):
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
