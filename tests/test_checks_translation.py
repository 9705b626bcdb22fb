"""Lessons 08 and 10's checks: planted bugs are named, other correct implementations pass."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
import sacrebleu
import torch
from check_helpers import planted_bug_tests

from tfx_course import checks
from tfx_course.checks.translation import beam_step_reference
from tfx_course.data.bpe import learn_bpe, merge_pair, pair_counts
from tfx_course.evaluation import clipped_ngram_matches

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


# --- length_penalty -------------------------------------------------------------------


def _lp(log_probs, lengths, alpha, *, form="gnmt"):
    L = lengths.float()
    penalty = {
        "gnmt": ((5 + L) / 6) ** alpha,
        "no5": (L / 6) ** alpha,
        "plain": L**alpha,
        "noalpha": (5 + L) / 6,
        "floor": ((5 + lengths) // 6).float() ** alpha,
    }[form]
    return log_probs / penalty


def _lp_multiply(log_probs, lengths, alpha):
    return log_probs * ((5 + lengths.float()) / 6) ** alpha


def _lp_exp_log(log_probs, lengths, alpha):
    return log_probs * torch.exp(-alpha * torch.log((5.0 + lengths) / 6.0))


def _lp_python(log_probs, lengths, alpha):
    values = [lp / ((5 + n) / 6) ** alpha for lp, n in zip(log_probs.tolist(), lengths.tolist(), strict=True)]  # fmt: skip
    return torch.tensor(values)


def _lp_float64(log_probs, lengths, alpha):
    return log_probs.double() / torch.pow((lengths.double() + 5.0) / 6.0, alpha)


# --- beam_step ------------------------------------------------------------------------


def _beam(scores, log_probs, k, *, add=True, per_beam=False, largest=True, mix=False, swap=False):
    B, K, V = log_probs.shape
    total = scores[..., None] + log_probs if add else log_probs
    if per_beam:
        best, tok = total.max(dim=-1)
        new, origin = best.sort(dim=1, descending=True)
        return new[:, :k], origin[:, :k], tok.gather(1, origin)[:, :k]
    if mix:
        new, flat = total.reshape(-1).topk(B * k)
        flat = flat.reshape(B, k) % (K * V)
        return new.reshape(B, k), flat // V, flat % V
    new, flat = total.reshape(B, K * V).topk(k, dim=1, largest=largest)
    if swap:
        return new, flat % K, flat // K
    return new, flat // V, flat % V


def _beam_sort(scores, log_probs, k):
    B, K, V = log_probs.shape
    total = (scores.unsqueeze(-1) + log_probs).flatten(1)
    order = total.argsort(dim=1, descending=True)[:, :k]
    return total.gather(1, order), torch.div(order, V, rounding_mode="floor"), order.remainder(V)


def _beam_unsorted(scores, log_probs, k):
    B, K, V = log_probs.shape
    new, flat = (scores[..., None] + log_probs).view(B, -1).topk(k, dim=1, sorted=False)
    perm = torch.arange(k).flip(0)  # any order of the k survivors is allowed
    new, flat = new[:, perm], flat[:, perm]
    return new, flat // V, flat % V


def _beam_loops(scores, log_probs, k):
    B, K, V = log_probs.shape
    rows = []
    for b in range(B):
        cands = sorted(
            (
                (scores[b, i].item() + log_probs[b, i, v].item(), i, v)
                for i in range(K)
                for v in range(V)
            ),  # fmt: skip
            reverse=True,
        )[:k]
        rows.append(cands)
    new = torch.tensor([[c[0] for c in r] for r in rows])
    origin = torch.tensor([[c[1] for c in r] for r in rows])
    token = torch.tensor([[c[2] for c in r] for r in rows])
    return new, origin, token


def _beam_float_indices(scores, log_probs, k):
    new, origin, token = beam_step_reference(scores, log_probs, k)
    return new, origin.float(), token.float()


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


# --- the planted-bug and alternative tables --------------------------------------------

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
    "length_penalty": [
        (_lp_multiply, "multiplied by the penalty"),
        (lambda lp, n, a: _lp(lp, n, a, form="no5"), "left out the 5"),
        (lambda lp, n, a: _lp(lp, n, a, form="plain"), "plain length normalization"),
        (lambda lp, n, a: _lp(lp, n, a, form="noalpha"), "alpha is ignored"),
        (lambda lp, n, a: _lp(lp, n, a, form="floor"), "integer division"),
        (lambda lp, n, a: lp / ((5 + n) / 6) ** a * float("nan"), "NaN"),
        (lambda lp, n, a: (lp / ((5 + n) / 6) ** a)[None], "shape"),
    ],
    "beam_step": [
        (lambda s, lp, k: _beam(s, lp, k, add=False), "running score"),
        (lambda s, lp, k: _beam(s, lp, k, per_beam=True), "not the best token of each beam"),
        (lambda s, lp, k: _beam(s, lp, k, largest=False), "kept the lowest"),
        (lambda s, lp, k: _beam(s, lp, k, mix=True), "different sentences were mixed"),
        (lambda s, lp, k: _beam(s, lp, k, swap=True), "origin = index // V"),
        (_beam_float_indices, "indices are integers"),
        (lambda s, lp, k: beam_step_reference(s, lp, k)[:2], "three tensors"),
    ],
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
    "pair_counts": [_pairs, _pairs_defaultdict, _pairs_sum, lambda c: pair_counts(c)],
    "merge_pair": [_merge, _merge_recursive, _merge_list],
    "length_penalty": [_lp, _lp_exp_log, _lp_python, _lp_float64],
    "beam_step": [_beam, _beam_sort, _beam_unsorted, _beam_loops],
    "ngram_matches": [_ng, _ng_min, _ng_strings, _ng_floats],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)


def test_not_attempted_hanging_and_raising_answers_fail_without_crashing():
    def todo(*args):
        raise NotImplementedError("exercise 'beam_step': write your code here")

    def hang(*args):
        while True:
            pass

    assert checks.check_beam_step(todo).message.startswith("not attempted yet")
    assert "did not return within 0.5 s" in checks.check_ngram_matches(hang, timeout=0.5).message
    assert "raised KeyError" in checks.check_pair_counts(lambda c: {}["x"]).message


# --- the references themselves, against independent computations ---------------------


def test_clipped_ngram_matches_sum_to_sacrebleus_corpus_statistics():
    hyps = ["a man is riding a horse .", "the the the the", "two dogs play in the snow ."]
    refs = ["a man rides a brown horse .", "the cat on the mat", "two dogs are playing in snow ."]
    stats = sacrebleu.metrics.BLEU(tokenize="none").corpus_score(hyps, [refs])
    for n in range(1, 5):
        matches = totals = 0
        for h, r in zip(hyps, refs, strict=True):
            m, t = clipped_ngram_matches(h.split(), r.split(), n)
            matches, totals = matches + m, totals + t
        assert (matches, totals) == (stats.counts[n - 1], stats.totals[n - 1])


def test_beam_step_reference_equals_exhaustive_search_over_candidates():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, generator=gen)
    log_probs = torch.randn(2, 3, 5, generator=gen).log_softmax(-1)
    new, origin, token = beam_step_reference(scores, log_probs, 4)
    for b in range(2):
        every = sorted(
            (scores[b, i].item() + log_probs[b, i, v].item() for i in range(3) for v in range(5)),
            reverse=True,
        )
        assert new[b].tolist() == pytest.approx(every[:4])
        implied = scores[b, origin[b]] + log_probs[b, origin[b], token[b]]
        assert implied.tolist() == pytest.approx(new[b].tolist())


def test_pair_counts_and_merge_pair_drive_the_lessons_bpe():
    corpus = {("l", "o", "w", "</w>"): 5, ("l", "o", "w", "e", "r", "</w>"): 2}
    counts = pair_counts(corpus)
    assert counts[("l", "o")] == 7 and counts[("e", "r")] == 2
    assert sum(counts.values()) == 3 * 5 + 5 * 2  # n - 1 pairs per word, weighted
    assert learn_bpe(["low low lower"], 1)[0].pair == ("l", "o")
    assert merge_pair(("a", "a", "a", "</w>"), ("a", "a")) == ("aa", "a", "</w>")
