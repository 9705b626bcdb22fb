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

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tfx_course.data.batching import Seq2SeqBatch, pad_sequences
from tfx_course.data.tokenizers import PAD_ID

__all__ = [
    "PaddingStats",
    "token_batches",
    "padding_stats",
    "make_token_batches",
    "bucket_lengths",
    "fixed_shape_batches",
    "make_fixed_shape_batches",
]

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


# Fixed shapes for compiled training. A compiled model (torch.compile) or a captured CUDA graph
# is specialised to the shapes it was built for: every new (rows, length) costs a recompilation.
# So instead of padding each batch to its own longest sentence, pad it to one of a few fixed
# lengths, and give every batch of a length the same number of rows: one shape per length.


def _padded_size(pair: IdPair) -> int:
    """The length both sides are padded to: the source, or the target less one id (tgt_in)."""
    src, tgt = pair
    return max(len(src), len(tgt) - 1)


def bucket_lengths(sizes: Sequence[int], n_buckets: int, multiple: int = 8) -> tuple[int, ...]:
    """Return at most ``n_buckets`` padded lengths, multiples of ``multiple``, covering ``sizes``.

    The lengths minimise the padded slots, the sum over examples of the length each is padded
    to (dynamic programming over the candidate lengths); the last covers the longest size.
    Tensor cores prefer multiples of 8.
    """
    if not isinstance(n_buckets, int) or n_buckets < 1:
        raise ValueError(f"n_buckets must be a positive int, got {n_buckets!r}")
    if not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive int, got {multiple!r}")
    if len(sizes) == 0:
        raise ValueError("bucket_lengths got no sizes")
    top = multiple * math.ceil(max(sizes) / multiple)
    candidates = list(range(multiple, top + 1, multiple))
    fits = [sum(1 for s in sizes if s <= c) for c in candidates]  # examples of length <= c
    # best[j]: (fewest slots, lengths) for the examples up to candidates[j], the longest bucket
    # being candidates[j], with at most k buckets after round k.
    best = [(fits[j] * c, (c,)) for j, c in enumerate(candidates)]
    for _ in range(1, n_buckets):
        best = [
            min([best[j]] + [(best[i][0] + (fits[j] - fits[i]) * c, (*best[i][1], c)) for i in range(j)])
            for j, c in enumerate(candidates)
        ]  # fmt: skip
    return best[-1][1]


def fixed_shape_batches(
    pairs: Sequence[IdPair],
    lengths: Sequence[int],
    max_tokens: int,
    shuffle: bool = True,
    seed: int = 0,
) -> list[tuple[int, list[int | None]]]:
    """Group example indices into batches of fixed shapes: ``(length, rows)`` per batch.

    Each example belongs to the shortest of ``lengths`` that holds it (its source, and its
    target less one id). The examples are taken longest bucket first and cut into batches;
    a batch has the length L of its first example's bucket and exactly ``max_tokens // L``
    rows, so its padded tensors hold at most ``max_tokens`` slots. A batch that crosses into a
    shorter bucket pads those examples to L, so only the very last batch is short of examples:
    it is filled up with ``None``, rows of padding only (no loss, no gradient). Every index
    appears exactly once. ``shuffle`` mixes the examples within each bucket and the batches.
    """
    lengths = sorted(set(lengths))
    if not lengths or lengths[0] < 1 or max_tokens < lengths[-1]:
        raise ValueError(
            f"lengths must be positive and at most max_tokens={max_tokens}, got {list(lengths)}"
        )
    buckets: dict[int, list[int]] = {length: [] for length in lengths}
    for i, pair in enumerate(pairs):
        size = _padded_size(pair)
        if size > lengths[-1]:
            raise ValueError(
                f"example {i} needs {size} positions but the longest bucket is {lengths[-1]}; "
                "add a longer length or drop examples that long"
            )
        buckets[next(length for length in lengths if length >= size)].append(i)
    rng = random.Random(seed)
    queue: list[tuple[int, int]] = []  # (bucket length, index), longest bucket first
    for length in reversed(lengths):
        if shuffle:
            rng.shuffle(buckets[length])
        queue += [(length, i) for i in buckets[length]]
    batches: list[tuple[int, list[int | None]]] = []
    while queue:
        length, rows = queue[0][0], max_tokens // queue[0][0]
        chunk: list[int | None] = [i for _, i in queue[:rows]]
        batches.append((length, chunk + [None] * (rows - len(chunk))))
        queue = queue[rows:]
    if shuffle:
        rng.shuffle(batches)
    return batches


def _pad_rows(seqs: Sequence[Sequence[int] | None], length: int, pad_id: int) -> torch.Tensor:
    """Stack id lists into a (rows, length) tensor; ``None`` becomes a row of padding."""
    out = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    for i, seq in enumerate(seqs):
        if seq:
            out[i, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    return out


def make_fixed_shape_batches(
    pairs: Sequence[IdPair],
    lengths: Sequence[int],
    max_tokens: int,
    shuffle: bool = True,
    seed: int = 0,
    pad_id: int = PAD_ID,
) -> list[Seq2SeqBatch]:
    """Pad ``fixed_shape_batches`` into ``Seq2SeqBatch``es: one tensor shape per length.

    Shapes:
        each batch: src, tgt_in, tgt_out (max_tokens // L, L) for one L of ``lengths``.
    """
    if any(len(tgt) < 2 for _, tgt in pairs):
        raise ValueError("every target needs BOS and EOS (encode with add_special=True)")
    batches = []
    for length, rows in fixed_shape_batches(pairs, lengths, max_tokens, shuffle, seed):
        picked = [None if i is None else pairs[i] for i in rows]
        batches.append(
            Seq2SeqBatch(
                src=_pad_rows([p and p[0] for p in picked], length, pad_id),
                tgt_in=_pad_rows([p and p[1][:-1] for p in picked], length, pad_id),
                tgt_out=_pad_rows([p and p[1][1:] for p in picked], length, pad_id),
            )
        )
    return batches
