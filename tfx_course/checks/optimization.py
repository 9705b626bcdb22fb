"""Checks for lesson 09: clipping by the global gradient norm, one AdamW step, and the
presets' warmup-then-cosine learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from tfx_course.checks.core import (
    CheckResult,
    Fail,
    call,
    close,
    expect_tensor,
    is_float,
    run_check,
)
from tfx_course.training import warmup_schedule

__all__ = ["adamw_reference", "check_clip_grad_norm", "check_adamw_step", "check_cosine_lr"]

# --- clipping by the global norm ------------------------------------------------------


def _global_norm(grads: Sequence[Tensor]) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))


def _scaled(grads: Sequence[Tensor], factor: float) -> list[Tensor]:
    return [g * factor for g in grads]


def _clip_variants(grads: list[Tensor], max_norm: float) -> dict[str, Callable[[], list[Tensor]]]:
    total = _global_norm(grads)
    norms = [float(g.double().norm()) for g in grads]
    return {
        "each tensor was clipped on its own: compute one norm over all gradients together, "
        "sqrt(sum of every squared entry)": lambda: [
            g * min(1.0, max_norm / n) if n > 0 else g for g, n in zip(grads, norms, strict=True)
        ],
        "gradients below max_norm must stay as they are: scale only when the total norm "
        "exceeds max_norm (factor min(1, max_norm / norm))": lambda: _scaled(
            grads, max_norm / total
        ),
        "the global norm is sqrt(sum of squares of all entries), not the sum of the tensors' "
        "norms": lambda: _scaled(grads, min(1.0, max_norm / sum(norms))),
        "take the square root: the norm is sqrt(sum of squares)": lambda: _scaled(
            grads, min(1.0, max_norm / total**2)
        ),
    }


_CLIP_CASES: list[tuple[str, float]] = [("3-4-5", 1.0), ("3-4-5", 10.0), ("random", 0.5)]


def _clip_inputs(name: str) -> list[Tensor]:
    if name == "3-4-5":  # global norm 5: the per-tensor norms are 3 and 4
        return [torch.tensor([3.0, 0.0]), torch.tensor([[0.0], [4.0]])]
    gen = torch.Generator().manual_seed(9)
    return [torch.randn(4, 3, generator=gen), torch.randn(3, generator=gen), torch.randn(2, 2, 2, generator=gen)]  # fmt: skip


def _clip_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    for name, max_norm in _CLIP_CASES:
        grads = _clip_inputs(name)
        what = f"clip_grad_norm(grads, max_norm={max_norm})"
        result = call(what, fn, [g.clone() for g in grads], max_norm, timeout=timeout)
        if not (isinstance(result, tuple | list) and len(result) == 2):
            raise Fail(f"{what} should return a pair (clipped gradients, total norm), got "
                       f"{type(result).__name__}")  # fmt: skip
        clipped, norm = result
        if not (isinstance(clipped, list | tuple) and len(clipped) == len(grads)):
            raise Fail(f"{what}: return one clipped tensor per gradient, in a list")
        clipped = [expect_tensor(c, f"{what}: gradient {i}", shape=g.shape) for i, (c, g) in enumerate(zip(clipped, grads, strict=True))]  # fmt: skip
        total = _global_norm(grads)
        expected = _scaled(grads, min(1.0, max_norm / (total + 1e-6)))  # as clip_grad_norm_
        if not all(close(c, e) for c, e in zip(clipped, expected, strict=True)):
            for message, variant in _clip_variants(grads, max_norm).items():
                if all(close(c, v) for c, v in zip(clipped, variant(), strict=True)):
                    raise Fail(message)
            raise Fail(f"{what}: the clipped gradients differ from grads * min(1, max_norm / "
                       f"norm) with norm = {total:.4f}")  # fmt: skip
        norm = norm.item() if isinstance(norm, Tensor) and norm.numel() == 1 else norm
        if not is_float(norm):
            raise Fail(f"{what}: the total norm should be one number, got {type(norm).__name__}")
        if math.isclose(float(norm), _global_norm(expected), rel_tol=1e-4) and total > max_norm:
            raise Fail("return the norm before clipping (as torch.nn.utils.clip_grad_norm_ "
                       "does), not after")  # fmt: skip
        if not math.isclose(float(norm), total, rel_tol=1e-4):
            raise Fail(f"{what} returned the norm {float(norm):.4f}, expected {total:.4f}")
    return "one global norm over all gradients, scaled by min(1, max_norm / norm), norm returned"


def check_clip_grad_norm(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(grads, max_norm) -> (clipped, norm)``, clipping by the global gradient norm."""
    return run_check("clip_grad_norm", lambda: _clip_steps(fn, timeout))


# --- one AdamW step -------------------------------------------------------------------


def adamw_reference(
    param: Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    step: int,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    *,
    decoupled: bool = True,
    bias_correction: bool = True,
    eps_inside: bool = False,
    square: bool = True,
    first_step: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """One step of AdamW (Loshchilov and Hutter, 2019); the keywords plant the usual mistakes.

    ``step`` counts from 1. Returns the new parameter and the new first and second moments.
    """
    b1, b2 = betas
    g = grad if decoupled else grad + weight_decay * param  # L2 penalty: Adam, not AdamW
    p = param * (1 - lr * weight_decay) if decoupled else param.clone()
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * (g * g if square else g)
    t = step - 1 + first_step
    m_hat = m / (1 - b1**t) if bias_correction else m
    v_hat = v / (1 - b2**t) if bias_correction else v
    denom = (v_hat + eps).sqrt() if eps_inside else v_hat.sqrt() + eps
    return p - lr * m_hat / denom, m, v


_ADAMW_BUGS = {
    "weight decay went into the gradient (Adam with an L2 penalty); AdamW decays the weight "
    "directly: param * (1 - lr * weight_decay), then the Adam update": {"decoupled": False},
    "divide m by 1 - beta1**step and v by 1 - beta2**step (bias correction)": {
        "bias_correction": False
    },
    "add eps after the square root: sqrt(v_hat) + eps": {"eps_inside": True},
    "v is the running mean of the squared gradient: (1 - beta2) * grad * grad": {"square": False},
    "step counts from 1: the bias correction of the first step is 1 - beta**1": {"first_step": 0},
}


def _same(a: Tensor, b: Tensor) -> bool:
    return torch.allclose(a.double(), b.double(), atol=1e-5, rtol=1e-4, equal_nan=True)


def _adamw_case(fn: Callable[..., Any], step: int, seed: int, timeout: float | None) -> None:
    gen = torch.Generator().manual_seed(seed)
    param, grad = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    fresh = step == 1
    m = torch.zeros(3, 4) if fresh else 0.1 * torch.randn(3, 4, generator=gen)
    v = torch.zeros(3, 4) if fresh else 0.01 * torch.rand(3, 4, generator=gen)
    hyper = {"lr": 0.1, "betas": (0.9, 0.98), "eps": 1e-3, "weight_decay": 0.2}
    what = f"adamw_step(param, grad, m, v, step={step}, lr=0.1, betas=(0.9, 0.98), eps=0.001, weight_decay=0.2)"  # fmt: skip
    args = (param.clone(), grad.clone(), m.clone(), v.clone(), step)
    result = call(what, fn, *args, **hyper, timeout=timeout)
    if not (isinstance(result, tuple | list) and len(result) == 3):
        raise Fail(f"{what} should return three tensors (new param, new m, new v), got "
                   f"{type(result).__name__}")  # fmt: skip
    names = ("param", "m", "v")
    got = [expect_tensor(t, f"{what}: {n}", shape=param.shape, finite=False) for t, n in zip(result, names, strict=True)]  # fmt: skip
    expected = adamw_reference(param, grad, m, v, step, **hyper)
    if all(close(a, b) for a, b in zip(got, expected, strict=True)):
        return
    for message, planted in _ADAMW_BUGS.items():  # some mistakes give NaN: compare those too
        wrong = adamw_reference(param, grad, m, v, step, **hyper, **planted)
        if all(_same(a, b) for a, b in zip(got, wrong, strict=True)):
            raise Fail(message)
    for t, n in zip(got, names, strict=True):
        expect_tensor(t, f"{what}: {n}", shape=param.shape)  # NaN or inf: say so
    names = [
        n for n, a, b in zip(("param", "m", "v"), got, expected, strict=True) if not close(a, b)
    ]
    raise Fail(f"{what}: the new {' and '.join(names)} differ from AdamW's update")


def _adamw_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    _adamw_case(fn, step=1, seed=1, timeout=timeout)
    _adamw_case(fn, step=7, seed=2, timeout=timeout)
    return "decoupled weight decay, both moments, bias correction and eps as torch.optim.AdamW"


def check_adamw_step(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(param, grad, m, v, step, lr, betas, eps, weight_decay)``, one AdamW step."""
    return run_check("adamw_step", lambda: _adamw_steps(fn, timeout))


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
