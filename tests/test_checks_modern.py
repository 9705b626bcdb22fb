"""Lesson 16's checks (modern components): planted bugs are named, other correct versions pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from check_helpers import planted_bug_tests

from tfx_course import checks
from tfx_course.attention import causal_mask
from tfx_course.checks.modern import _rope_variant
from tfx_course.modern import RMSNorm, apply_rope, sliding_window_mask

# --- RoPE: other correct versions ---------------------------------------------------------


def _rope_complex(x, base=10000.0):
    T, D = x.shape[-2:]
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.outer(torch.arange(T, dtype=torch.float64), theta)
    z = torch.view_as_complex(x.double().unflatten(-1, (D // 2, 2)).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).flatten(-2).float()


def _rope_matrix_loop(x, base=10000.0):
    T, D = x.shape[-2:]
    out = torch.empty_like(x)
    for t in range(T):
        for i in range(D // 2):
            a = torch.tensor(t * base ** (-2 * i / D))
            c, s = torch.cos(a), torch.sin(a)
            x0, x1 = x[..., t, 2 * i], x[..., t, 2 * i + 1]
            out[..., t, 2 * i], out[..., t, 2 * i + 1] = x0 * c - x1 * s, x0 * s + x1 * c
    return out


# --- RMSNorm: planted bugs and other correct versions --------------------------------------


def _rms(x, w, eps=1e-6, *, centre=False, eps_out=False, weight=True, dim=-1, total=False):
    if centre:
        x = x - x.mean(dim, keepdim=True)
    ms = x.pow(2).sum(dim, keepdim=True) if total else x.pow(2).mean(dim, keepdim=True)
    y = x / (ms.sqrt() + eps) if eps_out else x / torch.sqrt(ms + eps)
    return y * w if weight else y


def _rms_no_eps(x, w, eps=1e-6):
    return x / x.pow(2).mean(-1, keepdim=True).sqrt() * w


def _rms_std(x, w, eps=1e-6):
    return x / torch.sqrt(x.var(-1, correction=0, keepdim=True) + eps) * w


def _rms_no_sqrt(x, w, eps=1e-6):
    return x / (x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rms_library(x, w, eps=1e-6):
    norm = RMSNorm(x.shape[-1], eps)
    with torch.no_grad():
        norm.weight.copy_(w)
    return norm(x)


# --- the sliding-window mask ---------------------------------------------------------------


def _window(size, window, *, rule):
    t = torch.arange(size)[:, None]
    s = torch.arange(size)[None, :]
    return rule(t - s, window)


BUGS = {
    "apply_rope": [
        (lambda x: _rope_variant(x, "halves"), "rotate half"),
        (lambda x: _rope_variant(x, "not_interleaved"), "back as two halves"),
        (lambda x: _rope_variant(x, "backwards"), "the wrong way"),
        (lambda x: _rope_variant(x, "i_not_2i"), "instead of 2i"),
        (lambda x: _rope_variant(x, "from_one"), "positions start at 1"),
        (lambda x: _rope_variant(x, "cos_only"), "only the cosine"),
        (lambda x: x.clone(), "the result equals x"),
        (lambda x: apply_rope(x).double(), "dtype"),
        (lambda x: apply_rope(x, base=500.0), "differs from RoPE"),
    ],
    "rms_norm": [
        (lambda x, w, eps=1e-6: _rms(x, w, eps, centre=True), "the mean was subtracted"),
        (_rms_std, "standard deviation"),
        (lambda x, w, eps=1e-6: _rms(x, w, eps, eps_out=True), "eps added outside"),
        (lambda x, w, eps=1e-6: _rms(x, w, eps, weight=False), "the weight is not applied"),
        (_rms_no_sqrt, "take its square root"),
        (lambda x, w, eps=1e-6: _rms(x, w, eps, total=True), "summed the squares"),
        (lambda x, w, eps=1e-6: _rms(x, w, eps, dim=-2), "positions axis"),
        (_rms_no_eps, "all-zero row"),
    ],
    "sliding_window_mask": [
        (lambda n, w: ~sliding_window_mask(n, w), "mask inverted"),
        (lambda n, w: sliding_window_mask(n, w).T, "looks forward"),
        (lambda n, w: _window(n, w, rule=lambda b, w: b.abs() < w), "sees the future"),
        (lambda n, w: _window(n, w, rule=lambda b, w: (b >= 0) & (b <= w)), "one key too many"),
        (lambda n, w: _window(n, w, rule=lambda b, w: (b > 0) & (b <= w)), "diagonal must be True"),
        (lambda n, w: causal_mask(n), "no window"),
        (lambda n, w: sliding_window_mask(n, w).float(), "dtype"),
        (lambda n, w: sliding_window_mask(n + 1, w), "shape"),
    ],
}

ALTERNATIVES = {
    "apply_rope": [_rope_complex, _rope_matrix_loop],
    "rms_norm": [
        _rms_library,
        lambda x, w, eps=1e-6: F.rms_norm(x, x.shape[-1:], w, eps),
        lambda x, w, eps=1e-6: x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w,
    ],
    "sliding_window_mask": [
        lambda n, w: (
            torch.ones(n, n, dtype=torch.bool).tril() & ~torch.ones(n, n, dtype=torch.bool).tril(-w)
        ),  # fmt: skip
        lambda n, w: torch.tensor([[0 <= t - s < w for s in range(n)] for t in range(n)]),
    ],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)


def test_the_library_versions_pass():
    assert checks.check_apply_rope(apply_rope).passed
    assert checks.check_sliding_window_mask(sliding_window_mask).passed


def test_an_unstarted_exercise_is_not_attempted():
    def unstarted(*args):
        raise NotImplementedError("exercise 'apply_rope': write your code here")

    assert "not attempted yet" in checks.check_apply_rope(unstarted).message
