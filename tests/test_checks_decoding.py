"""The decoding checks (lessons 07 and 10): planted bugs are named,
other correct implementations pass."""

from __future__ import annotations

from functools import partial

import torch
from check_helpers import planted_bug_tests

from tfx_course import checks
from tfx_course.decoding import beam_step, greedy_decode


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
    newest_only=False,
    steps=0,
):
    if eval_mode:
        model.eval()
    memory = model.encode(src)
    tokens = torch.full((src.shape[0], 1), bos, dtype=torch.long)
    done = torch.zeros(src.shape[0], dtype=torch.bool)
    for _ in range(max_len + steps):
        prefix = tokens[:, -1:] if newest_only else tokens
        nxt = model.decode(prefix, memory, src)[:, position].argmax(-1)
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


def test_a_decoder_that_never_stops_is_a_timeout_not_a_hang():
    def forever(model, src, bos, eos, max_len, pad):
        while True:
            model.decode(torch.full((src.shape[0], 1), bos), model.encode(src), src)

    result = checks.check_greedy_decode(forever, timeout=0.5)
    assert not result.passed and "did not return within 0.5 s" in result.message


# --- length_penalty -------------------------------------------------------------------


def _lp(log_probs, lengths, alpha, *, form="gnmt"):
    L = lengths.float()
    penalty = {
        "gnmt": ((5 + L) / 6) ** alpha,
        "no5": (L / 6) ** alpha,
        "plain": L**alpha,
        "noalpha": (5 + L) / 6,
        "floor": ((5 + lengths) // 6).float() ** alpha,
    }[form]
    return log_probs / penalty


def _lp_multiply(log_probs, lengths, alpha):
    return log_probs * ((5 + lengths.float()) / 6) ** alpha


def _lp_exp_log(log_probs, lengths, alpha):
    return log_probs * torch.exp(-alpha * torch.log((5.0 + lengths) / 6.0))


def _lp_python(log_probs, lengths, alpha):
    values = [lp / ((5 + n) / 6) ** alpha for lp, n in zip(log_probs.tolist(), lengths.tolist(), strict=True)]  # fmt: skip
    return torch.tensor(values)


def _lp_float64(log_probs, lengths, alpha):
    return log_probs.double() / torch.pow((lengths.double() + 5.0) / 6.0, alpha)


# --- beam_step ------------------------------------------------------------------------


def _beam(scores, log_probs, k, *, add=True, per_beam=False, largest=True, mix=False, swap=False):
    B, K, V = log_probs.shape
    total = scores[..., None] + log_probs if add else log_probs
    if per_beam:
        best, tok = total.max(dim=-1)
        new, origin = best.sort(dim=1, descending=True)
        return new[:, :k], origin[:, :k], tok.gather(1, origin)[:, :k]
    if mix:
        new, flat = total.reshape(-1).topk(B * k)
        flat = flat.reshape(B, k) % (K * V)
        return new.reshape(B, k), flat // V, flat % V
    new, flat = total.reshape(B, K * V).topk(k, dim=1, largest=largest)
    if swap:
        return new, flat % K, flat // K
    return new, flat // V, flat % V


def _beam_sort(scores, log_probs, k):
    B, K, V = log_probs.shape
    total = (scores.unsqueeze(-1) + log_probs).flatten(1)
    order = total.argsort(dim=1, descending=True)[:, :k]
    return total.gather(1, order), torch.div(order, V, rounding_mode="floor"), order.remainder(V)


def _beam_unsorted(scores, log_probs, k):
    B, K, V = log_probs.shape
    new, flat = (scores[..., None] + log_probs).view(B, -1).topk(k, dim=1, sorted=False)
    perm = torch.arange(k).flip(0)  # any order of the k survivors is allowed
    new, flat = new[:, perm], flat[:, perm]
    return new, flat // V, flat % V


def _beam_loops(scores, log_probs, k):
    B, K, V = log_probs.shape
    rows = []
    for b in range(B):
        cands = sorted(
            (
                (scores[b, i].item() + log_probs[b, i, v].item(), i, v)
                for i in range(K)
                for v in range(V)
            ),  # fmt: skip
            reverse=True,
        )[:k]
        rows.append(cands)
    new = torch.tensor([[c[0] for c in r] for r in rows])
    origin = torch.tensor([[c[1] for c in r] for r in rows])
    token = torch.tensor([[c[2] for c in r] for r in rows])
    return new, origin, token


def _beam_float_indices(scores, log_probs, k):
    new, origin, token = beam_step(scores, log_probs, k)
    return new, origin.float(), token.float()


BUGS = {
    "greedy_decode": [
        (partial(_greedy, newest_only=True), "saw only the newest token"),
        (partial(_greedy, steps=-1), "one token short of max_len"),
        (lambda *a: _greedy(*a, eval_mode=False), "call model.eval()"),
        (lambda *a: _greedy(*a, position=0), "last position's logits"),
        (lambda *a: _greedy(*a, pad_after=False), "fill its later positions with pad_id"),
        (lambda *a: _greedy(*a, stop="any"), "stop when every sequence"),
        (lambda *a: _greedy(*a, keep_bos=True), "starts with BOS"),
        (lambda *a: _greedy(*a).float(), "token ids are integers"),
    ],
    "length_penalty": [
        (_lp_multiply, "multiplied by the penalty"),
        (lambda lp, n, a: _lp(lp, n, a, form="no5"), "left out the 5"),
        (lambda lp, n, a: _lp(lp, n, a, form="plain"), "plain length normalization"),
        (lambda lp, n, a: _lp(lp, n, a, form="noalpha"), "alpha is ignored"),
        (lambda lp, n, a: _lp(lp, n, a, form="floor"), "integer division"),
        (lambda lp, n, a: lp / ((5 + n) / 6) ** a * float("nan"), "NaN"),
        (lambda lp, n, a: (lp / ((5 + n) / 6) ** a)[None], "shape"),
    ],
    "beam_step": [
        (lambda s, lp, k: _beam(s, lp, k, add=False), "running score"),
        (lambda s, lp, k: _beam(s, lp, k, per_beam=True), "not the best token of each beam"),
        (lambda s, lp, k: _beam(s, lp, k, largest=False), "kept the lowest"),
        (lambda s, lp, k: _beam(s, lp, k, mix=True), "different sentences were mixed"),
        (lambda s, lp, k: _beam(s, lp, k, swap=True), "origin = index // V"),
        (_beam_float_indices, "indices are integers"),
        (lambda s, lp, k: beam_step(s, lp, k)[:2], "three tensors"),
    ],
}

ALTERNATIVES = {
    "greedy_decode": [
        _greedy,
        lambda *a: _greedy(*a, run_to_end=True),  # runs to max_len, padding after EOS
        _greedy_lists,
        lambda m, s, b, e, n, p: greedy_decode(m, s, b, e, max_len=n, pad_id=p, use_cache=False),
    ],
    "length_penalty": [_lp, _lp_exp_log, _lp_python, _lp_float64],
    "beam_step": [_beam, _beam_sort, _beam_unsorted, _beam_loops],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}


# --- sample_decode --------------------------------------------------------------------


@torch.no_grad()
def _sample(
    model,
    src,
    bos,
    eos,
    max_len,
    pad,
    temperature,
    generator,
    *,
    draw="multinomial",
    scale="divide",
    position=-1,
    axis=-1,
    at_zero="argmax",
    pad_after=True,
):
    model.eval()
    memory = model.encode(src)
    tokens = torch.full((src.shape[0], 1), bos, dtype=torch.long)
    done = torch.zeros(src.shape[0], dtype=torch.bool)
    for _ in range(max_len):
        logits = model.decode(tokens, memory, src)[:, position]  # (B, V)
        if temperature == 0 and at_zero == "argmax":
            nxt = logits.argmax(-1)
        else:
            scaled = logits * temperature if scale == "multiply" else logits / temperature
            probs = (logits if scale == "ignore" else scaled).softmax(axis)  # (B, V)
            if draw == "argmax":
                nxt = probs.argmax(-1)
            elif draw == "one":
                nxt = torch.multinomial(probs[0], 1, generator=generator).expand(len(probs))
            else:
                nxt = torch.multinomial(probs, 1, generator=generator if draw != "global" else None)[:, 0]  # fmt: skip
        if pad_after:
            nxt = nxt.masked_fill(done, pad)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        done |= nxt == eos
        if done.all():
            break
    return tokens[:, 1:]


@torch.no_grad()
def _sample_gumbel(model, src, bos, eos, max_len, pad, temperature, generator):
    """Correct: the Gumbel-max trick, argmax(logits / T + Gumbel noise), one draw per row."""
    model.eval()
    memory, out = model.encode(src), torch.full((src.shape[0], 1), bos)
    for _ in range(max_len):
        logits = model.decode(out, memory, src)[:, -1]
        if temperature > 0:
            uniform = torch.rand(logits.shape, generator=generator).clamp_min(1e-12)
            logits = logits / temperature - torch.log(-torch.log(uniform))
        ended = (out[:, 1:] == eos).any(dim=1)
        out = torch.cat([out, torch.where(ended, pad, logits.argmax(-1))[:, None]], 1)
        if (out[:, 1:] == eos).any(dim=1).all():
            break
    return out[:, 1:]


@torch.no_grad()
def _sample_inverse_cdf(model, src, bos, eos, max_len, pad, temperature, generator):
    """Correct: one uniform number per row, looked up in the cumulative probabilities."""
    model.eval()
    memory, out = model.encode(src), [[bos] for _ in range(src.shape[0])]
    while len(out[0]) <= max_len and not all(eos in row[1:] for row in out):
        logits = model.decode(torch.tensor(out), memory, src)[:, -1]
        if temperature < 1e-8:
            nxt = logits.argmax(-1)
        else:
            cdf = torch.softmax(logits / temperature, dim=-1).cumsum(-1)
            u = torch.rand(len(out), 1, generator=generator)
            nxt = (cdf < u).sum(-1).clamp(max=logits.shape[-1] - 1)
        for row, token in zip(out, nxt.tolist(), strict=True):
            row.append(pad if eos in row[1:] else token)
    return torch.tensor(out)[:, 1:]


BUGS["sample_decode"] = [
    (partial(_sample, scale="ignore"), "the temperature is ignored"),
    (partial(_sample, scale="multiply"), "multiplied by the temperature"),
    (partial(_sample, position=0), "last position's logits"),
    (partial(_sample, axis=0), "softmax over the vocabulary, dim=-1"),
    (partial(_sample, draw="argmax"), "the argmax would be greedy decoding"),
    (partial(_sample, draw="one"), "the same first token"),
    (partial(_sample, draw="global"), "with the generator argument"),
    (partial(_sample, at_zero="divide"), "temperature=0 means greedy decoding"),
    (partial(_sample, pad_after=False), "fill its later positions with pad_id"),
]
ALTERNATIVES["sample_decode"] = [_sample, _sample_gumbel, _sample_inverse_cdf]
CHECKS["sample_decode"] = checks.check_sample_decode


# --- top_p_filter ---------------------------------------------------------------------


def _top_p(logits, p, *, rule="before", renormalise=True, descending=True, scatter=True, dim=-1, keep_top=True):  # fmt: skip
    probs = logits.softmax(dim)
    sorted_probs, order = probs.sort(-1, descending=descending)
    cumulative = sorted_probs.cumsum(-1)
    keep = {
        "before": cumulative - sorted_probs < p,
        "inclusive": cumulative <= p,
        "own": sorted_probs >= p,
    }[rule]
    if keep_top:
        keep[..., 0] = True
    kept = sorted_probs * keep
    if renormalise:
        kept = kept / kept.sum(-1, keepdim=True)
    return torch.zeros_like(kept).scatter(-1, order, kept) if scatter else kept


def _top_p_loops(logits, p):
    """Correct: row by row in Python, stopping once the total reaches p."""
    flat = logits.reshape(-1, logits.shape[-1]).softmax(-1)
    out = torch.zeros_like(flat)
    for row, probs in enumerate(flat.tolist()):
        total, kept = 0.0, []
        for token in sorted(range(len(probs)), key=lambda v: -probs[v]):
            kept.append(token)
            total += probs[token]
            if total >= p:
                break
        for token in kept:
            out[row, token] = probs[token] / total
    return out.reshape(logits.shape)


def _top_p_ascending(logits, p):
    """Correct: drop the least likely tokens whose total stays within 1 - p (as HF does)."""
    probs = logits.softmax(-1)
    sorted_probs, order = probs.sort(-1)  # ascending
    drop = sorted_probs.cumsum(-1) <= 1 - p
    drop[..., -1] = False  # the most likely token stays
    dropped = drop.scatter(-1, order, drop)
    kept = probs.masked_fill(dropped, 0.0)
    return kept / kept.sum(-1, keepdim=True)


def _top_p_logits(logits, p):
    filtered = _top_p(logits, p).log()  # -inf outside the nucleus
    return filtered


def test_the_top_p_reference_equals_an_independent_loop():
    # The check names mistakes by comparing with variants of its sort-based reference; that
    # reference agrees with a plain loop over each row's tokens, most likely first.
    from tfx_course.checks.decoding import _nucleus_problem, _top_p_variant

    gen = torch.Generator().manual_seed(0)
    for p in (0.3, 0.7, 0.95, 1.0):
        logits = torch.randn(4, 2, 9, generator=gen) * 2
        expected = _top_p_loops(logits, p)
        torch.testing.assert_close(_top_p_variant(logits, p), expected)
        assert _nucleus_problem(expected, logits.softmax(-1), p) is None
        assert _nucleus_problem(logits.softmax(-1), logits.softmax(-1), 0.3) is not None


BUGS["top_p_filter"] = [
    (partial(_top_p, rule="inclusive"), "the kept tokens must reach p"),
    (partial(_top_p, renormalise=False), "renormalise"),
    (partial(_top_p, rule="own"), "not every token whose own probability is at least p"),
    (partial(_top_p, descending=False), "sort in descending order"),
    (partial(_top_p, scatter=False), "scatter them back"),
    (partial(_top_p, dim=0), "the last axis, dim=-1"),
    (partial(_top_p, rule="inclusive", keep_top=False), "holds NaN: always keep the most likely"),
    (_top_p_logits, "not filtered logits"),
    (lambda logits, p: logits.softmax(-1), "keeps more tokens than needed"),
]
ALTERNATIVES["top_p_filter"] = [_top_p, _top_p_loops, _top_p_ascending]
CHECKS["top_p_filter"] = checks.check_top_p_filter

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)
