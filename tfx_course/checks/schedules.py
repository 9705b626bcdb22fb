"""Checks for the learning-rate schedules (lesson 09): the paper's warmup schedule and the
presets' warmup, then cosine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor

from tfx_course.checks.core import (
    CheckResult,
    Fail,
    call,
    is_float,
    run_check,
)
from tfx_course.training import noam_peak_lr, warmup_schedule

__all__ = [
    "check_warmup_schedule",
    "check_cosine_lr",
]


# --- warmup schedule ----------------------------------------------------------------


def _noam(step: int, d_model: int, warmup: int) -> float:
    return noam_peak_lr(d_model, warmup) * warmup_schedule("noam", warmup, 10**9)(step - 1)


_SCHEDULE_BUGS: dict[str, Callable[[int, int, int], float]] = {
    "missing the factor d_model^-0.5": lambda s, d, w: min(s**-0.5, s * w**-1.5),
    "multiplied by d_model^0.5; the factor is d_model^-0.5": lambda s, d, w: (
        d**0.5 * min(s**-0.5, s * w**-1.5)
    ),
    "the warmup branch is step * warmup^-1.5, so both branches meet at step = warmup": lambda s, d, w: (
        d**-0.5 * min(s**-0.5, s * w**-0.5)
    ),
    "use min, not max: the rate grows linearly during warmup, then decays as 1/sqrt(step)": lambda s, d, w: (
        d**-0.5 * max(s**-0.5, s * w**-1.5)
    ),
    "off by one: steps count from 1, use step as it is": lambda s, d, w: (
        d**-0.5 * min((s + 1) ** -0.5, (s + 1) * w**-1.5)
    ),
    "steps counted from 0: step 1 must already get d_model^-0.5 * warmup^-1.5, not 0; use "
    "step as it is, not step - 1": lambda s, d, w: (
        d**-0.5 * min((s - 1) ** -0.5 if s > 1 else math.inf, (s - 1) * w**-1.5)
    ),
    "the warmup branch counts steps from 0: it is step * warmup^-1.5 with step from 1, so "
    "step 1 gets more than 0": lambda s, d, w: d**-0.5 * min(s**-0.5, (s - 1) * w**-1.5),
}

_STEPS = {(512, 4000): (1, 10, 2000, 3999, 4000, 4001, 8000, 100000), (64, 10): tuple(range(1, 31))}


def _schedule_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    got: dict[tuple[int, int, int], float] = {}
    for (d, w), steps in _STEPS.items():
        for s in steps:
            what = f"warmup_lr(step={s}, d_model={d}, warmup_steps={w})"
            try:
                value = call(what, fn, s, d, w, timeout=timeout)
            except Fail as failure:
                hint = (
                    " (steps count from 1: step=1 must work)"
                    if "ZeroDivision" in str(failure)
                    else ""
                )
                raise Fail(f"{failure}{hint}") from None
            if isinstance(value, Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, int | float) and not is_float(value):
                raise Fail(f"{what} returned {value}; the learning rate must be a finite number")
            if not is_float(value):
                raise Fail(
                    f"{what} returned a {type(value).__name__}; return one finite number, "
                    "the learning rate"
                )
            got[(s, d, w)] = float(value)
    expected = {key: _noam(*key) for key in got}
    if all(math.isclose(got[k], expected[k], rel_tol=1e-6) for k in got):
        return "d_model^-0.5 * min(step^-0.5, step * warmup^-1.5): linear warmup, peak at warmup, then 1/sqrt"
    for message, wrong in _SCHEDULE_BUGS.items():
        if all(math.isclose(got[k], wrong(*k), rel_tol=1e-6) for k in got):
            raise Fail(message)
    key = next(k for k in got if not math.isclose(got[k], expected[k], rel_tol=1e-6))
    raise Fail(
        f"at step={key[0]} (d_model={key[1]}, warmup_steps={key[2]}) you return {got[key]:.6g}, "
        f"expected {expected[key]:.6g}"
    )


def check_warmup_schedule(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(step, d_model, warmup_steps) -> lr``, the paper's warmup schedule (step from 1)."""
    return run_check("warmup_schedule", lambda: _schedule_steps(fn, timeout))


# --- warmup, then cosine --------------------------------------------------------------


def _cosine(step: int, lr: float, warmup: int, max_steps: int, min_ratio: float) -> float:
    return lr * warmup_schedule("cosine", warmup, max_steps, min_ratio)(step - 1)


def _cosine_bug(kind: str) -> Callable[[int, float, int, int, float], float]:
    def lr_at(s: int, lr: float, w: int, n: int, r: float) -> float:
        if s <= w:
            return lr * ((s - 1) / w if kind == "warmup_from_0" else s / w)
        start = 0 if kind == "whole_run" else w
        progress = min(1.0, (s - start) / (n - start))
        if kind == "no_clamp":
            progress = (s - w) / (n - w)
        shape = 1 - progress if kind == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        floor = 0.0 if kind == "no_floor" else r
        return lr * (floor + (1 - floor) * shape)

    return lr_at


_COSINE_BUGS = {
    "step 1 gets lr / warmup_steps: the warmup multiplier is step / warmup_steps, reaching 1 at "
    "step = warmup_steps": _cosine_bug("warmup_from_0"),
    "decay to min_ratio * lr, not to 0: lr * (min_ratio + (1 - min_ratio) * cosine part)": _cosine_bug(
        "no_floor"
    ),
    "the cosine runs from the end of warmup to max_steps: progress = (step - warmup_steps) / "
    "(max_steps - warmup_steps)": _cosine_bug("whole_run"),
    "the decay follows half a cosine, 0.5 * (1 + cos(pi * progress)), not a straight line": _cosine_bug(
        "linear"
    ),
    "after max_steps the rate stays at its minimum: clamp progress at 1": _cosine_bug("no_clamp"),
    "steps counted from 0: your schedule is one step late everywhere (step 1 gets 0, not "
    "lr / warmup_steps); use step as it is, not step - 1": lambda s, lr, w, n, r: _cosine(
        s - 1, lr, w, n, r
    ),
}

_COSINE_SETTINGS = [(1e-3, 4, 20, 0.1), (2e-3, 100, 700, 0.05), (0.5, 1, 10, 0.0)]


def _cosine_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    got = {}
    for lr, w, n, r in _COSINE_SETTINGS:
        for s in sorted({1, 2, w, w + 1, (w + n) // 2, n - 1, n, n + 5}):
            what = f"cosine_lr(step={s}, lr={lr}, warmup_steps={w}, max_steps={n}, min_ratio={r})"
            value = call(what, fn, s, lr, w, n, r, timeout=timeout)
            value = value.item() if isinstance(value, Tensor) and value.numel() == 1 else value
            if not is_float(value):
                raise Fail(f"{what} returned a {type(value).__name__} ({value!r}); return the "
                           "learning rate, one number")  # fmt: skip
            got[(s, lr, w, n, r)] = float(value)
    if all(math.isclose(v, _cosine(*k), rel_tol=1e-6, abs_tol=1e-12) for k, v in got.items()):
        return (
            "linear warmup from lr / warmup_steps to lr, then half a cosine down to min_ratio * lr"
        )
    for message, variant in _COSINE_BUGS.items():
        if all(math.isclose(v, variant(*k), rel_tol=1e-6, abs_tol=1e-12) for k, v in got.items()):
            raise Fail(message)
    key = next(k for k, v in got.items() if not math.isclose(v, _cosine(*k), rel_tol=1e-6, abs_tol=1e-12))  # fmt: skip
    raise Fail(f"at step {key[0]} (lr={key[1]}, warmup_steps={key[2]}, max_steps={key[3]}, "
               f"min_ratio={key[4]}) you return {got[key]:.6g}, expected {_cosine(*key):.6g}")  # fmt: skip


def check_cosine_lr(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(step, lr, warmup_steps, max_steps, min_ratio) -> lr``: warmup, then cosine."""
    return run_check("cosine_lr", lambda: _cosine_steps(fn, timeout))
