"""Checks for lessons 08 and 10: BPE pair counting and merging, the GNMT length penalty, one
step of beam search, and BLEU's clipped n-gram matches.

Shapes: B sentences, K hypotheses kept per sentence (the beam), V vocabulary size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from tfx_course.checks.core import (
    CheckResult,
    Fail,
    call,
    close,
    diagnose,
    expect_tensor,
    run_check,
    shape_str,
)
from tfx_course.data.bpe import END_OF_WORD, merge_pair, pair_counts
from tfx_course.decoding import gnmt_length_penalty
from tfx_course.evaluation import clipped_ngram_matches

__all__ = [
    "check_pair_counts",
    "check_merge_pair",
    "check_length_penalty",
    "check_beam_step",
    "check_ngram_matches",
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


# --- the GNMT length penalty --------------------------------------------------------


def _penalty_mistakes(log_probs: Tensor, lengths: Tensor, alpha: float) -> dict[str, Callable[[], Tensor]]:  # fmt: skip
    L = lengths.double()
    return {
        "multiplied by the penalty: divide the log-probability by it": lambda: (
            log_probs * ((5 + L) / 6) ** alpha
        ),
        "the penalty is ((5 + |y|) / 6) ** alpha: you left out the 5": lambda: (
            log_probs / (L / 6) ** alpha
        ),
        "|y| ** alpha is plain length normalization; GNMT divides by "
        "((5 + |y|) / 6) ** alpha": lambda: log_probs / L**alpha,
        "alpha is ignored: raise (5 + |y|) / 6 to the power alpha": lambda: (
            log_probs / ((5 + L) / 6)
        ),
        "integer division: (5 + |y|) // 6 rounds down; divide as floats": lambda: (
            log_probs / torch.div(5 + lengths, 6, rounding_mode="floor").double() ** alpha
        ),
    }


def _penalty_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    log_probs = torch.tensor([-1.5, -4.0, -7.25, -12.0, -0.5])  # (N,)
    lengths = torch.tensor([1, 4, 9, 20, 2])  # (N,) tokens, EOS included
    for alpha in (0.6, 1.0, 0.0):
        what = f"normalized_score(log_probs, lengths, alpha={alpha})"
        got = call(what, fn, log_probs.clone(), lengths.clone(), alpha, timeout=timeout)
        got = expect_tensor(got, what, shape=log_probs.shape)
        if not got.dtype.is_floating_point:
            raise Fail(f"{what} has dtype {got.dtype}; scores are floats")
        expected = log_probs / gnmt_length_penalty(lengths, alpha)
        if close(got, expected):
            continue
        diagnose(got, _penalty_mistakes(log_probs, lengths, alpha))
        i = int((got.double() - expected.double()).abs().argmax())
        raise Fail(f"{what}: for log p = {log_probs[i].item()} and |y| = {lengths[i].item()} you "
                   f"return {got[i].item():.5f}, expected {expected[i].item():.5f}")  # fmt: skip
    return "log p / ((5 + |y|) / 6) ** alpha for alpha 0.6, 1 and 0 (no penalty)"


def check_length_penalty(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(log_probs, lengths, alpha) -> scores``, log p divided by the GNMT penalty."""
    return run_check("length_penalty", lambda: _penalty_steps(fn, timeout))


# --- one step of beam search --------------------------------------------------------


def beam_step_reference(scores: Tensor, log_probs: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The k best one-token extensions of each sentence's hypotheses (highest first).

    Shapes: scores (B, K), log_probs (B, K, V) -> new scores, origin beam, token: each (B, k).
    """
    B, K, V = log_probs.shape
    candidates = (scores[..., None] + log_probs).reshape(B, K * V)  # (B, K * V)
    new_scores, flat = candidates.topk(k, dim=1)  # (B, k)
    return new_scores, flat // V, flat % V


def _beam_inputs(gen: torch.Generator, B: int, K: int, V: int) -> tuple[Tensor, Tensor]:
    # Running scores far apart, so that ignoring them changes which candidates win.
    scores = -(torch.rand(B, K, generator=gen) * 6).sort(dim=1).values  # (B, K)
    log_probs = torch.randn(B, K, V, generator=gen).mul(2).log_softmax(dim=-1)  # (B, K, V)
    return scores, log_probs


def _beam_bug_outputs(scores: Tensor, log_probs: Tensor, k: int) -> dict[str, Tensor]:
    B, K, V = log_probs.shape

    def flat(t: Tensor) -> Tensor:
        return t.reshape(B, K * V)  # (B, K * V): one row per sentence

    return {
        "add each hypothesis's running score to its next-token log-probabilities before "
        "choosing: scores[..., None] + log_probs": flat(log_probs).topk(k, dim=1).values,
        "choose the k best of all K * V candidates of a sentence, not the best token of each "
        "beam": (scores + log_probs.amax(dim=-1)).sort(dim=1, descending=True).values[:, :k],
        "kept the lowest scores: keep the k highest (topk's default, largest=True)": flat(
            scores[..., None] + log_probs
        )
        .topk(k, dim=1, largest=False)
        .values,
        "candidates of different sentences were mixed: flatten to (B, K * V), one row per "
        "sentence, and choose within each row": (scores[..., None] + log_probs)
        .reshape(-1)
        .topk(B * k)
        .values.reshape(B, k),
    }


def _beam_case(
    fn: Callable[..., Any], B: int, K: int, V: int, k: int, seed: int, timeout: float | None
) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores, log_probs = _beam_inputs(gen, B, K, V)
    what = f"beam_step(scores {shape_str(scores)}, log_probs {shape_str(log_probs)}, k={k})"
    result = call(what, fn, scores.clone(), log_probs.clone(), k, timeout=timeout)
    if not (isinstance(result, tuple | list) and len(result) == 3):
        raise Fail(f"{what} should return three tensors (new_scores, origin, token), got "
                   f"{type(result).__name__}")  # fmt: skip
    got_scores = expect_tensor(result[0], f"{what}: new_scores", shape=(B, k))
    origin, token = result[1], result[2]
    for name, t in (("origin", origin), ("token", token)):
        expect_tensor(t, f"{what}: {name}", shape=(B, k))
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise Fail(f"{what}: {name} has dtype {t.dtype}; indices are integers (torch.long)")
    if not (origin.min() >= 0 and origin.max() < K and token.min() >= 0 and token.max() < V):
        raise Fail(f"{what}: origin must lie in 0..{K - 1} and token in 0..{V - 1}: decode the "
                   "flat index as origin = index // V, token = index % V")  # fmt: skip
    rows = torch.arange(B)[:, None]
    implied = scores.gather(1, origin.long()) + log_probs[rows, origin.long(), token.long()]
    expected, _, _ = beam_step_reference(scores, log_probs, k)
    ranked = got_scores.sort(dim=1, descending=True).values  # any order of the k is fine
    if close(ranked, expected) and close(got_scores, implied):
        return
    for message, wrong in _beam_bug_outputs(scores, log_probs, k).items():
        if close(ranked, wrong.sort(dim=1, descending=True).values):
            raise Fail(message)
    if not close(got_scores, implied):
        raise Fail(f"{what}: new_scores are not scores[origin] + log_probs[origin, token] for "
                   "the origin and token you return: decode the flat index as origin = index "
                   "// V, token = index % V")  # fmt: skip
    raise Fail(f"{what}: the k kept scores of sentence 0 are {ranked[0].tolist()}, expected "
               f"{[round(x, 4) for x in expected[0].tolist()]}")  # fmt: skip


def _beam_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    _beam_case(fn, B=3, K=4, V=9, k=4, seed=10, timeout=timeout)
    _beam_case(fn, B=2, K=3, V=6, k=2, seed=11, timeout=timeout)
    _beam_case(fn, B=1, K=1, V=5, k=3, seed=12, timeout=timeout)  # the first step: one live beam
    return "keeps the k best of scores + log_probs over all K * V candidates of each sentence"


def check_beam_step(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(scores, log_probs, k) -> (new_scores, origin, token)``, one step of beam search."""
    return run_check("beam_step", lambda: _beam_steps(fn, timeout))


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
