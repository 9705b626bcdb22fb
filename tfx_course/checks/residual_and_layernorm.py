"""Checks for lesson 04 (residuals and LayerNorm): LayerNorm, Pre-LN and Post-LN sublayers, and
ReZero's gated residual without a norm.

Shapes: B batch, T positions, C = d_model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfx_course.checks.core import (
    CheckResult,
    Fail,
    call,
    close,
    diagnose,
    expect_tensor,
    max_gap,
    run_check,
)
from tfx_course.layers import (
    LayerNorm,
)

__all__ = [
    "check_layer_norm",
    "check_pre_ln_residual",
    "check_post_ln_residual",
    "check_rezero_residual",
]


# --- LayerNorm ----------------------------------------------------------------------


def _layer_norm_inputs() -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, generator=gen) * 3 + 1
    x[0, 1] = x[0, 1] * 1e-3  # variance ~1e-5, as large as eps: shows where eps goes
    x[1, 2] = 0.5  # a constant row: variance 0
    weight = 1 + 0.5 * torch.randn(8, generator=gen)
    bias = 0.5 * torch.randn(8, generator=gen)
    return x, weight, bias


def _layer_norm_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    x, weight, bias = _layer_norm_inputs()
    eps = 1e-5
    got = call(
        "layer_norm(x, weight, bias)", fn, x.clone(), weight.clone(), bias.clone(), timeout=timeout
    )
    if isinstance(got, Tensor) and not torch.isfinite(got).all():
        raise Fail(
            "NaN or inf for a row whose values are all equal (variance 0): add eps inside the "
            "square root, sqrt(var + eps)"
        )
    got = expect_tensor(got, "the result", dtype=x.dtype, shape=x.shape)
    expected = F.layer_norm(x, (8,), weight, bias, eps)
    if close(got, expected, atol=1e-4):
        return "biased variance over the last axis, eps inside the square root, weight and bias"
    mean = x.mean(-1, keepdim=True)

    def normed(var: Tensor, axis_mean: Tensor = mean) -> Tensor:
        return (x - axis_mean) / torch.sqrt(var + eps)

    biased = x.var(-1, correction=0, keepdim=True)
    mistakes = {
        "unbiased variance (divides by C - 1); LayerNorm divides by C: use "
        "var(dim=-1, correction=0) or ((x - mean)**2).mean(-1)": lambda: (
            normed(x.var(-1, correction=1, keepdim=True)) * weight + bias
        ),
        "eps added outside the square root: divide by sqrt(var + eps), not std + eps": lambda: (
            (x - mean) / (biased.sqrt() + eps) * weight + bias
        ),
        "weight and bias are not applied: return x_hat * weight + bias": lambda: normed(biased),
        "weight and bias swapped: x_hat * weight + bias": lambda: normed(biased) * bias + weight,
        "normalised over the wrong axis: use the last axis (each position's features), "
        "dim=-1": lambda: (
            F.layer_norm(x.transpose(-2, -1), (4,), None, None, eps).transpose(-2, -1) * weight
            + bias
        ),
        "normalised over the batch axis (dim=0): LayerNorm normalises each position's own "
        "features, the last axis (dim=-1); across the batch is BatchNorm": lambda: (
            normed(x.var(0, correction=0, keepdim=True), x.mean(0, keepdim=True)) * weight + bias
        ),
        "divided by the variance: divide by the standard deviation, torch.sqrt(var + eps)": lambda: (
            (x - mean) / (biased + eps) * weight + bias
        ),
    }
    diagnose(got, mistakes, atol=1e-4)
    raise Fail(f"the result differs from nn.LayerNorm by up to {max_gap(got, expected):.3g}")


def check_layer_norm(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(x, weight, bias, eps=1e-5)`` against ``F.layer_norm`` over the last axis."""
    return run_check("layer_norm", lambda: _layer_norm_steps(fn, timeout))


# --- residual sublayers -------------------------------------------------------------


def _sublayer_parts() -> tuple[Tensor, nn.Module, nn.Module]:
    gen = torch.Generator().manual_seed(0)
    C = 16
    linear = nn.Linear(C, C)
    norm = LayerNorm(C)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(C, C, generator=gen) / math.sqrt(C))
        linear.bias.copy_(0.1 * torch.randn(C, generator=gen))
        norm.weight.copy_(1 + 0.3 * torch.randn(C, generator=gen))
        norm.bias.copy_(0.3 * torch.randn(C, generator=gen))
    sublayer = nn.Sequential(linear, nn.Tanh())
    return 2 * torch.randn(2, 5, C, generator=gen) + 1, sublayer, norm


def _residual_steps(fn: Callable[..., Any], pre: bool, timeout: float | None) -> str:
    x, f, norm = _sublayer_parts()
    name = "pre_ln_residual" if pre else "post_ln_residual"
    with torch.no_grad():
        got = call(f"{name}(x, sublayer, norm)", fn, x.clone(), f, norm, timeout=timeout)
        got = expect_tensor(got, "the result", dtype=x.dtype, shape=x.shape)
        pre_ln, post_ln = x + f(norm(x)), norm(x + f(x))
        expected = pre_ln if pre else post_ln
        if close(got, expected):
            formula = "x + sublayer(norm(x))" if pre else "norm(x + sublayer(x))"
            return f"{formula}, with the residual and the norm in place"
        mistakes = {
            "this is Pre-LN, x + sublayer(norm(x)); Post-LN adds first, then normalises: "
            "norm(x + sublayer(x))": lambda: pre_ln,
            "this is Post-LN, norm(x + sublayer(x)); Pre-LN normalises the sublayer's input: "
            "x + sublayer(norm(x))": lambda: post_ln,
            "the residual is missing: add the input x to the sublayer's output": lambda: (
                f(norm(x)) if pre else norm(f(x))
            ),
            "the residual adds norm(x); add the raw input x": lambda: norm(x) + f(norm(x)),
            "the residual is added twice: add the input x once, "
            + ("x + sublayer(norm(x))" if pre else "norm(x + sublayer(x))"): lambda: (
                2 * x + f(norm(x)) if pre else norm(2 * x + f(x))
            ),
            "the residual is added again after the norm: Post-LN returns norm(x + sublayer(x)) "
            "as it is": lambda: x + norm(x + f(x)),
            "the norm is missing": lambda: x + f(x),
            "the norm is applied to the sublayer's output; "
            + ("Pre-LN normalises its input" if pre else "Post-LN normalises the sum"): lambda: (
                x + norm(f(x))
            ),
        }
        diagnose(got, mistakes)
    raise Fail(f"the result differs from the reference by up to {max_gap(got, expected):.3g}")


def check_pre_ln_residual(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(x, sublayer, norm) -> x + sublayer(norm(x))`` (Pre-LN)."""
    return run_check("pre_ln_residual", lambda: _residual_steps(fn, True, timeout))


def check_post_ln_residual(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(x, sublayer, norm) -> norm(x + sublayer(x))`` (Post-LN)."""
    return run_check("post_ln_residual", lambda: _residual_steps(fn, False, timeout))


# --- ReZero: a residual with a learned gate that starts at 0 (transfer) ------------------


def _rezero_alpha(module: nn.Module) -> Tensor:
    """Return the module's ``alpha`` if it is a trainable scalar starting at 0, else ``Fail``."""
    alpha = getattr(module, "alpha", None)
    if alpha is None:
        raise Fail("the module has no attribute alpha: store the gate as self.alpha")
    if not isinstance(alpha, nn.Parameter):
        raise Fail(f"alpha is a {type(alpha).__name__}, not an nn.Parameter: wrap it, "
                   "nn.Parameter(torch.zeros(())), so that it is trained with the rest")  # fmt: skip
    if alpha.numel() != 1:
        raise Fail(f"alpha has {alpha.numel()} entries: ReZero gates each residual connection with "
                   "one number, shape () or (1,) (a gate per feature is another method)")  # fmt: skip
    if alpha.item() != 0:
        raise Fail(f"alpha starts at {alpha.item():g}; it must start at 0, so that the layer is the "
                   "identity when training begins")  # fmt: skip
    own = {id(p) for p in module.parameters()} - {id(alpha)}
    if own - {id(p) for p in module.sublayer.parameters()}:
        raise Fail("the module has parameters besides alpha and the sublayer's: ReZero has no "
                   "norm, x + alpha * sublayer(x)")  # fmt: skip
    return alpha


def _rezero_mistakes(x: Tensor, f: nn.Module, alpha: float) -> dict[str, Callable[[], Tensor]]:
    return {
        "the sublayer's output is not multiplied by alpha: x + alpha * sublayer(x)": lambda: (
            x + f(x)
        ),
        "alpha scales the sublayer's input; it scales its output, x + alpha * sublayer(x)": lambda: (
            x + f(alpha * x)
        ),
        "alpha scales the residual too: the residual path carries x untouched, "
        "x + alpha * sublayer(x), not alpha * (x + sublayer(x))": lambda: alpha * (x + f(x)),
        "ReZero has no norm: x + alpha * sublayer(x)": lambda: (
            x + alpha * f(F.layer_norm(x, x.shape[-1:]))
        ),
    }


def _rezero_steps(factory: Callable[..., Any], timeout: float | None) -> str:
    x, f, _ = _sublayer_parts()
    name = getattr(factory, "__name__", "ReZero")
    module = call(f"{name}(sublayer)", factory, f, timeout=timeout)
    if not isinstance(module, nn.Module):
        raise Fail(f"{name}(sublayer) gave {type(module).__name__}, not an nn.Module")
    if getattr(module, "sublayer", None) is not f:
        raise Fail(f"{name}(sublayer) must keep the sublayer it is given as self.sublayer")
    alpha = _rezero_alpha(module)
    out = expect_tensor(call("forward(x)", module, x.clone(), timeout=timeout), "the output", shape=x.shape)  # fmt: skip
    with torch.no_grad():
        if not close(out, x, atol=0):
            diagnose(out, _rezero_mistakes(x, f, 0.0))
            raise Fail("with alpha = 0 the layer must return x unchanged (the identity)")
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    (call("forward(x)", module, x.clone(), timeout=timeout) * weight).sum().backward()
    if alpha.grad is None or alpha.grad.abs().sum() == 0:
        raise Fail("no gradient reaches alpha: use self.alpha itself in forward (not alpha.item(), "
                   "a detached copy or a float), so that the optimizer can move it from 0")  # fmt: skip
    with torch.no_grad():
        alpha.fill_(0.7)
        out = expect_tensor(call("forward(x) with alpha = 0.7", module, x.clone(), timeout=timeout), "the output", shape=x.shape)  # fmt: skip
        expected = x + 0.7 * f(x)
        if not close(out, expected):
            diagnose(out, _rezero_mistakes(x, f, 0.7))
            raise Fail(f"with alpha = 0.7 the output differs from x + alpha * sublayer(x) by up to "
                       f"{max_gap(out, expected):.3g}")  # fmt: skip
    return (
        "alpha is a trainable scalar starting at 0: the identity at initialisation, the gradient "
        "reaches alpha, and x + alpha * sublayer(x) once it has moved"
    )


def check_rezero_residual(factory: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check a ReZero module built as ``factory(sublayer)``: ``x + alpha * sublayer(x)``, alpha = 0."""
    return run_check("rezero_residual", lambda: _rezero_steps(factory, timeout))
