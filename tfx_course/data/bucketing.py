"""Batches by token count with length bucketing, and how much of a batch is padding.

Sentences vary in length, and a padded batch is as wide as its longest row. Random batches
mix short and long sentences and waste much of each tensor on padding. Sorting by length and
cutting the sorted list into batches puts similar lengths together; capping each batch at
``max_tokens`` padded slots (rather than a fixed number of sentences) keeps the memory per step
about constant: many short sentences, or a few long ones. The batch order is then shuffled so
that training does not see lengths in order. This is how fairseq and tensor2tensor batch.

Shapes: B batch, S source length, T target length.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from tfx_course.data.batching import Seq2SeqBatch, pad_sequences
from tfx_course.data.tokenizers import PAD_ID

__all__ = ["PaddingStats", "token_batches", "padding_stats", "make_token_batches"]

IdPair = tuple[Sequence[int], Sequence[int]]


@dataclass(frozen=True)
class PaddingStats:
    """Real tokens against padded slots, over the source and target tensors of all batches."""

    n_batches: int
    real_tokens: int
    padded_tokens: int  # slots in the padded tensors, real tokens included

    @property
    def efficiency(self) -> float:
        """Fraction of the slots that hold real tokens (1.0 = no padding at all)."""
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0


def _size(pair: IdPair) -> int:
    src, tgt = pair
    return max(len(src), len(tgt))


def _greedy_chunks(order: list[int], sizes: list[int], max_tokens: int) -> list[list[int]]:
    """Cut ``order`` into consecutive batches whose rows x longest size stays <= max_tokens."""
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0
    for i in order:
        if batch and (len(batch) + 1) * max(longest, sizes[i]) > max_tokens:
            batches.append(batch)
            batch, longest = [], 0
        batch.append(i)
        longest = max(longest, sizes[i])
    if batch:
        batches.append(batch)
    return batches


def token_batches(
    pairs: Sequence[IdPair],
    max_tokens: int,
    shuffle: bool = True,
    seed: int = 0,
    bucket: bool = True,
) -> list[list[int]]:
    """Group example indices into batches of at most ``max_tokens`` padded slots per tensor.

    ``pairs`` holds (source ids, target ids). An example's size is its longer side, and a
    batch costs rows x largest size, so its padded source and target tensors each hold at most
    ``max_tokens`` slots. With ``bucket`` the examples are sorted by length first (ties in a
    random order when ``shuffle``); without it they are batched in random order, the baseline.
    ``shuffle`` also shuffles the order of the batches. Every index appears exactly once.
    Use a new ``seed`` per epoch (e.g. ``seed + epoch``) for a new order.
    """
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    sizes = [_size(pair) for pair in pairs]
    too_long = [i for i, size in enumerate(sizes) if size > max_tokens]
    if too_long:
        i = too_long[0]
        raise ValueError(
            f"{len(too_long)} example(s) are longer than max_tokens={max_tokens}, e.g. index {i} "
            f"with {sizes[i]} tokens; raise max_tokens or drop examples that long"
        )
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    if shuffle:
        rng.shuffle(order)
    if bucket:  # stable sort: equal sizes keep the shuffled order
        order.sort(key=lambda i: (sizes[i], len(pairs[i][0])))
    batches = _greedy_chunks(order, sizes, max_tokens)
    if shuffle:
        rng.shuffle(batches)
    return batches


def padding_stats(pairs: Sequence[IdPair], batches: Sequence[Sequence[int]]) -> PaddingStats:
    """Count real tokens and padded slots of the source and target tensors of ``batches``."""
    real = padded = 0
    for batch in batches:
        src_lens = [len(pairs[i][0]) for i in batch]
        tgt_lens = [len(pairs[i][1]) for i in batch]
        real += sum(src_lens) + sum(tgt_lens)
        padded += len(batch) * (max(src_lens) + max(tgt_lens))
    return PaddingStats(len(batches), real, padded)


def make_token_batches(
    pairs: Sequence[IdPair],
    max_tokens: int,
    shuffle: bool = True,
    seed: int = 0,
    pad_id: int = PAD_ID,
) -> list[Seq2SeqBatch]:
    """Bucket ``pairs`` with ``token_batches`` and pad each batch into a ``Seq2SeqBatch``.

    Targets must carry BOS ... EOS (``encode(text)`` does): ``tgt_in`` drops the last id and
    ``tgt_out`` the first, as in ``tfx_course.data.batching``.

    Shapes:
        each batch: src (B, S), tgt_in (B, T), tgt_out (B, T), with B x max(S, T + 1) <= max_tokens.
    """
    if any(len(tgt) < 2 for _, tgt in pairs):
        raise ValueError("every target needs BOS and EOS (encode with add_special=True)")
    batches = []
    for batch in token_batches(pairs, max_tokens, shuffle=shuffle, seed=seed):
        src = [pairs[i][0] for i in batch]
        tgt = [pairs[i][1] for i in batch]
        batches.append(
            Seq2SeqBatch(
                src=pad_sequences(src, pad_id),
                tgt_in=pad_sequences([t[:-1] for t in tgt], pad_id),
                tgt_out=pad_sequences([t[1:] for t in tgt], pad_id),
            )
        )
    return batches
