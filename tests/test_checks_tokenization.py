"""Lesson 08's checks (tokenization): planted bugs are named,
other correct implementations pass."""

from __future__ import annotations

from collections import Counter, defaultdict

from check_helpers import planted_bug_tests

from tfx_course import checks
from tfx_course.data.bpe import merge_pair, pair_counts

# --- pair_counts ----------------------------------------------------------------------


def _pairs(corpus, *, weighted=True, unique=False, last=True, as_string=False):
    counts = Counter()
    for symbols, freq in corpus.items():
        pairs = list(zip(symbols, symbols[1:], strict=False))
        if not last:
            pairs = pairs[:-1]
        for pair in set(pairs) if unique else pairs:
            counts["".join(pair) if as_string else pair] += freq if weighted else 1
    return counts


def _pairs_defaultdict(corpus):
    counts = defaultdict(int)
    for symbols, freq in corpus.items():
        for i in range(len(symbols) - 1):
            counts[symbols[i], symbols[i + 1]] += freq
    return dict(counts)


def _pairs_sum(corpus):
    keys = {p for s in corpus for p in zip(s, s[1:], strict=False)}
    return {
        k: sum(f * list(zip(s, s[1:], strict=False)).count(k) for s, f in corpus.items())
        for k in keys
    }


def _pairs_mutating(corpus):
    corpus.clear()
    return {}


# --- merge_pair -----------------------------------------------------------------------


def _merge(symbols, pair, *, first_only=False, overlap=False, sep=""):
    out, i = [], 0
    merged = False
    while i < len(symbols):
        here = i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair
        if here and not (first_only and merged):
            out.append(symbols[i] + sep + symbols[i + 1])
            merged = True
            i += 1 if overlap else 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def _merge_right(symbols, pair):
    if len(symbols) < 2:
        return tuple(symbols)
    if (symbols[-2], symbols[-1]) == pair:
        return (*_merge_right(symbols[:-2], pair), symbols[-2] + symbols[-1])
    return (*_merge_right(symbols[:-1], pair), symbols[-1])


def _merge_recursive(symbols, pair):
    if len(symbols) < 2:
        return tuple(symbols)
    if (symbols[0], symbols[1]) == pair:
        return (symbols[0] + symbols[1], *_merge_recursive(symbols[2:], pair))
    return (symbols[0], *_merge_recursive(symbols[1:], pair))


def _merge_list(symbols, pair):
    out, skip = [], False
    for i, symbol in enumerate(symbols):
        if skip:
            skip = False
        elif i + 1 < len(symbols) and (symbol, symbols[i + 1]) == pair:
            out.append(symbol + symbols[i + 1])
            skip = True
        else:
            out.append(symbol)
    return out  # a list is accepted as well as a tuple


def _merge_tuples(symbols, pair):
    return tuple(
        (a, b) if (a, b) == pair else a for a, b in zip(symbols, symbols[1:], strict=False)
    )


BUGS = {
    "pair_counts": [
        (lambda c: _pairs(c, weighted=False), "frequency, not 1"),
        (lambda c: _pairs(c, unique=True), "do not deduplicate"),
        (lambda c: _pairs(c, last=False), "missed the last pair"),
        (lambda c: _pairs(c, as_string=True), "keys must be pairs"),
        (lambda c: list(_pairs(c).items()), "return a dict"),
        (_pairs_mutating, "changed the corpus"),
    ],
    "merge_pair": [
        (lambda s, p: _merge(s, p, first_only=True), "only the first occurrence"),
        (_merge_right, "scan from the left"),
        (lambda s, p: _merge(s, p, overlap=True), "must not overlap"),
        (lambda s, p: _merge(s, p, sep=" "), "no separator"),
        (_merge_tuples, "must be a string"),
        (lambda s, p: "".join(merge_pair(s, p)), "return a tuple"),
    ],
}

ALTERNATIVES = {
    "pair_counts": [_pairs, _pairs_defaultdict, _pairs_sum, lambda c: pair_counts(c)],
    "merge_pair": [_merge, _merge_recursive, _merge_list],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)
