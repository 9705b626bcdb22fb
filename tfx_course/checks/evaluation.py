"""Checks for lesson 10 (evaluation): BLEU's clipped n-gram matches."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from tfx_course.checks.core import (
    CheckResult,
    Fail,
    call,
    run_check,
)
from tfx_course.evaluation import clipped_ngram_matches

__all__ = [
    "check_ngram_matches",
]


# --- BLEU's clipped n-gram matches --------------------------------------------------

_NGRAM_CASES: list[tuple[str, str, int]] = [
    ("the the the the the the the", "the cat is on the mat", 1),  # the BLEU paper's example
    ("the cat the cat is on the mat", "the cat is on the mat", 2),
    ("a dog runs in the park", "a dog is running in the park", 1),
    ("a dog runs in the park", "a dog is running in the park", 2),
    ("a dog runs in the park", "a dog is running in the park", 3),
    ("two men play", "two men are playing soccer", 4),  # shorter than n: no 4-grams
]


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


_NGRAM_BUGS: dict[str, Callable[[list[str], list[str], int], tuple[int, int]]] = {
    "matches are not clipped: an n-gram counts at most as often as it occurs in the reference "
    "(the x7 against one 'the cat ...' reference scores 2 matches, not 7)": lambda h, r, n: (
        sum(g in set(_ngrams(r, n)) for g in _ngrams(h, n)),
        len(_ngrams(h, n)),
    ),
    "count every occurrence of a hypothesis n-gram (up to the reference's count), not each "
    "distinct n-gram once": lambda h, r, n: (
        len(set(_ngrams(h, n)) & set(_ngrams(r, n))),
        len(_ngrams(h, n)),
    ),
    "total is the number of n-grams in the hypothesis, not in the reference": lambda h, r, n: (
        clipped_ngram_matches(h, r, n)[0],
        len(_ngrams(r, n)),
    ),
    "missed the last n-gram: a sentence of L tokens has L - n + 1 n-grams": lambda h, r, n: (
        sum((Counter(_ngrams(h[:-1], n)) & Counter(_ngrams(r[:-1], n))).values()),
        max(0, len(h) - n),
    ),
}


def _ngram_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    got = {}
    for hyp, ref, n in _NGRAM_CASES:
        h, r = hyp.split(), ref.split()
        what = f"ngram_matches({hyp!r}.split(), {ref!r}.split(), n={n})"
        value = call(what, fn, list(h), list(r), n, timeout=timeout)
        if not (isinstance(value, tuple | list) and len(value) == 2):
            raise Fail(f"{what} should return a pair (matches, total), got {type(value).__name__}")
        try:
            pair = tuple(int(v) for v in value)
        except (TypeError, ValueError):
            raise Fail(f"{what} returned {value!r}; matches and total are whole numbers") from None
        if any(p != v for p, v in zip(pair, value, strict=True)):
            raise Fail(f"{what} returned {value!r}; matches and total are whole numbers")
        got[(hyp, ref, n)] = pair
    expected = {
        case: clipped_ngram_matches(case[0].split(), case[1].split(), case[2]) for case in got
    }
    if got == expected:
        return (
            "clipped matches and hypothesis n-gram totals, as BLEU's modified precision counts them"
        )
    for message, variant in _NGRAM_BUGS.items():
        if all(got[c] == variant(c[0].split(), c[1].split(), c[2]) for c in got):
            raise Fail(message)
    case = next(c for c in got if got[c] != expected[c])
    raise Fail(f"ngram_matches({case[0]!r}, {case[1]!r}, n={case[2]}) returned {got[case]}, "
               f"expected {expected[case]} (matches, total)")  # fmt: skip


def check_ngram_matches(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(hyp_tokens, ref_tokens, n) -> (matches, total)``, BLEU's clipped counts."""
    return run_check("ngram_matches", lambda: _ngram_steps(fn, timeout))
