"""Checks for lesson 13 (Transformer vs RNN and CNN): one attention step of the LSTM decoder,
and the path-length measurement.

Shapes: B batch, S source length, C = d_model, T sequence length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from tfx_course.baselines import gradient_reach, luong_attention, probe_stack
from tfx_course.checks.core import (
    CheckResult,
    Fail,
    call,
    close,
    diagnose,
    expect_pair,
    expect_tensor,
    max_gap,
    run_check,
)
from tfx_course.validation import shape_str

__all__ = ["check_rnn_attention_step", "check_gradient_reach"]


# --- one attention step of the LSTM decoder ----------------------------------------------


def _attention_inputs(B: int, S: int, C: int, seed: int) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    h, memory = torch.randn(B, C, generator=gen), torch.randn(B, S, C, generator=gen)
    W_a = torch.randn(C, C, generator=gen) / math.sqrt(C)  # not symmetric: W_a.T is a bug
    W_c = torch.randn(C, 2 * C, generator=gen) / math.sqrt(2 * C)
    lengths = torch.arange(S, S - B, -1).clamp(min=1)  # (B,): the first row has no padding
    keep = torch.arange(S)[None, :] < lengths[:, None]  # (B, S)
    return h, memory, keep, W_a, W_c


def _softmax(scores: Tensor, keep: Tensor, dim: int = -1) -> Tensor:
    return scores.masked_fill(~keep, float("-inf")).softmax(dim=dim)


def _weight_mistakes(h, memory, keep, W_a) -> dict[str, Callable[[], Tensor]]:
    C = h.shape[-1]
    scores = torch.einsum("bc,cd,bsd->bs", h, W_a, memory)  # (B, S): h^T W_a h_s
    return {
        "the score is h_t^T W_a h_s: you used W_a transposed (score h_t^T W_a^T h_s); with "
        "keys = memory @ W_a.T the scores are keys @ h_t": lambda: _softmax(
            torch.einsum("bc,dc,bsd->bs", h, W_a, memory), keep
        ),
        "the scores are divided by sqrt(d): that is the Transformer's scaling; Luong's general "
        "score has none": lambda: _softmax(scores / math.sqrt(C), keep),
        "W_a is missing: h_t . h_s is Luong's 'dot' score; the 'general' score is "
        "h_t^T W_a h_s": lambda: _softmax(torch.einsum("bc,bsc->bs", h, memory), keep),
        "softmax over the wrong axis: normalise each row over the source positions (dim=-1)": (
            lambda: _softmax(scores, keep, dim=0)
        ),
        "padded source positions got attention weight: fill their scores with "
        "torch.finfo(scores.dtype).min before the softmax": lambda: scores.softmax(dim=-1),
        "these are the scores, not the weights: apply the softmax": lambda: scores,
    }


def _out_mistakes(h, memory, keep, W_a, weights, W_c) -> dict[str, Callable[[], Tensor]]:
    context = torch.einsum("bs,bsc->bc", weights, memory)  # (B, C)
    scores = torch.einsum("bc,cd,bsd->bs", h, W_a, memory).masked_fill(~keep, 0.0)  # (B, S)

    def state(c: Tensor) -> Tensor:
        return torch.tanh(torch.cat([c, h], dim=-1) @ W_c.T)

    return {
        "the concatenation is [c_t; h_t], context first: you put h_t first": lambda: torch.tanh(
            torch.cat([h, context], dim=-1) @ W_c.T
        ),
        "tanh is missing: h~_t = tanh(W_c [c_t; h_t])": lambda: torch.cat([context, h], -1) @ W_c.T,
        "you returned the context c_t; return the attentional state tanh(W_c [c_t; h_t])": (
            lambda: context
        ),
        "the context averages the memory with the scores; use the softmax weights": lambda: state(
            torch.einsum("bs,bsc->bc", scores, memory)
        ),
        "the context ignores the weights (a plain mean of the memory): c_t = sum_s a_t(s) h_s": (
            lambda: state((memory * keep[..., None]).sum(1) / keep.sum(1, keepdim=True))
        ),
    }


def _attention_case(fn: Callable[..., Any], B: int, S: int, C: int, seed: int, timeout) -> None:
    h, memory, keep, W_a, W_c = _attention_inputs(B, S, C, seed)
    what = f"attention_step(h {shape_str(h)}, memory {shape_str(memory)}, keep, W_a, W_c)"
    args = (h.clone(), memory.clone(), keep.clone(), W_a.clone(), W_c.clone())
    out, weights = expect_pair(call(what, fn, *args, timeout=timeout), what)
    expected_out, expected_weights = (t[:, 0] for t in luong_attention(h[:, None], memory, keep, W_a, W_c))  # fmt: skip
    expect_tensor(weights, f"{what}: weights", shape=(B, S))
    expect_tensor(out, f"{what}: the attentional state", shape=(B, C))
    if not close(weights, expected_weights):
        diagnose(weights, _weight_mistakes(h, memory, keep, W_a))
        raise Fail(f"{what}: the weights differ from softmax(h_t^T W_a h_s) over the real source "
                   f"positions by up to {max_gap(weights, expected_weights):.3g}")  # fmt: skip
    if not close(out, expected_out):
        diagnose(out, _out_mistakes(h, memory, keep, W_a, expected_weights, W_c))
        raise Fail(f"{what}: the weights are right, but the attentional state differs from "
                   f"tanh(W_c [c_t; h_t]) by up to {max_gap(out, expected_out):.3g}")  # fmt: skip


def _attention_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    _attention_case(fn, B=3, S=5, C=4, seed=0, timeout=timeout)
    _attention_case(fn, B=2, S=7, C=6, seed=1, timeout=timeout)
    _attention_case(fn, B=1, S=1, C=3, seed=2, timeout=timeout)  # one source token: weight 1
    return "softmax(h_t^T W_a h_s) over the real source positions, then tanh(W_c [c_t; h_t])"


def check_rnn_attention_step(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(h, memory, keep, W_a, W_c) -> (attentional state (B, C), weights (B, S))``."""
    return run_check("rnn_attention_step", lambda: _attention_steps(fn, timeout))


# --- the path-length measurement ----------------------------------------------------------


def _reach_variant(layer: nn.Module, x: Tensor, u: Tensor, bug: str) -> Tensor:
    """The gradient at input 0 of u . y_t for every t, with one common mistake planted."""
    T = x.shape[1]
    leaf = x.detach().clone().requires_grad_(True)
    norms, running = [], torch.zeros_like(x)
    for t in range(T):
        if bug != "accumulated":
            leaf = x.detach().clone().requires_grad_(True)
        y = layer(leaf)
        if bug == "reversed":  # output 0, input t
            (grad,) = torch.autograd.grad(y[0, 0] @ u, leaf)
            norms.append(grad[0, t].norm())
            continue
        picked = y[0, t].sum() if bug == "sum" else y[0, t] @ u
        (grad,) = torch.autograd.grad(picked, leaf)
        running = running + grad
        grad = running if bug == "accumulated" else grad
        position = {"input_t": t}.get(bug, 0)
        norms.append(grad.norm() if bug == "whole" else grad[0, position].norm())
    out = torch.stack(norms)
    return out**2 if bug == "squared" else out


_REACH_BUGS = {
    "accumulated": "the gradients of earlier positions were added in: reset the gradient "
    "between positions (a fresh x.requires_grad_() or x.grad = None), or use torch.autograd.grad",
    "input_t": "you measured the gradient at input t (grad[0, t]); the path length asks how much "
    "reaches input 0 from output t: grad[0, 0]",
    "reversed": "you measured output 0's gradient at input t; the question is the other way "
    "round: output t's gradient at input 0",
    "sum": "project output t on the direction u (u . y_t = y[0, t] @ u), not the sum of its features",
    "whole": "you took the norm of the whole gradient (every input position); take input 0's "
    "row only: grad[0, 0].norm()",
    "squared": "you returned the squared norm: return grad[0, 0].norm()",
}


def _reach_case(fn: Callable[..., Any], kind: str, T: int, timeout: float | None) -> None:
    layer = probe_stack(kind, d_model=6, n_layers=2, n_heads=2, seed=3).double()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, T, 6, generator=gen, dtype=torch.float64)
    u = torch.randn(6, generator=gen, dtype=torch.float64)
    u = u / u.norm()
    what = f"gradient_reach({kind} stack, x {shape_str(x)}, u)"
    try:
        got = call(what, fn, layer, x.clone(), u.clone(), timeout=timeout)
    except Fail as failure:
        if "second time" in str(failure):
            raise Fail(f"{failure} (hint: run the layer again for every t, or pass "
                       "retain_graph=True to backward)") from None  # fmt: skip
        raise
    if isinstance(got, list | tuple):
        got = torch.tensor([float(v) for v in got], dtype=torch.float64)
    got = expect_tensor(got, f"{what}'s result", shape=(T,))
    expected = gradient_reach(layer, x, u)
    if close(got, expected, atol=1e-9, rtol=1e-6):
        return
    mistakes = {msg: (lambda bug=bug: _reach_variant(layer, x, u, bug)) for bug, msg in _REACH_BUGS.items()}  # fmt: skip
    diagnose(got, mistakes, atol=1e-9, rtol=1e-6)
    t = int((got.double() - expected).abs().argmax())
    raise Fail(f"{what}: at distance t={t} you return {got[t].item():.4g}, expected "
               f"{expected[t].item():.4g} = ||d(u . y_{t}) / d x_0||")  # fmt: skip


def _reach_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    for kind, T in (("lstm", 6), ("transformer", 5), ("cnn", 7)):
        _reach_case(fn, kind, T, timeout)
    return "||d(u . y_t) / d x_0|| for every t, on an LSTM, a Transformer and a convolution stack"


def check_gradient_reach(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(layer, x (1, T, C), u (C,)) -> (T,)``: the gradient norm at input 0 of u . y_t."""
    return run_check("gradient_reach", lambda: _reach_steps(fn, timeout))
