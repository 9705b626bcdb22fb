"""Checks for lesson 08 (tokenization): the two steps of byte-pair encoding, counting symbol
pairs and merging one pair.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from tfx_course.checks.core import (
    CheckResult,
    Fail,
    call,
    run_check,
)
from tfx_course.data.bpe import END_OF_WORD, merge_pair, pair_counts

__all__ = [
    "check_pair_counts",
    "check_merge_pair",
]

E = END_OF_WORD

# --- BPE: counting pairs ------------------------------------------------------------

_CORPUS = {
    ("l", "o", "w", E): 5,
    ("l", "o", "w", "e", "r", E): 2,
    ("n", "e", "w", "e", "s", "t", E): 6,
    ("w", "i", "d", "e", "s", "t", E): 3,
    ("a", "a", "a", E): 2,  # ("a", "a") occurs twice in this word
}


def _pairs_unweighted(corpus: Mapping[tuple[str, ...], int]) -> Counter:
    return pair_counts(dict.fromkeys(corpus, 1))


def _pairs_once_per_word(corpus: Mapping[tuple[str, ...], int]) -> Counter:
    counts: Counter = Counter()
    for symbols, freq in corpus.items():
        for pair in set(zip(symbols, symbols[1:], strict=False)):
            counts[pair] += freq
    return counts


def _pairs_without_last(corpus: Mapping[tuple[str, ...], int]) -> Counter:
    return pair_counts({symbols[:-1]: freq for symbols, freq in corpus.items()})


_PAIR_BUGS: dict[str, Callable[[Mapping[tuple[str, ...], int]], Counter]] = {
    "every pair counts its word's frequency, not 1: add freq for each occurrence": _pairs_unweighted,
    "a pair that occurs twice in a word counts twice (('a', 'a') in a a a </w>); do not "
    "deduplicate a word's pairs": _pairs_once_per_word,
    "missed the last pair of each word: a word of n symbols has n - 1 adjacent pairs, the last "
    "one ends with </w>": _pairs_without_last,
}


def _as_counts(value: Any, what: str) -> dict[tuple[str, str], int]:
    if not isinstance(value, Mapping):
        raise Fail(f"{what} returned a {type(value).__name__}; return a dict (or Counter) "
                   "from pair to count")  # fmt: skip
    counts = {}
    for key, count in value.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(s, str) for s in key)):
            raise Fail(f"{what} has the key {key!r}; keys must be pairs of symbols, e.g. ('l', 'o')")  # fmt: skip
        if isinstance(count, bool) or not isinstance(count, int | float) or count != int(count):
            raise Fail(f"{what} maps {key!r} to {count!r}; counts must be whole numbers")
        if count:
            counts[key] = int(count)
    return counts


def _pair_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    corpus = dict(_CORPUS)
    what = "pair_counts(corpus)"
    got = call(what, fn, corpus, timeout=timeout)
    if corpus != _CORPUS:
        raise Fail("pair_counts changed the corpus it was given; count without modifying it")
    got = _as_counts(got, what)
    expected = dict(pair_counts(corpus))
    if got == expected:
        return "counts every adjacent pair, weighted by the word's frequency, </w> included"
    for message, variant in _PAIR_BUGS.items():
        if got == dict(variant(corpus)):
            raise Fail(message)
    wrong = sorted(k for k in set(got) | set(expected) if got.get(k, 0) != expected.get(k, 0))
    pair = wrong[0]
    raise Fail(f"the pair {pair!r} has count {got.get(pair, 0)}, expected {expected.get(pair, 0)}")


def check_pair_counts(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(corpus) -> {pair: count}``: adjacent symbol pairs weighted by word counts."""
    return run_check("pair_counts", lambda: _pair_steps(fn, timeout))


# --- BPE: merging one pair ----------------------------------------------------------

_MERGE_CASES: list[tuple[tuple[str, ...], tuple[str, str]]] = [
    (("l", "o", "w", E), ("l", "o")),
    (("e", "s", "t", E), ("t", E)),
    (("a", "b", "a", "b", E), ("a", "b")),
    (("a", "a", "a", E), ("a", "a")),
    (("n", "e", "w", E), ("l", "o")),
    (("lo", "w", "e", "r", E), ("lo", "w")),
]


def _merge_first_only(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    for i in range(len(symbols) - 1):
        if (symbols[i], symbols[i + 1]) == pair:
            return (*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :])
    return symbols


def _merge_from_right(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = list(symbols), len(symbols) - 2
    while i >= 0:
        if (out[i], out[i + 1]) == pair:
            out[i : i + 2] = [out[i] + out[i + 1]]
            i -= 2
        else:
            i -= 1
    return tuple(out)


def _merge_overlapping(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out = []  # moves on by one symbol after a merge: the pair's second symbol is used again
    for i, symbol in enumerate(symbols):
        if i + 1 < len(symbols) and (symbol, symbols[i + 1]) == pair:
            out.append(symbol + symbols[i + 1])
        else:
            out.append(symbol)
    return tuple(out)


_MERGE_BUGS: dict[str, Callable[[tuple[str, ...], tuple[str, str]], tuple[str, ...]]] = {
    "only the first occurrence was merged: replace every occurrence, left to right "
    "(a b a b </w> with ('a', 'b') gives ab ab </w>)": _merge_first_only,
    "scan from the left: a a a </w> with ('a', 'a') gives aa a </w>, not a aa </w>": _merge_from_right,
    "after merging a pair, continue after it: its second symbol is used up (l o w </w> with "
    "('l', 'o') gives lo w </w>; occurrences must not overlap)": _merge_overlapping,
}


def _merge_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    got = {}
    for symbols, pair in _MERGE_CASES:
        what = f"merge_pair({symbols!r}, {pair!r})"
        value = call(what, fn, symbols, pair, timeout=timeout)
        if not isinstance(value, tuple | list):
            raise Fail(f"{what} returned a {type(value).__name__}; return a tuple of symbols")
        if not all(isinstance(s, str) for s in value):
            raise Fail(f"{what} returned {value!r}; every symbol must be a string: join the pair "
                       "into one string, 'l' + 'o' = 'lo'")  # fmt: skip
        got[(symbols, pair)] = tuple(value)
    if all(value == merge_pair(*case) for case, value in got.items()):
        return "merges every occurrence, left to right, without overlaps; other pairs untouched"
    for message, variant in _MERGE_BUGS.items():
        if all(value == variant(*case) for case, value in got.items()):
            raise Fail(message)
    for (symbols, pair), value in got.items():
        if "".join(value) != "".join(symbols):
            raise Fail(f"merge_pair({symbols!r}, {pair!r}) returned {value!r}: the symbols must "
                       "still spell the word: use each symbol once, and join a pair with no "
                       "separator, 'l' + 'o' = 'lo'")  # fmt: skip
    (symbols, pair), value = next((c, v) for c, v in got.items() if v != merge_pair(*c))
    raise Fail(f"merge_pair({symbols!r}, {pair!r}) returned {value!r}, expected "
               f"{merge_pair(symbols, pair)!r}")  # fmt: skip


def check_merge_pair(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(symbols, pair) -> symbols``: every occurrence merged, left to right."""
    return run_check("merge_pair", lambda: _merge_steps(fn, timeout))
