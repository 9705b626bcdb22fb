"""The training checks (lesson 09): planted bugs are named,
other correct implementations pass."""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from check_helpers import planted_bug_tests

from tfx_course import checks
from tfx_course.checks.training import adamw_reference
from tfx_course.training import label_smoothed_cross_entropy


def _ls(
    logits, targets, eps, pad, *, ignore=True, denominator="real", other=False, target_weight=None
):
    V = logits.shape[-1]
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    smooth = (-logp.sum(-1) - nll) / (V - 1) if other else -logp.mean(-1)
    loss = (1 - eps if target_weight is None else target_weight) * nll + eps * smooth
    keep = (targets != pad) if ignore else torch.ones_like(targets, dtype=torch.bool)
    total = (loss * keep).sum()
    return {"real": total / keep.sum(), "all": total / keep.numel(), "sum": total}[denominator]


def _ls_distribution(logits, targets, smoothing, pad_id):
    V = logits.size(-1)
    q = torch.full_like(logits, smoothing / V).scatter_add(
        -1, targets.unsqueeze(-1), torch.full_like(logits[..., :1], 1 - smoothing)
    )
    per_token = -(q * logits.log_softmax(-1)).sum(-1)
    keep = targets.ne(pad_id)
    return per_token[keep].mean()


def _ls_flat(logits, targets, smoothing, pad_id):
    V = logits.shape[-1]
    return F.cross_entropy(
        logits.view(-1, V), targets.view(-1), ignore_index=pad_id, label_smoothing=smoothing
    )


# --- clip_grad_norm -------------------------------------------------------------------


def _clip(grads, max_norm, *, per_tensor=False, always=False, sum_norms=False, squared=False, after=False):  # fmt: skip
    norms = [g.norm() for g in grads]
    if per_tensor:
        out = [g * min(1.0, max_norm / float(n)) for g, n in zip(grads, norms, strict=True)]
        return out, math.sqrt(sum(float(n) ** 2 for n in norms))
    total = sum(norms) if sum_norms else torch.sqrt(sum(g.pow(2).sum() for g in grads))
    if squared:
        total = total**2
    factor = max_norm / float(total) if always else min(1.0, max_norm / float(total))
    out = [g * factor for g in grads]
    if after:
        return out, torch.sqrt(sum(g.pow(2).sum() for g in out))
    return out, float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))


def _clip_torch(grads, max_norm):
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return [p.grad for p in params], norm


def _clip_cat(grads, max_norm):
    total = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * scale for g in grads], total


def _clip_inplace(grads, max_norm):
    total = math.sqrt(sum((g * g).sum().item() for g in grads))
    if total > max_norm:
        for g in grads:
            g.mul_(max_norm / total)
    return grads, total


# --- adamw_step -----------------------------------------------------------------------


def _adamw(p, g, m, v, step, lr, betas, eps, weight_decay, **bug):
    return adamw_reference(p, g, m, v, step, lr, betas, eps, weight_decay, **bug)


def _adamw_torch(p, g, m, v, step, lr, betas, eps, weight_decay):
    param = torch.nn.Parameter(p.clone())
    opt = torch.optim.AdamW([param], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    param.grad = g.clone()
    opt.state[param] = {"step": torch.tensor(float(step - 1)), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}  # fmt: skip
    opt.step()
    state = opt.state[param]
    return param.detach(), state["exp_avg"], state["exp_avg_sq"]


def _adamw_written_out(p, g, m, v, step, lr, betas, eps, weight_decay):
    b1, b2 = betas
    m = m.mul(b1).add(g, alpha=1 - b1)
    v = v.mul(b2).addcmul(g, g, value=1 - b2)
    step_size = lr / (1 - b1**step)
    denom = v.sqrt() / math.sqrt(1 - b2**step) + eps
    p = p.mul(1 - lr * weight_decay).addcdiv(m, denom, value=-step_size)
    return p, m, v


def test_adamw_reference_follows_torch_over_several_steps():
    gen = torch.Generator().manual_seed(3)
    start = torch.randn(5, generator=gen)
    param = torch.nn.Parameter(start.clone())
    opt = torch.optim.AdamW([param], lr=0.05, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.1)
    p, m, v = start.clone(), torch.zeros(5), torch.zeros(5)
    for step in range(1, 6):
        grad = torch.randn(5, generator=gen)
        param.grad = grad.clone()
        opt.step()
        p, m, v = adamw_reference(p, grad, m, v, step, 0.05, (0.9, 0.98), 1e-8, 0.1)
        torch.testing.assert_close(p, param.detach())
        torch.testing.assert_close(v, opt.state[param]["exp_avg_sq"])


def _ls_twice(logits, targets, eps, pad):
    V = logits.shape[-1]
    q = (1 - eps) * F.one_hot(targets, V) + eps / V
    q = (1 - eps) * q + eps / V  # smoothed again
    keep = targets != pad
    return (-(q * logits.log_softmax(-1)).sum(-1) * keep).sum() / keep.sum()


def _ls_pad_column(logits, targets, eps, pad, *, target_too=False):
    # The Annotated Transformer's way: the pad class (and the target) get no smoothing mass.
    V = logits.shape[-1]
    q = torch.full(logits.shape, eps / (V - 2 if target_too else V - 1))
    q[..., pad] = 0
    q = q.scatter(-1, targets[..., None], 1 - eps) if target_too else q + (1 - eps) * F.one_hot(targets, V)  # fmt: skip
    keep = targets != pad
    return (-(q * logits.log_softmax(-1)).sum(-1) * keep).sum() / keep.sum()


BUGS = {
    "label_smoothing": [
        (_ls_twice, "smoothing is applied twice"),
        (_ls_pad_column, "the pad column is left out of the smoothing"),
        (lambda *a: _ls_pad_column(*a, target_too=True), "the pad column (and the target)"),
        (lambda lo, t, e, p: _ls(lo, t, e, p, ignore=False), "padded positions count"),
        (lambda lo, t, e, p: _ls(lo, t, e, p, denominator="all"), "averaged over all B*T"),
        (lambda lo, t, e, p: _ls(lo, t, e, p, denominator="sum"), "returned the sum"),
        (lambda lo, t, e, p: _ls(lo, t, e, p, other=True), "V - 1 other classes"),
        (lambda lo, t, e, p: _ls(lo, t, e, p, target_weight=1.0), "must be 1 - smoothing"),
        (lambda lo, t, e, p: _ls(lo, t, e, p).item(), "returned a Python number"),
        (lambda lo, t, e, p: _ls(lo, t, e, 0), "use the pad_id argument"),
        (lambda lo, t, e, p: _ls(lo, t, e, p, denominator="real") * torch.ones(2), "scalar tensor"),
    ],
    "clip_grad_norm": [
        (lambda g, n: _clip(g, n, per_tensor=True), "clipped on its own"),
        (lambda g, n: _clip(g, n, always=True), "must stay as they are"),
        (lambda g, n: _clip(g, n, sum_norms=True), "not the sum of the tensors' norms"),
        (lambda g, n: _clip(g, n, squared=True), "take the square root"),
        (lambda g, n: _clip(g, n, after=True), "the norm before clipping"),
        (lambda g, n: _clip(g, n)[0], "one clipped tensor per gradient"),
        (lambda g, n: (_clip(g, n)[0], "five"), "one number"),
    ],
    "adamw_step": [
        (lambda *a, **k: _adamw(*a, **k, decoupled=False), "L2 penalty"),
        (lambda *a, **k: _adamw(*a, **k, bias_correction=False), "bias correction"),
        (lambda *a, **k: _adamw(*a, **k, eps_inside=True), "after the square root"),
        (lambda *a, **k: _adamw(*a, **k, square=False), "squared gradient"),
        (lambda *a, **k: _adamw(*a, **k, first_step=0), "step counts from 1"),
        (lambda *a, **k: _adamw(*a, **k)[0], "three tensors"),
    ],
}

ALTERNATIVES = {
    "label_smoothing": [_ls, _ls_distribution, _ls_flat, label_smoothed_cross_entropy],
    "clip_grad_norm": [_clip, _clip_torch, _clip_cat, _clip_inplace],
    "adamw_step": [_adamw, _adamw_torch, _adamw_written_out],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}


# --- ema_update -----------------------------------------------------------------------


def _ema(ema_model, model, decay, *, bug=""):
    pairs = list(zip(ema_model.parameters(), model.parameters(), strict=True))
    if bug == "swapped_models":
        pairs = [(p, e) for e, p in pairs]
    for e, p in pairs:
        if bug == "no_grad_missing":
            e.mul_(decay).add_(p, alpha=1 - decay)
            continue
        with torch.no_grad():
            if bug == "rebound":
                e = decay * e + (1 - decay) * p  # the planted mistake: rebinds, changes nothing
            elif bug == "swapped_decay":
                e.mul_(1 - decay).add_(p, alpha=decay)
            elif bug == "copied":
                e.copy_(p)
            else:
                e.mul_(decay).add_(p, alpha=1 - decay)
        if bug == "first_only":
            break
    if bug == "replaced":
        for name, _ in model.named_parameters():
            module_name, _, attr = name.rpartition(".")
            owner = ema_model.get_submodule(module_name)
            setattr(owner, attr, torch.nn.Parameter(getattr(owner, attr).detach().clone()))
    if bug == "recorded":
        for e in ema_model.parameters():
            e.grad = torch.zeros_like(e)
    return None if bug == "no_return" else ema_model


def _ema_lerp(ema_model, model, decay):
    with torch.no_grad():
        ema_params, params = list(ema_model.parameters()), list(model.parameters())
        torch._foreach_lerp_(ema_params, params, 1 - decay)
    return ema_model


def _ema_state_dict(ema_model, model, decay):
    # By name, through state dicts: load_state_dict copies into the existing parameters.
    ema_state, state = ema_model.state_dict(), model.state_dict()
    mixed = {k: decay * v + (1 - decay) * state[k] for k, v in ema_state.items()}
    ema_model.load_state_dict(mixed)
    return ema_model


def _ema_torch(ema_model, model, decay):
    # PyTorch's own EMA helper, applied parameter by parameter.
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    with torch.no_grad():
        get_ema_multi_avg_fn(decay)(list(ema_model.parameters()), list(model.parameters()), 1)
    return ema_model


BUGS["ema_update"] = [
    (partial(_ema, bug="rebound"), "the EMA did not change"),
    (partial(_ema, bug="swapped_decay"), "decay and 1 - decay are swapped"),
    (partial(_ema, bug="copied"), "overwritten with the model's weights"),
    (partial(_ema, bug="first_only"), "only the first parameter was updated"),
    (partial(_ema, bug="swapped_models"), "the model's weights changed"),
    (partial(_ema, bug="no_grad_missing"), "torch.no_grad()"),
    (partial(_ema, bug="replaced"), "were replaced by new ones"),
    (partial(_ema, bug="recorded"), "recorded by autograd"),
    (partial(_ema, bug="no_return"), "returned NoneType"),
]
ALTERNATIVES["ema_update"] = [_ema, _ema_lerp, _ema_state_dict, _ema_torch]
CHECKS["ema_update"] = checks.check_ema_update

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)
