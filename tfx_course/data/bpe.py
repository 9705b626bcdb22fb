"""Byte-pair encoding (BPE) from scratch, small enough to follow by hand.

Sennrich, Haddow and Birch (2016), "Neural Machine Translation of Rare Words with Subword Units":
start from characters, with an end-of-word marker ``</w>`` so that "est" at the end of a word
differs from "est" inside one; then repeatedly count every adjacent pair of symbols over the
corpus (weighted by word frequency) and merge the most frequent pair into one new symbol. The
list of merges, in order, is the tokenizer. Ties go to the pair that sorts first, so the result
never depends on dictionary order.

This is the teaching version: it recounts all pairs at every step, which is fine for a tiny
corpus. ``tfx_course.data.subword`` trains a fast library BPE for real data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

__all__ = [
    "END_OF_WORD",
    "Merge",
    "MergeStep",
    "word_counts",
    "split_word",
    "pair_counts",
    "merge_pair",
    "learn_bpe",
    "merge_history",
    "apply_bpe",
    "format_merge_history",
]

END_OF_WORD = "</w>"
Pair = tuple[str, str]


@dataclass(frozen=True)
class Merge:
    """One learned merge: the ``pair`` of symbols joined, and how often it occurred."""

    pair: Pair
    count: int

    @property
    def merged(self) -> str:
        return self.pair[0] + self.pair[1]


@dataclass(frozen=True)
class MergeStep:
    """The corpus after merge number ``step``: vocabulary size and length in symbols."""

    step: int
    merge: Merge
    vocab_size: int  # initial alphabet (with </w>) + one new symbol per merge, as in the paper
    n_tokens: int  # symbols needed to write the whole corpus (counting repeats)


def word_counts(words_or_texts: Iterable[str] | Mapping[str, int]) -> Counter[str]:
    """Count whitespace-separated words; a mapping is taken as word -> count already."""
    if isinstance(words_or_texts, str):
        raise TypeError("expected a list of texts, not one string; wrap it: [text]")
    if isinstance(words_or_texts, Mapping):
        bad = {w: c for w, c in words_or_texts.items() if c <= 0 or not w or w != w.strip()}
        if bad:
            raise ValueError(f"word counts must be positive and words non-empty, got {bad}")
        return Counter(dict(words_or_texts))
    return Counter(word for text in words_or_texts for word in text.split())


def split_word(word: str) -> tuple[str, ...]:
    """Return the starting symbols of a word: its characters, then ``</w>``."""
    return (*word, END_OF_WORD)


def pair_counts(corpus: Mapping[tuple[str, ...], int]) -> Counter[Pair]:
    """Count every adjacent pair of symbols, each occurrence weighted by its word's count."""
    counts: Counter[Pair] = Counter()
    for symbols, freq in corpus.items():
        for pair in pairwise(symbols):
            counts[pair] += freq
    return counts


def merge_pair(symbols: Sequence[str], pair: Pair) -> tuple[str, ...]:
    """Replace every non-overlapping occurrence of ``pair``, left to right, by one symbol."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def merge_history(
    words_or_texts: Iterable[str] | Mapping[str, int], n_merges: int
) -> list[MergeStep]:
    """Learn up to ``n_merges`` merges and return one ``MergeStep`` per merge, for display.

    Stops early when no pair is left (every word is a single symbol).
    """
    if not isinstance(n_merges, int) or n_merges < 0:
        raise ValueError(f"n_merges must be a non-negative int, got {n_merges!r}")
    corpus = {split_word(word): count for word, count in word_counts(words_or_texts).items()}
    alphabet_size = len({symbol for symbols in corpus for symbol in symbols})
    history = []
    for step in range(1, n_merges + 1):
        pairs = pair_counts(corpus)
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))  # most frequent, then sorted
        corpus = {merge_pair(symbols, best): count for symbols, count in corpus.items()}
        n_tokens = sum(len(symbols) * count for symbols, count in corpus.items())
        merge = Merge(best, pairs[best])
        history.append(MergeStep(step, merge, alphabet_size + step, n_tokens))
    return history


def learn_bpe(words_or_texts: Iterable[str] | Mapping[str, int], n_merges: int) -> list[Merge]:
    """Learn up to ``n_merges`` merges, most frequent pair first, each with its count."""
    return [step.merge for step in merge_history(words_or_texts, n_merges)]


def apply_bpe(word: str, merges: Sequence[Merge | Pair]) -> list[str]:
    """Split one word into subwords by applying the learned merges in the order learned.

    Applying them in order equals the usual "lowest-rank pair first" loop: a merge can only use
    symbols made by earlier merges.
    """
    if not word or word != word.strip() or len(word.split()) != 1:
        raise ValueError(f"apply_bpe takes one word without spaces, got {word!r}")
    symbols = split_word(word)
    for merge in merges:
        symbols = merge_pair(symbols, merge.pair if isinstance(merge, Merge) else tuple(merge))
    return list(symbols)


def format_merge_history(history: Sequence[MergeStep]) -> str:
    """Return the merge history as a text table: step, pair, new symbol, count, sizes."""
    header = f"{'step':>4}  {'pair':<22} {'new symbol':<14} {'count':>6} {'vocab':>6} {'tokens':>7}"
    lines = [header]
    for s in history:
        pair = f"{s.merge.pair[0]!r} + {s.merge.pair[1]!r}"
        lines.append(
            f"{s.step:>4}  {pair:<22} {s.merge.merged!r:<14} {s.merge.count:>6} "
            f"{s.vocab_size:>6} {s.n_tokens:>7}"
        )
    return "\n".join(lines)
