"""Lesson 04's checks (residuals and LayerNorm): planted bugs are named,
other correct implementations pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from check_helpers import planted_bug_tests

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

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)


def test_the_library_layer_norm_passes():
    def library_layer_norm(x, w, b, eps=1e-5):
        norm = LayerNorm(x.shape[-1], eps)
        with torch.no_grad():
            norm.weight.copy_(w)
            norm.bias.copy_(b)
        return norm(x)

    assert checks.check_layer_norm(library_layer_norm).passed
