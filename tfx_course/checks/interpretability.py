"""Checks for lesson 11 (interpretability): switching a head off, attention rollout, integrated
gradients.

Shapes: B batch, H heads, T queries, S keys, C = d_model, D = d_head = C // H, L layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from tfx_course.attention import (
    MultiHeadAttention,
    merge_heads,
    padding_mask,
    scaled_dot_product_attention,
    split_heads,
)
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
from tfx_course.interpret import attention_rollout, head_mask, integrated_gradients
from tfx_course.validation import shape_str

__all__ = [
    "check_mask_head",
    "check_attention_rollout",
    "check_integrated_gradients",
]


# --- switching one head off -----------------------------------------------------------------


def _heads(attn: MultiHeadAttention, query: Tensor, key: Tensor, value: Tensor, mask: Tensor):
    """Each head's output, (B, H, T, D), as the module computes it before out_proj."""
    q = split_heads(attn.q_proj(query), attn.n_heads)  # (B, H, T, D)
    k, v = attn.project_kv(key, value)  # (B, H, S, D)
    return scaled_dot_product_attention(q, k, v, mask)[0]  # (B, H, T, D)


def _mask_head_mistakes(attn: MultiHeadAttention, args: tuple, head: int) -> dict:
    """Planted mistakes: message -> the output that mistake gives."""
    query, key, value, mask = args
    H, D = attn.n_heads, attn.d_head
    heads = _heads(attn, *args)  # (B, H, T, D)
    full = attn.out_proj(merge_heads(heads))  # (B, T, C)
    others = [h for h in range(H) if h != head]
    features = torch.ones(H * D)
    features[head::H] = 0  # every H-th feature: heads read as (D, H) instead of (H, D)

    def without(scale: float = 1.0, bias: bool = True) -> Tensor:
        kept = heads.clone()
        kept[:, head] = 0
        out = merge_heads(kept) @ attn.out_proj.weight.T * scale  # (B, T, C)
        return out + attn.out_proj.bias if bias else out

    def uniform_head() -> Tensor:  # a zero query: every score equal, softmax uniform
        q = split_heads(attn.q_proj(query), H)
        q[:, head] = 0
        k, v = attn.project_kv(key, value)
        return attn.out_proj(merge_heads(scaled_dot_product_attention(q, k, v, mask)[0]))

    def columns_after_out_proj() -> Tensor:
        out = full.clone()
        out[..., head * D : (head + 1) * D] = 0
        return out

    return {
        "nothing was switched off: the output equals the full module's": lambda: full,
        "the head's query was zeroed: all its scores become equal and the softmax spreads its "
        "attention evenly; the head still answers. Zero its output (B, H, T, D)[:, h] before "
        "out_proj instead": uniform_head,
        "features h*D:(h+1)*D of the output were zeroed after out_proj; out_proj mixes all "
        "heads into every feature, so zero the head's output before it": columns_after_out_proj,
        f"out_proj's bias is missing: switching a head off removes only its share of the "
        f"matrix product (head {head} owns columns {head * D}..{(head + 1) * D - 1} of "
        f"out_proj.weight); the bias stays": lambda: without(bias=False),
        f"the other heads were scaled up by H / (H - 1) = {H / (H - 1):.3g}, as dropout does "
        "in training: a switched-off head is simply absent": lambda: without(H / (H - 1)),
        "every H-th feature was zeroed (h, h + H, h + 2H, ...): a head's D features are "
        "contiguous, h*D:(h+1)*D, as split_heads makes them": lambda: attn.out_proj(
            merge_heads(heads) * features
        ),
        **{
            f"head {other} was switched off instead of head {head}: head h is index h of the "
            "(B, H, T, D) heads": (lambda other=other: _reference_without(attn, args, other))
            for other in others
        },
    }


def _reference_without(attn: MultiHeadAttention, args: tuple, head: int) -> Tensor:
    with head_mask(attn, head):
        return attn(*args)[0]  # (B, T, C)


def _mask_head_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    attn = MultiHeadAttention(16, 4).eval()
    with torch.no_grad():
        attn.out_proj.bias.normal_(generator=gen)  # a visible bias: forgetting it shows
    B, T, S, C = 2, 3, 5, 16
    query, memory = torch.randn(B, T, C, generator=gen), torch.randn(B, S, C, generator=gen)
    mask = padding_mask(torch.tensor([[True] * S, [True] * 3 + [False] * 2]))  # (B, 1, 1, S)
    args = (query, memory, memory, mask)
    for head in range(attn.n_heads):
        what = f"attention_without_head(attn, query, key, value, mask, head={head})"
        with torch.no_grad():
            got = call(what, fn, attn, *(a.clone() for a in args), head, timeout=timeout)
            got = expect_tensor(got, f"{what}'s result", shape=(B, T, C))
            if close(got, _reference_without(attn, args, head), atol=1e-5):
                continue
            diagnose(got, _mask_head_mistakes(attn, args, head), atol=1e-5)
            expected = _reference_without(attn, args, head)
        raise Fail(
            f"{what} differs from the module with head {head} zeroed before out_proj (largest "
            f"difference {max_gap(got, expected):.3g})"
        )
    return "each of 4 heads zeroed before out_proj, the other heads and the bias kept, with padding"


def check_mask_head(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(attn, query, key, value, mask, head)``: the output with one head switched off."""
    return run_check("mask_head", lambda: _mask_head_steps(fn, timeout))


# --- attention rollout ------------------------------------------------------------------------


def _rollout_mistakes(weights: list[Tensor]) -> dict:
    eye = torch.eye(weights[0].shape[-1])

    def product(layers: list[Tensor], reverse: bool = False) -> Tensor:
        out = layers[0]
        for a in layers[1:]:
            out = out @ a if reverse else a @ out
        return out

    mean = [w.mean(dim=1) for w in weights]  # (B, S, S) each
    mixed = [0.5 * eye + 0.5 * a for a in mean]
    return {
        "no identity for the residual connection: each layer's matrix is 0.5 * I + 0.5 * A, "
        "because every layer adds its attention to what it received": lambda: product(mean),
        f"rows sum to 2^L = {2 ** len(weights)}: A + I has rows summing to 2; divide by 2 (or "
        "renormalise each row) before multiplying": lambda: product([eye + a for a in mean]),
        "multiplied in the wrong order: layer l's matrix goes on the left, "
        "rollout = A'_L @ ... @ A'_1": lambda: product(mixed, reverse=True),
        "the result is transposed: row i (a position) should sum to 1 over the input "
        "tokens j": lambda: product(mixed).transpose(-2, -1),
        "only the last layer was used: roll out through every layer": lambda: mixed[-1],
        "heads combined by max: average them (mean over dim=1)": lambda: product(
            [0.5 * eye + 0.5 * w.amax(dim=1) for w in weights]
        ),
        "the heads were summed: average them (mean over dim=1), so each row still sums "
        "to 1": lambda: product([0.5 * eye + 0.5 * w.sum(dim=1) for w in weights]),
        "only head 0 was used: average the heads (mean over dim=1)": lambda: product(
            [0.5 * eye + 0.5 * w[:, 0] for w in weights]
        ),
    }


def _rollout_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    gen = torch.Generator().manual_seed(5)
    for B, H, S, L in ((2, 4, 5, 3), (1, 2, 4, 2)):
        weights = [torch.randn(B, H, S, S, generator=gen).softmax(dim=-1) for _ in range(L)]
        what = f"rollout(weights) for {L} layers of shape {shape_str(weights[0])}"
        got = call(what, fn, [w.clone() for w in weights], timeout=timeout)
        got = expect_tensor(got, f"{what}'s result", shape=(B, S, S))
        if close(got, attention_rollout(weights), atol=1e-5):
            continue
        diagnose(got, _rollout_mistakes(weights), atol=1e-5)
        rows = got.sum(dim=-1)
        if not close(rows, torch.ones(B, S), atol=1e-4):
            raise Fail(
                f"{what}: rows should sum to 1 (each a distribution over the input tokens), "
                f"they sum to {rows.min():.3g}..{rows.max():.3g}"
            )
        raise Fail(
            f"{what} differs from the rollout A'_L @ ... @ A'_1 with A'_l = 0.5 * I + 0.5 * "
            f"mean over heads (largest difference {max_gap(got, attention_rollout(weights)):.3g})"
        )
    return "rows sum to 1, identity for the residual, heads averaged, layers multiplied in order"


def check_attention_rollout(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(weights)``: rollout of a list of (B, H, S, S) weights, residual 0.5."""
    return run_check("attention_rollout", lambda: _rollout_steps(fn, timeout))


# --- integrated gradients ---------------------------------------------------------------------

_STEPS = 64  # the learner's function is called with this many steps
_RTOL = 0.04  # any Riemann rule (left, right, midpoint, trapezoid) is this close at 64 steps


def _ig_functions(gen: torch.Generator) -> list[tuple[str, Callable[[Tensor], Tensor]]]:
    w = torch.randn(5, generator=gen)
    a = torch.randn(5, 3, generator=gen)

    def quadratic(z: Tensor) -> Tensor:
        return (w * z**2).sum(dim=-1)  # (N,)

    def sigmoid_mix(z: Tensor) -> Tensor:
        return torch.sigmoid(z @ a).sum(dim=-1) + (z[:, :2] ** 3).sum(dim=-1)  # (N,)

    return [("f(x) = sum(w * x**2)", quadratic), ("a sigmoid and a cube", sigmoid_mix)]


def _ig_mistakes(f: Callable, x: Tensor, x0: Tensor) -> dict:
    def grad_at(z: Tensor) -> Tensor:
        z = z.detach().requires_grad_(True)
        return torch.autograd.grad(f(z).sum(), z)[0]

    def mean_grad() -> Tensor:  # the average gradient along the path, at 256 midpoints
        alphas = (torch.arange(256) + 0.5) / 256
        return torch.stack([grad_at(x0 + a * (x - x0)) for a in alphas]).mean(dim=0)

    return {
        "this is input x gradient, the gradient at the input only: integrated gradients "
        "averages the gradient along the path from the baseline": lambda: x * grad_at(x),
        "(x - baseline) * gradient at the input: average the gradients at points along the "
        "path, not just at its end": lambda: (x - x0) * grad_at(x),
        "the average gradient is not multiplied by (inputs - baseline)": mean_grad,
        "multiplied by the inputs instead of (inputs - baseline)": lambda: x * mean_grad(),
        "the sign is flipped: multiply by (inputs - baseline), not (baseline - inputs)": lambda: (
            -integrated_gradients(f, x, x0, steps=256)
        ),
        f"summed the gradients over the {_STEPS} steps instead of averaging them (or "
        "forgot the step size 1/steps)": lambda: _STEPS * integrated_gradients(f, x, x0, steps=256),
        "the gradient was taken at the baseline only: average it over points between the "
        "baseline and the inputs": lambda: (x - x0) * grad_at(x0),
    }


def _ig_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    gen = torch.Generator().manual_seed(3)
    for name, f in _ig_functions(gen):
        x = torch.randn(3, 5, generator=gen)
        x0 = 0.5 * torch.randn(3, 5, generator=gen)  # a baseline that is not zero
        what = f"integrated_gradients(forward, inputs, baseline, steps={_STEPS}) for {name}"
        got = call(what, fn, f, x.clone(), x0.clone(), _STEPS, timeout=timeout)
        got = expect_tensor(got, f"{what}'s result", shape=tuple(x.shape))
        expected = integrated_gradients(f, x, x0, steps=1024)  # within 1e-6 of the integral
        scale = expected.abs().max().item()
        if close(got, expected, atol=_RTOL * scale, rtol=0):
            continue
        diagnose(got, _ig_mistakes(f, x, x0), atol=_RTOL * scale, rtol=0)
        with torch.no_grad():
            change = f(x) - f(x0)  # (B,)
        raise Fail(
            f"{what}: the attributions of each row should add up to forward(inputs) - "
            f"forward(baseline) (completeness): expected {change.tolist()[0]:.4f} for row 0, "
            f"yours add up to {got.sum(dim=-1).tolist()[0]:.4f}"
        )
    return (
        "matches the path integral for two functions with a non-zero baseline; each row "
        "adds up to forward(inputs) - forward(baseline)"
    )


def check_integrated_gradients(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(forward, inputs, baseline, steps)``: integrated gradients, any Riemann rule."""
    return run_check("integrated_gradients", lambda: _ig_steps(fn, timeout))
