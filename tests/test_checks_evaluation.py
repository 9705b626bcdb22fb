"""Lesson 10's BLEU check: planted bugs are named,
other correct implementations pass."""

from __future__ import annotations

from collections import Counter

from check_helpers import planted_bug_tests

from tfx_course import checks
from tfx_course.evaluation import clipped_ngram_matches

# --- ngram_matches --------------------------------------------------------------------


def _grams(t, n, *, drop_last=False):
    stop = len(t) - n + (0 if drop_last else 1)
    return [tuple(t[i : i + n]) for i in range(stop)]


def _ng(hyp, ref, n, *, clip=True, unique=False, total_ref=False, drop_last=False):
    h, r = _grams(hyp, n, drop_last=drop_last), _grams(ref, n, drop_last=drop_last)
    if unique:
        matches = len(set(h) & set(r))
    elif clip:
        matches = sum((Counter(h) & Counter(r)).values())
    else:
        matches = sum(g in r for g in h)
    return matches, len(r) if total_ref else len(h)


def _ng_min(hyp, ref, n):
    h, r = Counter(zip(*[hyp[i:] for i in range(n)], strict=False)), Counter(zip(*[ref[i:] for i in range(n)], strict=False))  # fmt: skip
    return sum(min(c, r[g]) for g, c in h.items()), sum(h.values())


def _ng_strings(hyp, ref, n):
    def grams(t):
        return [" ".join(t[i : i + n]) for i in range(max(0, len(t) - n + 1))]

    h, r = grams(hyp), grams(ref)
    left = Counter(r)
    matches = 0
    for g in h:
        if left[g] > 0:
            left[g] -= 1
            matches += 1
    return matches, len(h)


def _ng_floats(hyp, ref, n):
    m, t = clipped_ngram_matches(hyp, ref, n)
    return float(m), float(t)


BUGS = {
    "ngram_matches": [
        (lambda h, r, n: _ng(h, r, n, clip=False), "not clipped"),
        (lambda h, r, n: _ng(h, r, n, unique=True), "not each distinct n-gram once"),
        (lambda h, r, n: _ng(h, r, n, total_ref=True), "not in the reference"),
        (lambda h, r, n: _ng(h, r, n, drop_last=True), "missed the last n-gram"),
        (lambda h, r, n: _ng(h, r, n)[0], "pair (matches, total)"),
        (lambda h, r, n: (0.5, 1), "whole numbers"),
    ],
}

ALTERNATIVES = {
    "ngram_matches": [_ng, _ng_min, _ng_strings, _ng_floats],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)
