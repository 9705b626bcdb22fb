"""Lesson 04's checks (residuals, LayerNorm and ReZero): planted bugs are named,
other correct implementations pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from check_helpers import bugged, planted_bug_tests
from torch import nn

from tfx_course import checks
from tfx_course.layers import LayerNorm


def _ln(x, w, b, eps=1e-5, *, correction=0, eps_outside=False, affine=True, dim=-1):
    mean = x.mean(dim, keepdim=True)
    var = x.var(dim, correction=correction, keepdim=True)
    x_hat = (x - mean) / (var.sqrt() + eps) if eps_outside else (x - mean) / torch.sqrt(var + eps)
    return x_hat * w + b if affine else x_hat


def _ln_no_eps(x, w, b, eps=1e-5):
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, correction=0, keepdim=True) * w + b


def _ln_manual(x, w, b, eps=1e-5):
    centred = x - x.mean(dim=-1, keepdim=True)
    return centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps) * w + b


def _ln_var_mean(x, w, b, eps=1e-5):
    var, mean = torch.var_mean(x, dim=-1, unbiased=False, keepdim=True)
    return torch.addcmul(b, (x - mean) / (var + eps).sqrt(), w)


def _ln_batch_axis(x, w, b, eps=1e-5):
    return _ln(x, w, b, eps, dim=0)


def _ln_no_sqrt(x, w, b, eps=1e-5):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, correction=0, keepdim=True)
    return (x - mean) / (var + eps) * w + b


BUGS = {
    "layer_norm": [
        (_ln_batch_axis, "over the batch axis (dim=0)"),
        (_ln_no_sqrt, "divided by the variance"),
        (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, correction=1), "unbiased variance"),
        (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, eps_outside=True), "outside the square root"),
        (
            lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, affine=False),
            "weight and bias are not applied",
        ),
        (lambda x, w, b, eps=1e-5: _ln(x, b, w, eps), "weight and bias swapped"),
        (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, dim=-2), "wrong axis"),
        (_ln_no_eps, "variance 0"),
    ],
    "pre_ln_residual": [
        (lambda x, f, n: x + x + f(n(x)), "the residual is added twice"),
        (lambda x, f, n: n(x + f(x)), "this is Post-LN"),
        (lambda x, f, n: f(n(x)), "the residual is missing"),
        (lambda x, f, n: n(x) + f(n(x)), "add the raw input x"),
        (lambda x, f, n: x + f(x), "the norm is missing"),
        (lambda x, f, n: x + n(f(x)), "applied to the sublayer's output"),
    ],
    "post_ln_residual": [
        (lambda x, f, n: n(x + x + f(x)), "the residual is added twice"),
        (lambda x, f, n: x + n(x + f(x)), "added again after the norm"),
        (lambda x, f, n: x + f(n(x)), "this is Pre-LN"),
        (lambda x, f, n: n(f(x)), "the residual is missing"),
        (lambda x, f, n: x + f(x), "the norm is missing"),
        (lambda x, f, n: (x + f(x)).detach().numpy(), "torch.Tensor"),
    ],
}

ALTERNATIVES = {
    "layer_norm": [
        _ln_manual,
        _ln_var_mean,
        lambda x, w, b, eps=1e-5: F.layer_norm(x, x.shape[-1:], w, b, eps),
    ],
    "pre_ln_residual": [lambda x, f, n: f(n(x)) + x, lambda x, f, n: torch.add(x, f(n(x)))],
    "post_ln_residual": [lambda x, f, n: n(f(x) + x)],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}


def test_the_library_layer_norm_passes():
    def library_layer_norm(x, w, b, eps=1e-5):
        norm = LayerNorm(x.shape[-1], eps)
        with torch.no_grad():
            norm.weight.copy_(w)
            norm.bias.copy_(b)
        return norm(x)

    assert checks.check_layer_norm(library_layer_norm).passed


# --- rezero_residual --------------------------------------------------------------------


class _ReZero(nn.Module):
    """ReZero with one planted bug (or none), named by ``bug``."""

    bug = ""

    def __init__(self, sublayer):
        super().__init__()
        self.sublayer = sublayer
        start = {"starts_at_one": torch.ones(()), "per_feature": torch.zeros(16)}
        alpha = start.get(self.bug, torch.zeros(()))
        if self.bug == "plain_tensor":
            self.alpha = alpha
        elif self.bug == "buffer":
            self.register_buffer("alpha", alpha)
        else:
            self.alpha = nn.Parameter(alpha)
        if self.bug == "with_norm":
            self.norm = nn.LayerNorm(16)

    def forward(self, x):
        f, a = self.sublayer, self.alpha
        if self.bug == "detached":
            a = a.item()
        return {
            "ungated": lambda: x + f(x),
            "gates_input": lambda: x + f(a * x),
            "gates_residual": lambda: a * (x + f(x)),
            "norm_inside": lambda: x + a * f(F.layer_norm(x, x.shape[-1:])),
        }.get(self.bug, lambda: x + a * f(x))()


class _ReZeroVector(nn.Module):
    """Correct: alpha of shape (1,), the product written with torch.addcmul."""

    def __init__(self, sublayer):
        super().__init__()
        self.add_module("sublayer", sublayer)
        self.alpha = nn.Parameter(torch.tensor([0.0]))

    def forward(self, x):
        return torch.addcmul(x, self.alpha, self.sublayer(x))


class _ReZeroMul(nn.Module):
    """Correct: the gate applied with Tensor.mul."""

    def __init__(self, sublayer):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(()))
        self.sublayer = sublayer

    def forward(self, x):
        return x + self.sublayer(x).mul(self.alpha)


BUGS["rezero_residual"] = [
    (bugged(_ReZero, "plain_tensor"), "not an nn.Parameter"),
    (bugged(_ReZero, "buffer"), "not an nn.Parameter"),
    (bugged(_ReZero, "starts_at_one"), "it must start at 0"),
    (bugged(_ReZero, "per_feature"), "one number, shape () or (1,)"),
    (bugged(_ReZero, "with_norm"), "parameters besides alpha"),
    (bugged(_ReZero, "ungated"), "not multiplied by alpha"),
    (bugged(_ReZero, "gates_input"), "scales the sublayer's input"),
    (bugged(_ReZero, "gates_residual"), "alpha scales the residual too"),
    (bugged(_ReZero, "norm_inside"), "ReZero has no norm"),
    (bugged(_ReZero, "detached"), "no gradient reaches alpha"),
]
ALTERNATIVES["rezero_residual"] = [_ReZero, _ReZeroVector, _ReZeroMul]
CHECKS["rezero_residual"] = checks.check_rezero_residual

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)
