"""Checks for tuning and low-resource training (lesson 14): the learning-rate range test, an
overfitting detector on a run's history, and nested subsets for a data-size curve.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from tfx_course.checks.core import CheckResult, Fail, call, is_float, run_check
from tfx_course.training import History
from tfx_course.tuning import lr_range_test

__all__ = ["check_lr_range_test", "check_overfitting_step", "check_nested_subsets"]


# --- the learning-rate range test -------------------------------------------------------


class _Curve:
    """A seeded stand-in for one training step: a loss that falls, bottoms out, then explodes."""

    def __init__(self, seed: int, best_lr: float) -> None:
        self.rng, self.best_lr, self.calls = random.Random(seed), best_lr, []

    def __call__(self, lr: float) -> float:
        self.calls.append(lr)
        x = math.log10(lr / self.best_lr)  # 0 at the best rate
        base = 2.0 + 0.5 * x * x if x < 0 else 2.0 + 4.0 * x**3  # steep past the best rate
        return base * (1 + 0.08 * (self.rng.random() - 0.5))


_RANGE_CASES = [(1, 1e-3, 1e-6, 1.0, 60), (2, 3e-2, 1e-5, 10.0, 40)]


def _range_variants(start: float, end: float, n: int, seed: int, best: float) -> dict[str, Any]:
    """What the usual mistakes return on the same curve (rates, smoothed losses, suggestion)."""

    def run(rates: Callable[[int], float], beta: float = 0.9, **bug: bool) -> tuple:
        curve, avg, best_value, best_lr, lrs, out = _Curve(seed, best), 0.0, math.inf, 0.0, [], []
        for i in range(n):
            lr = rates(i)
            loss = curve(lr)
            avg = beta * avg + (1 - beta) * loss
            value = loss if bug.get("raw") else avg if bug.get("no_correction") else avg / (1 - beta ** (i + 1))  # fmt: skip
            lrs.append(lr)
            out.append(value)
            limit = out[0] if bug.get("first") else best_value
            if not bug.get("no_stop") and (not math.isfinite(value) or value > 4 * limit):
                break
            if value < best_value:
                best_value, best_lr = value, lr
        return lrs, out, best_lr if bug.get("no_tenth") else best_lr / 10

    geometric = lambda i: start * (end / start) ** (i / (n - 1))  # noqa: E731
    return {
        "the rates must grow exponentially, start_lr * (end_lr / start_lr) ** (i / (num_steps "
        "- 1)), not in equal steps": run(lambda i: start + (end - start) * i / (n - 1)),
        "the last step must reach end_lr: the exponent is i / (num_steps - 1), not i / "
        "num_steps": run(lambda i: start * (end / start) ** (i / n)),
        "correct the moving average's bias: smoothed = avg / (1 - beta ** (i + 1)) (i from 0)": run(
            geometric, no_correction=True
        ),
        "smooth the losses: an exponential moving average with beta, bias-corrected": run(
            geometric, raw=True
        ),
        "stop once the smoothed loss exceeds 4 times the lowest so far: the run has diverged": run(
            geometric, no_stop=True
        ),
        "compare with the lowest smoothed loss so far, not with the first": run(
            geometric, first=True
        ),
        "suggest a tenth of the rate at the lowest smoothed loss, safely below where it turns "
        "up": run(geometric, no_tenth=True),
    }


def _same_test(got: Any, expected: tuple) -> bool:
    lrs, smoothed, suggestion = got
    return (
        len(lrs) == len(expected[0])
        and all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(lrs, expected[0], strict=True))
        and all(
            math.isclose(a, b, rel_tol=1e-6) for a, b in zip(smoothed, expected[1], strict=True)
        )  # fmt: skip
        and math.isclose(suggestion, expected[2], rel_tol=1e-6)
    )


def _range_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    for seed, best, start, end, n in _RANGE_CASES:
        curve = _Curve(seed, best)
        what = f"lr_range_test(train_step, start_lr={start}, end_lr={end}, num_steps={n})"
        got = call(what, fn, curve, start, end, n, timeout=timeout)
        if not (isinstance(got, tuple | list) and len(got) == 3):
            raise Fail(f"{what} should return three things (lrs, smoothed losses, suggested lr), "
                       f"got {type(got).__name__}")  # fmt: skip
        lrs, smoothed, suggestion = got
        if not (isinstance(lrs, list | tuple) and isinstance(smoothed, list | tuple)) or not is_float(suggestion):  # fmt: skip
            raise Fail(f"{what}: return two lists of numbers and one number")
        if list(curve.calls) != [float(x) for x in lrs]:
            raise Fail("return the rates in the order train_step was called with them, one per call")  # fmt: skip
        expected = lr_range_test(_Curve(seed, best), start, end, n)
        if _same_test((lrs, smoothed, suggestion), expected):
            continue
        for message, wrong in _range_variants(start, end, n, seed, best).items():
            if _same_test((lrs, smoothed, suggestion), wrong):
                raise Fail(message)
        raise Fail(f"{what}: tried {len(lrs)} rates and suggested {float(suggestion):.3g}; "
                   f"expected {len(expected[0])} rates and {expected[2]:.3g}")  # fmt: skip
    return "exponential rates, bias-corrected smoothing, stop at divergence, a tenth of the best"


def check_lr_range_test(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(train_step, start_lr, end_lr, num_steps) -> (lrs, smoothed, suggested_lr)``."""
    return run_check("lr_range_test", lambda: _range_steps(fn, timeout))


# --- an overfitting detector -------------------------------------------------------------


def _history(train: Sequence[float], val: Sequence[float], every: int) -> History:
    h = History()
    for i, loss in enumerate(train, start=1):
        h.record(i, loss, 1e-3, 1.0)
    for j, loss in enumerate(val, start=1):
        h.record_validation(j * every, loss)
    return h


def _falling(n: int, start: float = 4.0, end: float = 0.5) -> list[float]:
    return [start * (end / start) ** (i / (n - 1)) for i in range(n)]


# name -> (history, the answer); the histories tell the usual mistakes apart.
_OVERFIT_CASES = {
    "overfits from step 60": (
        _history(_falling(200), [3.0, 2.5, 2.3, 2.5, 2.8, 3.1, 3.0, 3.4, 3.6, 3.9], 20),
        60,
    ),  # fmt: skip
    "healthy: both fall": (_history(_falling(200), _falling(10, 3.0, 1.5), 20), None),
    "a small bump within tolerance": (
        _history(_falling(200), [3.0, 2.5, 2.3, 2.31, 2.35, 2.4], 30),
        None,
    ),  # fmt: skip
    "both rise: not overfitting": (
        _history(_falling(100, 1.0, 3.0), [2.0, 1.8, 2.5, 3.0], 25),
        None,
    ),  # fmt: skip
    "a tie at the minimum": (_history(_falling(120), [3.0, 2.2, 2.6, 2.2, 2.9, 3.2], 20), 40),
}


def _overfit_variant(h: History, tolerance: float, **bug: bool) -> int | None:
    """The detector with one usual mistake planted (the keywords), for naming it."""
    val_step, val = h.val_step, h.val_loss
    low = min(val)
    ties = [i for i, v in enumerate(val) if v == low]
    best = ties[-1] if bug.get("last_tie") else ties[0]
    if val[-1] <= low * (1 + (0.0 if bug.get("no_tolerance") else tolerance)):
        return None
    before = [v for s, v in zip(h.step, h.loss, strict=True) if s <= val_step[best]][-10:]
    fell = sum(h.loss[-10:]) / len(h.loss[-10:]) < sum(before) / max(len(before), 1)
    if not (fell or bug.get("ignore_train")):
        return None
    return best if bug.get("index") else val_step[-1] if bug.get("last") else val_step[best]


_OVERFIT_BUGS = {
    "return the step of the lowest validation loss (history.val_step[i]), not its index": {"index": True},
    "return the step where the validation loss was lowest, not the last step": {"last": True},
    "a rise within the tolerance is noise, not overfitting: compare the last validation loss "
    "with (1 + tolerance) * the lowest": {"no_tolerance": True},
    "check that the training loss fell meanwhile: if it rose too, the run is not overfitting": {"ignore_train": True},
    "on a tie take the first step with the lowest validation loss": {"last_tie": True},
}  # fmt: skip


def _overfit_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    answers = {}
    for name, (history, _) in _OVERFIT_CASES.items():
        got = call("overfitting_step(history, tolerance=0.05)", fn, history, 0.05, timeout=timeout)
        if got is not None and not (isinstance(got, int) and not isinstance(got, bool)):
            raise Fail(f"return a step number (an int) or None, got {type(got).__name__}")
        answers[name] = got
    if all(answers[name] == expected for name, (_, expected) in _OVERFIT_CASES.items()):
        return "finds where overfitting starts, ignores noise and runs that fail in other ways"
    if all(answer is None for answer in answers.values()):
        raise Fail("returned None for every history (NoneType each time), also for one whose validation loss rises "
                   "from step 60 on while the training loss falls: read history.val_loss and "
                   "history.val_step")  # fmt: skip
    for message, bug in _OVERFIT_BUGS.items():
        if all(answers[name] == _overfit_variant(h, 0.05, **bug) for name, (h, _) in _OVERFIT_CASES.items()):  # fmt: skip
            raise Fail(message)
    wrong = next(name for name, (_, expected) in _OVERFIT_CASES.items() if answers[name] != expected)  # fmt: skip
    raise Fail(f"on a history where {wrong}, returned {answers[wrong]}, expected {_OVERFIT_CASES[wrong][1]}")  # fmt: skip


def check_overfitting_step(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(history, tolerance) -> step or None``, where overfitting starts."""
    return run_check("overfitting_step", lambda: _overfit_steps(fn, timeout))


# --- nested subsets for a data-size curve ------------------------------------------------


def _subsets(fn: Callable[..., Any], items: list, sizes: list[int], seed: int, timeout: float | None) -> dict:  # fmt: skip
    what = f"nested_subsets(items, sizes={sizes}, seed={seed})"
    got = call(what, fn, items, sizes, seed, timeout=timeout)
    if not isinstance(got, dict) or sorted(got) != sorted(sizes):
        raise Fail(f"{what} should return a dict with one entry per size, {sorted(sizes)}, "
                   f"got {type(got).__name__}")  # fmt: skip
    for size, subset in got.items():
        if not isinstance(subset, list) or len(subset) != size:
            raise Fail(f"{what}[{size}] should be a list of {size} items")
        if not set(subset) <= set(items):
            raise Fail(f"{what}[{size}] holds items that are not in items")
    return got


def _subset_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    items = [f"pair {i}" for i in range(500)]
    original = list(items)
    sizes = [10, 50, 200]
    got = _subsets(fn, items, sizes, 0, timeout)
    if items != original:
        raise Fail(
            "items was changed: shuffle a copy (or a list of indices), not the caller's list"
        )
    for size in sizes:
        if len(set(got[size])) != size:
            raise Fail("an item was drawn twice: sample without replacement (one shuffle, then prefixes)")  # fmt: skip
    if any(not set(got[a]) <= set(got[b]) for a, b in zip(sizes, sizes[1:], strict=False)):
        raise Fail("the subsets are not nested: take every size from one shuffled order, so each "
                   "smaller set lies inside the larger ones")  # fmt: skip
    if got[200] == items[:200]:
        raise Fail("the subsets are the first items of the file: shuffle first (a file's order, "
                   "e.g. short sentences first, would decide what the curve measures)")  # fmt: skip
    if _subsets(fn, list(items), sizes, 0, timeout) != got:
        raise Fail("the same seed gave other subsets: use random.Random(seed), not the global state")  # fmt: skip
    if _subsets(fn, list(items), sizes, 1, timeout) == got:
        raise Fail("another seed gave the same subsets: the seed must choose the shuffle")
    try:
        fn(list(items), [600], 0)
    except ValueError:
        return "nested, seeded, without repeats, input untouched, too large sizes refused"
    except Exception as exc:  # noqa: BLE001 - any other error is the learner's to fix
        raise Fail(f"asking for 600 of 500 items raised {type(exc).__name__}; raise ValueError") from None  # fmt: skip
    raise Fail("asking for 600 of 500 items should raise ValueError, not return fewer or repeat some")  # fmt: skip


def check_nested_subsets(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(items, sizes, seed) -> {size: subset}``: nested, seeded, distinct subsets."""
    return run_check("nested_subsets", lambda: _subset_steps(fn, timeout))
