"""Lesson 07's checks: planted bugs are named, other correct implementations pass."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from check_helpers import planted_bug_tests

from tfx_course import checks
from tfx_course.decoding import greedy_decode
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


def _noam(s, d, w):
    return d**-0.5 * min(s**-0.5, s * w**-1.5)


def _greedy(
    model,
    src,
    bos,
    eos,
    max_len,
    pad,
    *,
    eval_mode=True,
    position=-1,
    pad_after=True,
    stop="all",
    keep_bos=False,
    run_to_end=False,
):
    if eval_mode:
        model.eval()
    memory = model.encode(src)
    tokens = torch.full((src.shape[0], 1), bos, dtype=torch.long)
    done = torch.zeros(src.shape[0], dtype=torch.bool)
    for _ in range(max_len):
        nxt = model.decode(tokens, memory, src)[:, position].argmax(-1)
        if pad_after:
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        done = done | (nxt == eos)
        if not run_to_end and (done.all() if stop == "all" else done.any()):
            break
    return tokens if keep_bos else tokens[:, 1:]


def _greedy_lists(model, src, bos, eos, max_len, pad):
    """Correct, one sequence at a time, padded to the batch's longest output."""
    model.eval()
    rows = []
    for b in range(src.shape[0]):
        one = src[b : b + 1]
        memory, out = model.encode(one), [bos]
        while len(out) <= max_len and (len(out) == 1 or out[-1] != eos):
            out.append(int(model.decode(torch.tensor([out]), memory, one)[0, -1].argmax()))
        rows.append(out[1:])
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows])


BUGS = {
    "label_smoothing": [
        (lambda lo, t, e, p: _ls(lo, t, e, p, ignore=False), "padded positions count"),
        (lambda lo, t, e, p: _ls(lo, t, e, p, denominator="all"), "averaged over all B*T"),
        (lambda lo, t, e, p: _ls(lo, t, e, p, denominator="sum"), "returned the sum"),
        (lambda lo, t, e, p: _ls(lo, t, e, p, other=True), "V - 1 other classes"),
        (lambda lo, t, e, p: _ls(lo, t, e, p, target_weight=1.0), "must be 1 - smoothing"),
        (lambda lo, t, e, p: _ls(lo, t, e, p).item(), "returned a Python number"),
        (lambda lo, t, e, p: _ls(lo, t, e, 0), "use the pad_id argument"),
        (lambda lo, t, e, p: _ls(lo, t, e, p, denominator="real") * torch.ones(2), "scalar tensor"),
    ],
    "warmup_schedule": [
        (lambda s, d, w: min(s**-0.5, s * w**-1.5), "missing the factor d_model^-0.5"),
        (lambda s, d, w: d**-0.5 * min(s**-0.5, s * w**-0.5), "warmup^-1.5"),
        (lambda s, d, w: d**-0.5 * max(s**-0.5, s * w**-1.5), "use min, not max"),
        (lambda s, d, w: _noam(s + 1, d, w), "off by one"),
        (lambda s, d, w: _noam(s - 1, d, w), "step=1 must work"),
        (lambda s, d, w: [_noam(s, d, w)], "return one finite number"),
    ],
    "greedy_decode": [
        (lambda *a: _greedy(*a, eval_mode=False), "call model.eval()"),
        (lambda *a: _greedy(*a, position=0), "last position's logits"),
        (lambda *a: _greedy(*a, pad_after=False), "fill its later positions with pad_id"),
        (lambda *a: _greedy(*a, stop="any"), "stop when every sequence"),
        (lambda *a: _greedy(*a, keep_bos=True), "starts with BOS"),
        (lambda *a: _greedy(*a).float(), "token ids are integers"),
    ],
}

ALTERNATIVES = {
    "label_smoothing": [_ls, _ls_distribution, _ls_flat, label_smoothed_cross_entropy],
    "warmup_schedule": [
        _noam,
        lambda s, d, w: np.float32(1.0) * (d**-0.5) * (s / w**1.5 if s < w else 1 / math.sqrt(s)),
        lambda s, d, w: torch.tensor(d, dtype=torch.float64).rsqrt() * min(s**-0.5, s * w**-1.5),
    ],
    "greedy_decode": [
        _greedy,
        lambda *a: _greedy(*a, run_to_end=True),  # runs to max_len, padding after EOS
        _greedy_lists,
        lambda m, s, b, e, n, p: greedy_decode(m, s, b, e, max_len=n, pad_id=p, use_cache=False),
    ],
}

CHECKS = {
    "label_smoothing": checks.check_label_smoothing,
    "warmup_schedule": checks.check_warmup_schedule,
    "greedy_decode": checks.check_greedy_decode,
}

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)


def test_a_decoder_that_never_stops_is_a_timeout_not_a_hang():
    def forever(model, src, bos, eos, max_len, pad):
        while True:
            model.decode(torch.full((src.shape[0], 1), bos), model.encode(src), src)

    result = checks.check_greedy_decode(forever, timeout=0.5)
    assert not result.passed and "did not return within 0.5 s" in result.message


def test_every_exercise_has_three_bugs_and_an_alternative():
    from tfx_course.exercises import LESSONS

    for name in LESSONS["07"]:
        assert len(BUGS[name]) >= 3 and len(ALTERNATIVES[name]) >= 1, name
