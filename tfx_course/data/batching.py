"""Padding and batching for sequence-to-sequence training with teacher forcing.

A target ``y`` becomes two rows that differ by one position: the decoder reads
``tgt_in = BOS y`` and learns to predict ``tgt_out = y EOS``, one token ahead.

Shapes: B batch, S source length, T target length.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tfx_course.data.tokenizers import PAD_ID, Tokenizer
from tfx_course.validation import check_positive_int

__all__ = ["Seq2SeqBatch", "pad_sequences", "make_batch", "make_batches"]


@dataclass(frozen=True)
class Seq2SeqBatch:
    """One batch of padded token ids.

    Shapes:
        src: (B, S) source ids, tgt_in: (B, T) decoder input (BOS y), tgt_out: (B, T) labels
        (y EOS), all padded with the pad id.
    """

    src: Tensor
    tgt_in: Tensor
    tgt_out: Tensor

    def __post_init__(self) -> None:
        for name in ("src", "tgt_in", "tgt_out"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.dim() != 2 or t.dtype != torch.long:
                what = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"Seq2SeqBatch.{name} must be a (B, L) LongTensor, got {what}")
        if self.tgt_in.shape != self.tgt_out.shape:
            raise ValueError(
                f"tgt_in {tuple(self.tgt_in.shape)} and tgt_out {tuple(self.tgt_out.shape)} "
                "must have the same shape (tgt_out is tgt_in shifted by one)"
            )
        if self.src.shape[0] != self.tgt_in.shape[0]:
            raise ValueError(
                f"src has {self.src.shape[0]} rows but the target has {self.tgt_in.shape[0]}"
            )

    def __len__(self) -> int:
        return self.src.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Seq2SeqBatch:
        """Return the batch on ``device`` (``non_blocking``: from pinned memory, asynchronously)."""
        src, tgt_in, tgt_out = (
            t.to(device, non_blocking=non_blocking) for t in (self.src, self.tgt_in, self.tgt_out)
        )
        return Seq2SeqBatch(src, tgt_in, tgt_out)

    def pin_memory(self) -> Seq2SeqBatch:
        """Return the batch in page-locked memory, which a GPU copies from without waiting."""
        return Seq2SeqBatch(
            self.src.pin_memory(), self.tgt_in.pin_memory(), self.tgt_out.pin_memory()
        )

    def num_tokens(self, pad_id: int = PAD_ID) -> int:
        """Count the label tokens that are not padding (what the loss averages over)."""
        return int((self.tgt_out != pad_id).sum())


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> Tensor:
    """Stack id lists of different lengths into one right-padded LongTensor.

    Shapes:
        returns (B, L) with L the longest sequence.
    """
    if len(seqs) == 0:
        raise ValueError("pad_sequences got no sequences")
    longest = max(len(s) for s in seqs)
    if longest == 0:
        raise ValueError("pad_sequences got only empty sequences")
    out = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def make_batch(
    pairs: Sequence[tuple[str, str]],
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    pad_id: int = PAD_ID,
) -> Seq2SeqBatch:
    """Encode (source, target) text pairs into one padded batch.

    Both sides are encoded with their special tokens (BOS ... EOS); the target's ids are
    split into ``tgt_in`` (all but the last) and ``tgt_out`` (all but the first).
    """
    if len(pairs) == 0:
        raise ValueError("make_batch got no pairs")
    src = [src_tokenizer.encode(x, add_special=True) for x, _ in pairs]
    tgt = [tgt_tokenizer.encode(y, add_special=True) for _, y in pairs]
    if min(len(t) for t in tgt) < 2:
        raise ValueError(
            "the target tokenizer must add BOS and EOS (encode(..., add_special=True))"
        )
    return Seq2SeqBatch(
        src=pad_sequences(src, pad_id),
        tgt_in=pad_sequences([t[:-1] for t in tgt], pad_id),
        tgt_out=pad_sequences([t[1:] for t in tgt], pad_id),
    )


def make_batches(
    pairs: Sequence[tuple[str, str]],
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    pad_id: int = PAD_ID,
) -> list[Seq2SeqBatch]:
    """Split ``pairs`` into padded batches of ``batch_size`` (the last may be smaller).

    ``shuffle`` mixes the pairs first with its own generator seeded by ``seed``, so the
    batches are the same on every run and the global random state is left alone.
    """
    check_positive_int(batch_size=batch_size)
    order = list(range(len(pairs)))
    if shuffle:
        random.Random(seed).shuffle(order)
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [make_batch([pairs[j] for j in c], src_tokenizer, tgt_tokenizer, pad_id) for c in chunks]
