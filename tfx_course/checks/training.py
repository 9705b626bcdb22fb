"""Checks for training (lesson 09): label smoothing, clipping by the global gradient norm,
one AdamW step, and an exponential moving average of the weights.

Shapes: B batch, T target length, V vocabulary size.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_avg_fn

from tfx_course.checks.core import (
    CheckResult,
    Fail,
    call,
    close,
    expect_tensor,
    is_float,
    run_check,
)
from tfx_course.validation import shape_str

__all__ = [
    "adamw_reference",
    "check_label_smoothing",
    "check_clip_grad_norm",
    "check_adamw_step",
    "check_ema_update",
]


# --- label smoothing ----------------------------------------------------------------


def _smoothing_variants(logits: Tensor, targets: Tensor, eps: float, pad: int) -> dict[str, Tensor]:
    V = logits.shape[-1]
    logp = logits.log_softmax(-1)  # (B, T, V)
    keep = targets != pad  # (B, T)
    nll = -logp.gather(-1, targets[..., None]).squeeze(-1)  # (B, T)
    uniform = -logp.mean(-1)  # (B, T)
    per_token = (1 - eps) * nll + eps * uniform
    others = (-logp.sum(-1) - nll) / (V - 1)  # mean loss over the V - 1 wrong classes
    q = (1 - eps) * F.one_hot(targets, V) + eps / V  # (B, T, V) smoothed target distribution

    def mean(per: Tensor) -> Tensor:
        return (per * keep).sum() / keep.sum()

    flat = (logits.reshape(-1, V), targets.reshape(-1))
    return {
        "padded positions count in the loss: skip the positions where targets == pad_id "
        "(F.cross_entropy's ignore_index)": F.cross_entropy(*flat, label_smoothing=eps),
        "averaged over all B*T positions; divide by the number of real (non-pad) tokens": (
            per_token * keep
        ).sum()
        / keep.numel(),
        "returned the sum over tokens; average over the real tokens": (per_token * keep).sum(),
        "smoothing is ignored: mix (1 - smoothing) * the target's loss with smoothing * the "
        "loss against the uniform distribution": mean(nll),
        "the target's weight must be 1 - smoothing, not 1": mean(nll + eps * uniform),
        "smoothing spread over the V - 1 other classes; like PyTorch, give every class "
        "smoothing / V, the target included": mean((1 - eps) * nll + eps * others),
        "used probabilities where the loss needs log-probabilities: use log_softmax": mean(
            -(q * logits.softmax(-1)).sum(-1)
        ),
        "used the raw logits: take log_softmax(logits, dim=-1) first": mean(-(q * logits).sum(-1)),
        "smoothing is applied twice: mix the one-hot target with the uniform distribution "
        "once, (1 - smoothing) * one_hot + smoothing / V": mean(
            (1 - eps) ** 2 * nll + (1 - (1 - eps) ** 2) * uniform
        ),
        "the pad column is left out of the smoothing: like PyTorch, give every class "
        "smoothing / V, the pad id included; skip padded positions, not the pad class": mean(
            (1 - eps) * nll + eps * (-logp.sum(-1) + logp[..., pad]) / (V - 1)
        ),
        "the pad column (and the target) are left out of the smoothing: like PyTorch, give "
        "every class smoothing / V, and the target 1 - smoothing on top": mean(
            (1 - eps) * nll + eps * (-logp.sum(-1) + logp[..., pad] - nll) / (V - 2)
        ),
    }


def _smoothing_case(fn: Callable[..., Any], eps: float, pad: int, timeout: float | None) -> None:
    gen = torch.Generator().manual_seed(int(eps * 100) + pad)
    V = 7
    logits = 2 * torch.randn(2, 5, V, generator=gen)
    targets = torch.randint(0, V, (2, 5), generator=gen)
    targets[targets == pad] = (pad + 1) % V  # real tokens are never pad...
    targets[1, 3:] = pad  # ...except the padding at the end of sequence 2
    if pad != 0:
        targets[0, 0] = 0  # a real token 0 tells "ignores pad_id" from "ignores 0"
    given = logits.clone().requires_grad_(True)
    what = f"label_smoothed_cross_entropy(logits, targets, smoothing={eps}, pad_id={pad})"
    got = call(what, fn, given, targets.clone(), eps, pad, timeout=timeout)
    if not isinstance(got, Tensor) and is_float(got):
        raise Fail("returned a Python number; return the loss tensor so that loss.backward() works")
    if not isinstance(got, Tensor) or got.numel() != 1:
        shape = shape_str(got) if isinstance(got, Tensor) else type(got).__name__
        raise Fail(f"{what} returned {shape}; return a scalar tensor (one number, the mean loss)")
    if not torch.isfinite(got).all():
        raise Fail(
            f"{what} is NaN or inf: use log_softmax, and divide by the number of real tokens"
        )
    if not got.requires_grad:
        raise Fail("the loss carries no gradient: compute it with tensor operations, no .item()")
    expected = F.cross_entropy(
        logits.reshape(-1, V), targets.reshape(-1), label_smoothing=eps, ignore_index=pad
    )
    got = got.detach().reshape(())
    if close(got, expected):
        return
    if pad != 0 and close(
        got,
        F.cross_entropy(
            logits.reshape(-1, V), targets.reshape(-1), label_smoothing=eps, ignore_index=0
        ),
    ):
        raise Fail(f"with pad_id={pad} you ignored token 0: use the pad_id argument")
    for message, wrong in _smoothing_variants(logits, targets, eps, pad).items():
        if close(got, wrong):
            raise Fail(message)
    raise Fail(
        f"{what} = {got.item():.4f}, expected {expected.item():.4f} (F.cross_entropy with label_smoothing)"
    )


def _smoothing_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    for eps, pad in ((0.1, 0), (0.0, 0), (0.3, 3)):
        _smoothing_case(fn, eps, pad, timeout)
    return (
        "equals F.cross_entropy(label_smoothing=..., ignore_index=pad_id) for three settings, "
        "and the loss carries a gradient"
    )


def check_label_smoothing(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(logits, targets, smoothing, pad_id) -> loss``, label-smoothed cross-entropy."""
    return run_check("label_smoothing", lambda: _smoothing_steps(fn, timeout))


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


# --- an exponential moving average of the weights (transfer) --------------------------------


def _ema_models() -> tuple[nn.Module, nn.Module]:
    """A small model and its EMA copy (made with deepcopy, so its parameters require grad)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    return model, copy.deepcopy(model)


def _ema_mistakes(before: list[Tensor], params: list[Tensor], decay: float) -> dict[str, list[Tensor]]:  # fmt: skip
    mixed = [decay * e + (1 - decay) * p for e, p in zip(before, params, strict=True)]
    return {
        "the EMA did not change: update its parameters in place (ema_p.mul_(decay).add_(p, "
        "alpha=1 - decay), or lerp_ or copy_); assigning to a loop variable changes nothing": before,
        "decay and 1 - decay are swapped: decay weighs the running average, "
        "decay * ema + (1 - decay) * param": [
            (1 - decay) * e + decay * p for e, p in zip(before, params, strict=True)
        ],  # fmt: skip
        "the EMA was overwritten with the model's weights: mix them, decay * ema + (1 - decay) * "
        "param": params,
        "only the first parameter was updated: loop over every pair of parameters (a return "
        "inside the loop?)": [mixed[0], *before[1:]],
    }


def _ema_step(fn: Callable[..., Any], models: tuple[nn.Module, nn.Module], decay: float, timeout: float | None) -> None:  # fmt: skip
    model, ema = models
    params, own = [p.detach().clone() for p in model.parameters()], list(ema.parameters())
    before = [p.detach().clone() for p in own]
    what = f"ema_update(ema_model, model, decay={decay})"
    try:
        result = call(what, fn, ema, model, decay, timeout=timeout)
    except Fail as failure:
        if "leaf Variable that requires grad" in str(failure):
            raise Fail(f"{what}: an in-place update of a parameter that requires grad must not be "
                       "recorded by autograd: do it under torch.no_grad()") from None  # fmt: skip
        raise
    if result is not ema:
        raise Fail(f"{what} returned {type(result).__name__}: update ema_model in place and return "
                   "it, as in-place methods such as mul_ return their tensor")  # fmt: skip
    if not all(torch.equal(p, q) for p, q in zip(model.parameters(), params, strict=True)):
        raise Fail("the model's weights changed: update only ema_model (the first argument) from "
                   "model; the model is what the optimizer trains")  # fmt: skip
    if [id(p) for p in ema.parameters()] != [id(p) for p in own]:
        raise Fail("the EMA's parameters were replaced by new ones: update them in place, so that "
                   "everything holding them (an optimizer, a state_dict) sees the new values")  # fmt: skip
    if any(p.grad is not None or p.grad_fn is not None for p in ema.parameters()):
        raise Fail("the update was recorded by autograd (or left gradients behind): do it under "
                   "torch.no_grad(), on the parameters themselves")  # fmt: skip
    got = [p.detach() for p in ema.parameters()]
    average = get_ema_avg_fn(decay)  # PyTorch's own EMA: decay * ema + (1 - decay) * param
    expected = [average(e, p, 1) for e, p in zip(before, params, strict=True)]
    if all(close(g, e) for g, e in zip(got, expected, strict=True)):
        return
    for message, wrong in _ema_mistakes(before, params, decay).items():
        if all(close(g, w) for g, w in zip(got, wrong, strict=True)):
            raise Fail(message)
    raise Fail(f"{what}: the EMA's parameters differ from decay * ema + (1 - decay) * param")


def _ema_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    model, ema = _ema_models()
    gen = torch.Generator().manual_seed(5)
    for decay in (0.9, 0.9, 0.5):
        with torch.no_grad():  # a training step moved the model's weights
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
        _ema_step(fn, (model, ema), decay, timeout)
    return (
        "ema = decay * ema + (1 - decay) * param for every parameter, in place and outside "
        "autograd, over three updates, as torch.optim.swa_utils computes it; the model untouched"
    )


def check_ema_update(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(ema_model, model, decay) -> ema_model``, updated in place and outside autograd.

    Every parameter of ``ema_model`` becomes ``decay * ema + (1 - decay) * param``.
    """
    return run_check("ema_update", lambda: _ema_steps(fn, timeout))
