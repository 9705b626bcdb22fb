"""The learning-rate schedule checks (lesson 09): planted bugs are named,
other correct implementations pass."""

from __future__ import annotations

import math

import numpy as np
import torch
from check_helpers import planted_bug_tests

from tfx_course import checks
from tfx_course.training import TrainConfig, make_scheduler


def _noam(s, d, w):
    return d**-0.5 * min(s**-0.5, s * w**-1.5)


# --- cosine_lr ------------------------------------------------------------------------


def _cos(step, lr, warmup, max_steps, min_ratio, *, bug=None):
    if step <= warmup:
        return lr * ((step - 1) if bug == "zero" else step) / warmup
    start = 0 if bug == "whole" else warmup
    progress = (step - start) / (max_steps - start)
    if bug != "unclamped":
        progress = min(progress, 1.0)
    part = 1 - progress if bug == "linear" else (1 + math.cos(math.pi * progress)) / 2
    floor = 0 if bug == "floor" else min_ratio
    return lr * (floor + (1 - floor) * part)


def _cos_scheduler(step, lr, warmup, max_steps, min_ratio):
    # The course's own LambdaLR, stepped to `step`: what training actually uses.
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    config = TrainConfig(lr=lr, max_steps=max_steps, warmup_steps=warmup, schedule="cosine", min_lr_ratio=min_ratio)  # fmt: skip
    sched = make_scheduler(opt, config)
    for _ in range(step - 1):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


def _cos_tensor(step, lr, warmup, max_steps, min_ratio):
    s = torch.tensor(float(step))
    warm = s / warmup
    progress = ((s - warmup) / (max_steps - warmup)).clamp(0, 1)
    decay = min_ratio + (1 - min_ratio) * 0.5 * (1 + torch.cos(torch.pi * progress))
    return lr * torch.where(s <= warmup, warm, decay)


def _noam_from_zero(s, d, w):
    s = s - 1  # a schedule that counts steps from 0
    return d**-0.5 * min(max(s, 1) ** -0.5, s * w**-1.5)


BUGS = {
    "warmup_schedule": [
        (_noam_from_zero, "steps counted from 0"),
        (
            lambda s, d, w: d**-0.5 * min(s**-0.5, (s - 1) * w**-1.5),
            "warmup branch counts steps from 0",
        ),
        (lambda s, d, w: min(s**-0.5, s * w**-1.5), "missing the factor d_model^-0.5"),
        (lambda s, d, w: d**-0.5 * min(s**-0.5, s * w**-0.5), "warmup^-1.5"),
        (lambda s, d, w: d**-0.5 * max(s**-0.5, s * w**-1.5), "use min, not max"),
        (lambda s, d, w: _noam(s + 1, d, w), "off by one"),
        (lambda s, d, w: _noam(s - 1, d, w), "step=1 must work"),
        (lambda s, d, w: [_noam(s, d, w)], "return one finite number"),
    ],
    "cosine_lr": [
        (
            lambda s, lr, w, n, r: _cos(s - 1, lr, w, n, r) if s > 1 else 0.0,
            "one step late everywhere",
        ),
        (lambda *a: _cos(*a, bug="zero"), "step 1 gets lr / warmup_steps"),
        (lambda *a: _cos(*a, bug="floor"), "not to 0"),
        (lambda *a: _cos(*a, bug="whole"), "from the end of warmup"),
        (lambda *a: _cos(*a, bug="linear"), "half a cosine"),
        (lambda *a: _cos(*a, bug="unclamped"), "clamp progress"),
        (lambda *a: "fast", "one number"),
    ],
}

ALTERNATIVES = {
    "warmup_schedule": [
        _noam,
        lambda s, d, w: np.float32(1.0) * (d**-0.5) * (s / w**1.5 if s < w else 1 / math.sqrt(s)),
        lambda s, d, w: torch.tensor(d, dtype=torch.float64).rsqrt() * min(s**-0.5, s * w**-1.5),
    ],
    "cosine_lr": [_cos, _cos_scheduler, _cos_tensor],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)
