"""Lesson 11's checks: planted bugs are named, other correct implementations pass."""

from __future__ import annotations

import functools

import torch
from captum.attr import IntegratedGradients
from check_helpers import planted_bug_tests

from tfx_course import checks
from tfx_course.attention import merge_heads, scaled_dot_product_attention, split_heads
from tfx_course.interpret import head_mask

# --- mask_head ----------------------------------------------------------------------------


def _heads(attn, query, key, value, mask, *, zero_query_of=None):
    q = split_heads(attn.q_proj(query), attn.n_heads)  # (B, H, T, D)
    if zero_query_of is not None:
        q[:, zero_query_of] = 0
    k, v = split_heads(attn.k_proj(key), attn.n_heads), split_heads(attn.v_proj(value), attn.n_heads)  # fmt: skip
    return scaled_dot_product_attention(q, k, v, mask)[0]  # (B, H, T, D)


def _mask(attn, query, key, value, mask, head, *, bug=""):
    if bug == "query":
        return attn.out_proj(merge_heads(_heads(attn, query, key, value, mask, zero_query_of=head)))
    heads = _heads(attn, query, key, value, mask)
    if bug == "after":
        out = attn.out_proj(merge_heads(heads))
        out[..., head * attn.d_head : (head + 1) * attn.d_head] = 0
        return out
    heads[:, {"off_by_one": (head + 1) % attn.n_heads}.get(bug, head)] = 0
    merged = merge_heads(heads)
    if bug == "no_bias":
        return merged @ attn.out_proj.weight.T
    if bug == "rescale":
        return attn.out_proj(merged * attn.n_heads / (attn.n_heads - 1))
    return attn.out_proj(merged)


def _mask_interleaved(attn, query, key, value, mask, head):
    merged = merge_heads(_heads(attn, query, key, value, mask))  # (B, T, C)
    merged[..., head :: attn.n_heads] = 0
    return attn.out_proj(merged)


def _mask_by_subtraction(attn, query, key, value, mask, head):
    heads = _heads(attn, query, key, value, mask)
    D = attn.d_head
    share = heads[:, head] @ attn.out_proj.weight[:, head * D : (head + 1) * D].T  # (B, T, C)
    return attn.out_proj(merge_heads(heads)) - share


def _mask_with_library(attn, query, key, value, mask, head):
    with head_mask(attn, head):
        return attn(query, key, value, mask)[0]


def _mask_by_gate(attn, query, key, value, mask, head):
    heads = _heads(attn, query, key, value, mask)
    gate = torch.ones(attn.n_heads)
    gate[head] = 0
    return attn.out_proj(merge_heads(heads * gate[None, :, None, None]))


# --- attention_rollout --------------------------------------------------------------------


def _rollout(weights, *, bug=""):
    eye = torch.eye(weights[0].shape[-1])
    result = None
    for w in weights:
        a = w.amax(dim=1) if bug == "max" else w.mean(dim=1)
        a = {"no_identity": a, "unnormalised": a + eye}.get(bug, 0.5 * eye + 0.5 * a)
        if result is None:
            result = a
        else:
            result = result @ a if bug == "order" else a @ result
    return result.transpose(-2, -1) if bug == "transposed" else result


def _rollout_reduce(weights):
    eye = torch.eye(weights[0].shape[-1])
    mats = [(w.mean(dim=1) + eye) / 2 for w in weights]
    return functools.reduce(lambda acc, a: a @ acc, mats[1:], mats[0])


def _rollout_einsum(weights):
    S = weights[0].shape[-1]
    out = torch.eye(S).expand(weights[0].shape[0], S, S)
    for w in weights:
        a = w.sum(dim=1) + w.shape[1] * torch.eye(S)  # heads summed, identity per head
        out = torch.einsum("bij,bjk->bik", a / a.sum(dim=-1, keepdim=True), out)
    return out


# --- integrated_gradients -----------------------------------------------------------------


def _ig(forward, inputs, baseline, steps, *, rule="middle", bug=""):
    offsets = {"middle": 0.5, "left": 0.0, "right": 1.0}[rule]
    total = torch.zeros_like(inputs)
    for k in range(steps):
        point = (baseline + (k + offsets) / steps * (inputs - baseline)).requires_grad_(True)
        if bug == "at_input":
            point = inputs.clone().requires_grad_(True)
        total += torch.autograd.grad(forward(point).sum(), point)[0]
    mean = total if bug == "sum" else total / steps
    if bug == "no_delta":
        return mean
    if bug == "times_input":
        return inputs * mean
    return (inputs - baseline) * mean


def _input_x_gradient(forward, inputs, baseline, steps):
    x = inputs.clone().requires_grad_(True)
    return inputs * torch.autograd.grad(forward(x).sum(), x)[0]


def _ig_trapezoid(forward, inputs, baseline, steps):
    alphas = torch.linspace(0, 1, steps + 1)
    weights = torch.full((steps + 1,), 1.0 / steps)
    weights[0] = weights[-1] = 0.5 / steps
    total = torch.zeros_like(inputs)
    for a, wt in zip(alphas, weights, strict=True):
        point = (baseline + a * (inputs - baseline)).requires_grad_(True)
        total += wt * torch.autograd.grad(forward(point).sum(), point)[0]
    return (inputs - baseline) * total


def _ig_captum(forward, inputs, baseline, steps):
    return IntegratedGradients(forward).attribute(
        inputs.requires_grad_(True), baseline, n_steps=steps
    )


def _ig_batched(forward, inputs, baseline, steps):
    alphas = ((torch.arange(steps) + 0.5) / steps)[:, None, None]  # (m, 1, 1)
    path = (baseline + alphas * (inputs - baseline)).reshape(-1, inputs.shape[-1])
    path.requires_grad_(True)
    grads = torch.autograd.grad(forward(path).sum(), path)[0].view(steps, *inputs.shape)
    return (inputs - baseline) * grads.mean(dim=0)


BUGS = {
    "mask_head": [
        (lambda *a: _mask(*a, bug="query"), "query was zeroed"),
        (lambda *a: _mask(*a, bug="after"), "after out_proj"),
        (lambda *a: _mask(*a, bug="no_bias"), "bias is missing"),
        (lambda *a: _mask(*a, bug="rescale"), "as dropout does"),
        (lambda *a: _mask(*a, bug="off_by_one"), "was switched off instead of head"),
        (_mask_interleaved, "contiguous"),
        (lambda attn, q, k, v, mask, head: attn(q, k, v, mask)[0], "nothing was switched off"),
        (lambda attn, q, k, v, mask, head: attn(q, k, v, mask)[0][:, :2], "expected (2, 3, 16)"),
    ],
    "attention_rollout": [
        (lambda w: _rollout(w, bug="no_identity"), "no identity"),
        (lambda w: _rollout(w, bug="unnormalised"), "rows sum to 2^L"),
        (lambda w: _rollout(w, bug="order"), "wrong order"),
        (lambda w: _rollout(w, bug="transposed"), "transposed"),
        (lambda w: _rollout(w, bug="max"), "max"),
        (lambda w: 0.5 * torch.eye(w[0].shape[-1]) + 0.5 * w[-1].mean(dim=1), "only the last"),
    ],
    "integrated_gradients": [
        (lambda f, x, x0, m: _ig(f, x, x0, m, bug="at_input"), "at the input"),
        (_input_x_gradient, "this is input x gradient"),
        (lambda f, x, x0, m: _ig(f, x, x0, m, bug="no_delta"), "not multiplied"),
        (
            lambda f, x, x0, m: _ig(f, x, x0, m, bug="times_input"),
            "instead of (inputs - baseline)",
        ),  # fmt: skip
        (lambda f, x, x0, m: _ig(f, x, x0, m, bug="sum"), "instead of averaging"),
        (lambda f, x, x0, m: -_ig(f, x, x0, m), "sign is flipped"),
        (lambda f, x, x0, m: _ig(f, x, x0, m).sum(dim=-1), "expected (3, 5)"),
        (lambda f, x, x0, m: _ig(f, x, x0, 2, rule="left"), "completeness"),
    ],
}

ALTERNATIVES = {
    "mask_head": [_mask, _mask_by_subtraction, _mask_with_library, _mask_by_gate],
    "attention_rollout": [_rollout, _rollout_reduce, _rollout_einsum],
    "integrated_gradients": [
        _ig,
        lambda f, x, x0, m: _ig(f, x, x0, m, rule="left"),
        lambda f, x, x0, m: _ig(f, x, x0, m, rule="right"),
        _ig_trapezoid,
        _ig_captum,
        _ig_batched,
    ],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)


def test_an_unwritten_exercise_is_reported_as_not_attempted():
    def todo(*args):
        raise NotImplementedError("write your code here")

    for check in CHECKS.values():
        result = check(todo)
        assert not result.passed and "not attempted yet" in result.message
