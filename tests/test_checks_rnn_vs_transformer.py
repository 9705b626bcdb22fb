"""The lesson 13 checks (the LSTM decoder's attention step, the path-length measurement):
planted bugs are named, other correct implementations pass."""

from __future__ import annotations

import math
from functools import partial

import torch
from check_helpers import planted_bug_tests

from tfx_course import checks

# --- rnn_attention_step -------------------------------------------------------------------


def _attend(h, memory, keep, W_a, W_c, *, score="general", axis=-1, mask=True, scale=False,
            order="ch", squash=True, give="state"):  # fmt: skip
    if score == "general":
        scores = torch.einsum("bc,cd,bsd->bs", h, W_a, memory)
    elif score == "transposed":
        scores = torch.einsum("bc,dc,bsd->bs", h, W_a, memory)
    else:  # "dot"
        scores = torch.einsum("bc,bsc->bs", h, memory)
    if scale:
        scores = scores / math.sqrt(h.shape[-1])
    if mask:
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=axis)
    context = torch.einsum("bs,bsc->bc", weights, memory)
    pair = [context, h] if order == "ch" else [h, context]
    state = torch.cat(pair, dim=-1) @ W_c.T
    state = torch.tanh(state) if squash else state
    return (context if give == "context" else state), weights


def _attend_loops(h, memory, keep, W_a, W_c):
    """Correct, one sentence at a time, with -inf for the padded scores."""
    outs, weights = [], []
    for b in range(h.shape[0]):
        real = memory[b][keep[b]]  # (S_b, C)
        w = torch.softmax(real @ W_a.T @ h[b], dim=0)  # (S_b,)
        full = torch.zeros(memory.shape[1])
        full[keep[b]] = w
        outs.append(torch.tanh(W_c @ torch.cat([w @ real, h[b]])))
        weights.append(full)
    return torch.stack(outs), torch.stack(weights)


def _attend_split_wc(h, memory, keep, W_a, W_c):
    """Correct: W_c split into its context half and its state half, -inf for the padding."""
    C = h.shape[-1]
    keys = memory @ W_a.T  # (B, S, C)
    scores = (keys @ h[:, :, None])[..., 0].masked_fill(~keep, float("-inf"))  # (B, S)
    weights = torch.softmax(scores, dim=1)
    context = (weights[:, :, None] * memory).sum(dim=1)
    return torch.tanh(context @ W_c[:, :C].T + h @ W_c[:, C:].T), weights


def _attend_float64(h, memory, keep, W_a, W_c):
    out, weights = _attend(h.double(), memory.double(), keep, W_a.double(), W_c.double())
    return out.float(), weights.float()


# --- gradient_reach -------------------------------------------------------------------------


def _reach(layer, x, u, *, reset=True, position="zero", target="u", norm="plain"):
    norms = []
    leaf = x.detach().clone().requires_grad_(True)
    for t in range(x.shape[1]):
        if reset:
            leaf = x.detach().clone().requires_grad_(True)
        y = layer(leaf)
        (y[0, t].sum() if target == "sum" else y[0, t] @ u).backward()
        grad = leaf.grad
        row = grad if position == "all" else grad[0, t if position == "t" else 0]
        norms.append(row.norm() ** 2 if norm == "squared" else row.norm())
    return torch.stack(norms)


def _reach_autograd_grad(layer, x, u):
    x = x.detach().requires_grad_(True)
    out = []
    for t in range(x.shape[1]):
        (grad,) = torch.autograd.grad(layer(x)[0, t] @ u, x)
        out.append(grad[0, 0].norm().item())
    return out  # a list of floats is accepted


def _reach_vjp(layer, x, u):
    T, C = x.shape[1], x.shape[2]
    norms = []
    for t in range(T):
        v = torch.zeros(1, T, C, dtype=x.dtype)
        v[0, t] = u
        _, grad = torch.autograd.functional.vjp(layer, x, v)
        norms.append(torch.linalg.vector_norm(grad[0, 0]))
    return torch.stack(norms)


def _reach_jacobian(layer, x, u):
    jac = torch.autograd.functional.jacobian(layer, x)  # (1, T, C, 1, T, C)
    return torch.einsum("c,tcd->td", u, jac[0, :, :, 0, 0, :]).norm(dim=-1)


def _reach_one_forward(layer, x, u):
    """Correct: one forward pass, retain_graph for every backward."""
    x = x.detach().requires_grad_(True)
    y = layer(x)
    out = []
    for t in range(x.shape[1]):
        x.grad = None
        (y[0, t] @ u).backward(retain_graph=True)
        out.append(x.grad[0, 0].norm())
    return torch.stack(out)


def _reach_one_forward_no_retain(layer, x, u):
    x = x.detach().requires_grad_(True)
    y = layer(x)
    out = []
    for t in range(x.shape[1]):
        (y[0, t] @ u).backward()
        out.append(x.grad[0, 0].norm())
    return torch.stack(out)


BUGS = {
    "rnn_attention_step": [
        (partial(_attend, score="transposed"), "W_a transposed"),
        (partial(_attend, score="dot"), "W_a is missing"),
        (partial(_attend, scale=True), "divided by sqrt(d)"),
        (partial(_attend, axis=0), "wrong axis"),
        (partial(_attend, mask=False), "padded source positions got attention"),
        (partial(_attend, order="hc"), "context first"),
        (partial(_attend, squash=False), "tanh is missing"),
        (partial(_attend, give="context"), "you returned the context"),
        (lambda *a: _attend(*a)[::-1], "has shape"),
        (lambda *a: _attend(*a)[0], "pair (out, weights)"),
    ],
    "gradient_reach": [
        (partial(_reach, reset=False), "reset the gradient"),
        (partial(_reach, position="t"), "at input t"),
        (partial(_reach, target="sum"), "on the direction u"),
        (partial(_reach, position="all"), "norm of the whole gradient"),
        (partial(_reach, norm="squared"), "squared norm"),
        (_reach_one_forward_no_retain, "retain_graph=True"),
        (lambda *a: _reach(*a)[:-1], "has shape"),
    ],
}

ALTERNATIVES = {
    "rnn_attention_step": [_attend, _attend_loops, _attend_split_wc, _attend_float64],
    "gradient_reach": [
        _reach,
        _reach_autograd_grad,
        _reach_vjp,
        _reach_jacobian,
        _reach_one_forward,
    ],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)


def test_the_context_bugs_are_named_when_the_weights_are_right():
    def context_from_scores(h, memory, keep, W_a, W_c):
        _, weights = _attend(h, memory, keep, W_a, W_c)
        scores = torch.einsum("bc,cd,bsd->bs", h, W_a, memory).masked_fill(~keep, 0.0)
        context = torch.einsum("bs,bsc->bc", scores, memory)
        return torch.tanh(torch.cat([context, h], -1) @ W_c.T), weights

    def mean_context(h, memory, keep, W_a, W_c):
        _, weights = _attend(h, memory, keep, W_a, W_c)
        context = (memory * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
        return torch.tanh(torch.cat([context, h], -1) @ W_c.T), weights

    result = checks.check_rnn_attention_step(context_from_scores)
    assert not result.passed and "use the softmax weights" in result.message
    result = checks.check_rnn_attention_step(mean_context)
    assert not result.passed and "plain mean of the memory" in result.message


def test_reversed_roles_are_named():
    def reversed_roles(layer, x, u):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(layer(x)[0, 0] @ u, x)
        return grad[0].norm(dim=-1)  # output 0's gradient at every input t

    result = checks.check_gradient_reach(reversed_roles)
    assert not result.passed and "the other way round" in result.message
