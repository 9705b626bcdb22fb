"""The tuning checks (lesson 14): planted bugs are named, other correct implementations pass."""

from __future__ import annotations

import math
import random

import numpy as np
from check_helpers import planted_bug_tests

from tfx_course import checks
from tfx_course.data import nested_subsets
from tfx_course.diagnosis import overfitting_start
from tfx_course.tuning import lr_range_test

# --- lr_range_test ----------------------------------------------------------------------------


def _range(step, start, end, n, beta=0.9, *, spacing="geometric", correct=True, smooth=True,
           stop=True, tenth=True, exponent_n=False):  # fmt: skip
    lrs, out, avg, best, best_lr = [], [], 0.0, math.inf, start
    for i in range(n):
        if spacing == "linear":
            lr = start + (end - start) * i / (n - 1)
        else:
            lr = start * (end / start) ** (i / (n if exponent_n else n - 1))
        loss = step(lr)
        avg = beta * avg + (1 - beta) * loss
        value = (avg / (1 - beta ** (i + 1)) if correct else avg) if smooth else loss
        lrs.append(lr)
        out.append(value)
        if stop and (not math.isfinite(value) or value > 4 * best):
            break
        if value < best:
            best, best_lr = value, lr
    return lrs, out, best_lr / 10 if tenth else best_lr


def _range_numpy(step, start, end, n, beta=0.9):
    rates = np.geomspace(start, end, n)
    lrs, smoothed, avg = [], [], 0.0
    for i, lr in enumerate(rates):
        avg = beta * avg + (1 - beta) * step(float(lr))
        lrs.append(float(lr))
        smoothed.append(avg / (1 - beta ** (i + 1)))
        if not math.isfinite(smoothed[-1]) or smoothed[-1] > 4 * min(smoothed):
            break
    best = int(np.argmin(smoothed))
    return lrs, smoothed, lrs[best] / 10


# --- overfitting_step -------------------------------------------------------------------------


def _overfit(history, tolerance=0.05, *, use_train=False, index=False, last=False, tol=True,
             check_train=True, last_tie=False):  # fmt: skip
    steps, val = (history.step, history.loss) if use_train else (history.val_step, history.val_loss)
    low = min(val)
    ties = [i for i, v in enumerate(val) if v == low]
    best = ties[-1] if last_tie else ties[0]
    if val[-1] <= low * (1 + (tolerance if tol else 0.0)):
        return None
    before = [v for s, v in zip(history.step, history.loss, strict=True) if s <= steps[best]][-10:]
    if check_train and np.mean(history.loss[-10:]) >= np.mean(before):
        return None
    return best if index else steps[-1] if last else steps[best]


def _overfit_written_out(history, tolerance=0.05):
    pairs = list(zip(history.val_step, history.val_loss, strict=True))
    best_step, best_loss = min(pairs, key=lambda p: (p[1], p[0]))
    if pairs[-1][1] - best_loss <= tolerance * best_loss:
        return None
    train = dict(zip(history.step, history.loss, strict=True))
    window_at = [train[s] for s in history.step if s <= best_step][-10:]
    window_end = history.loss[-10:]
    fell = sum(window_end) / len(window_end) < sum(window_at) / len(window_at)
    return best_step if fell else None


# --- nested_subsets ---------------------------------------------------------------------------


def _subsets(items, sizes, seed=0, *, mode="ok"):
    if max(sizes) > len(items):
        raise ValueError("too many")
    if mode == "independent":
        return {s: random.Random(seed + s).sample(list(items), s) for s in sizes}
    if mode == "first":
        return {s: list(items[:s]) for s in sizes}
    if mode == "replacement":
        rng = random.Random(seed)
        draws = [rng.choice(items) for _ in range(max(sizes))]
        return {s: draws[:s] for s in sizes}
    if mode == "global":
        order = list(items)
        random.shuffle(order)
        return {s: order[:s] for s in sizes}
    if mode == "in_place":
        random.Random(seed).shuffle(items)
        return {s: list(items[:s]) for s in sizes}
    order = random.Random(seed).sample(list(items), len(items))  # mode "ok"
    return {s: order[:s] for s in sizes}


def _subsets_unchecked(items, sizes, seed=0):
    order = random.Random(seed).sample(list(items), len(items))
    return {s: order[:s] for s in sizes}  # never refuses a size that is too large


def _subsets_numpy(items, sizes, seed=0):
    if max(sizes) > len(items):
        raise ValueError(f"at most {len(items)} items")
    order = np.random.default_rng(seed).permutation(len(items))
    return {int(s): [items[i] for i in order[:s]] for s in sizes}


BUGS = {
    "lr_range_test": [
        (lambda *a: _range(*a, spacing="linear"), "grow exponentially"),
        (lambda *a: _range(*a, exponent_n=True), "must reach end_lr"),
        (lambda *a: _range(*a, correct=False), "correct the moving average's bias"),
        (lambda *a: _range(*a, smooth=False), "smooth the losses"),
        (lambda *a: _range(*a, stop=False), "stop once the smoothed loss exceeds"),
        (lambda *a: _range(*a, tenth=False), "a tenth of the rate"),
        (lambda *a: _range(*a)[:2], "three things"),
    ],
    "overfitting_step": [
        (lambda h, t: _overfit(h, t, use_train=True), "read history.val_loss"),
        (lambda h, t: _overfit(h, t, index=True), "not its index"),
        (lambda h, t: _overfit(h, t, last=True), "not the last step"),
        (lambda h, t: _overfit(h, t, tol=False), "within the tolerance is noise"),
        (lambda h, t: _overfit(h, t, check_train=False), "training loss fell meanwhile"),
        (lambda h, t: _overfit(h, t, last_tie=True), "on a tie"),
        (lambda h, t: None, "returned None for every history"),
        (lambda h, t: float(_overfit(h, t) or 0), "an int) or None"),
    ],
    "nested_subsets": [
        (lambda i, s, seed: _subsets(i, s, seed, mode="independent"), "not nested"),
        (lambda i, s, seed: _subsets(i, s, seed, mode="first"), "shuffle first"),
        (lambda i, s, seed: _subsets(i, s, seed, mode="replacement"), "drawn twice"),
        (lambda i, s, seed: _subsets(i, s, seed, mode="global"), "random.Random(seed)"),
        (lambda i, s, seed: _subsets(i, s, seed, mode="in_place"), "items was changed"),
        (_subsets_unchecked, "should raise ValueError"),
    ],
}

ALTERNATIVES = {
    "lr_range_test": [lr_range_test, _range, _range_numpy],
    "overfitting_step": [overfitting_start, _overfit, _overfit_written_out],
    "nested_subsets": [nested_subsets, _subsets, _subsets_numpy],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)
