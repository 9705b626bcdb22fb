"""The efficiency checks (lesson 12): planted bugs are named, other correct implementations
pass."""

from __future__ import annotations

import math
from functools import partial
from itertools import islice

import torch
import torch.nn.functional as F
from check_helpers import planted_bug_tests

from tfx_course import checks
from tfx_course.attention import mask_scores, scaled_dot_product_attention
from tfx_course.data.bucketing import token_batches
from tfx_course.efficiency import blockwise_attention

# --- blockwise_attention --------------------------------------------------------------------


def _blocks(q, k, v, mask, size, *, rescale_out=True, rescale_sum=True, scale=True, last=True,
            fill="min", shift=True, mask_cols="block"):  # fmt: skip
    S = k.shape[-2]
    d = math.sqrt(q.shape[-1]) if scale else 1.0
    m = torch.full(q.shape[:-1] + (1,), -math.inf)
    total = torch.zeros_like(m)
    out = torch.zeros(q.shape[:-1] + (v.shape[-1],))
    for start in range(0, S - S % size if not last else S, size):
        stop = min(start + size, S)
        scores = q @ k[..., start:stop, :].transpose(-2, -1) / d
        if mask is not None:
            cols = mask[..., start:stop] if mask_cols == "block" else mask[..., : stop - start]
            cols = mask if mask.shape[-1] == 1 else cols
            value = torch.finfo(scores.dtype).min if fill == "min" else -math.inf
            scores = scores.masked_fill(~cols, value)
        new = torch.maximum(m, scores.amax(-1, keepdim=True)) if shift else torch.zeros_like(m)
        weights, factor = torch.exp(scores - new), torch.exp(m - new) if shift else 1.0
        total = (factor if rescale_sum else 1.0) * total + weights.sum(-1, keepdim=True)
        out = (factor if rescale_out else 1.0) * out + weights @ v[..., start:stop, :]
        m = new
    return out / total


def _full(q, k, v, mask, size):
    return scaled_dot_product_attention(q, k, v, mask)[0]


def _two_pass(q, k, v, mask, size):
    """Correct: a first pass over the blocks finds each row's maximum, a second sums."""
    S, d = k.shape[-2], math.sqrt(q.shape[-1])
    starts = range(0, S, size)

    def scores(s):
        block = q @ k[..., s : s + size, :].transpose(-2, -1) / d
        return mask_scores(block, None if mask is None else mask[..., s : s + size])

    top = torch.stack([scores(s).amax(-1) for s in starts]).amax(0)[..., None]
    total = sum(torch.exp(scores(s) - top).sum(-1, keepdim=True) for s in starts)
    out = sum(torch.exp(scores(s) - top) @ v[..., s : s + size, :] for s in starts)
    return out / total


def _log_space(q, k, v, mask, size):
    """Correct: keep a running log-sum-exp and a normalised output, merged block by block."""
    S, d = k.shape[-2], math.sqrt(q.shape[-1])
    lse, out = None, None
    for s in range(0, S, size):
        block = q @ k[..., s : s + size, :].transpose(-2, -1) / d
        block = mask_scores(block, None if mask is None else mask[..., s : s + size])
        block_lse = torch.logsumexp(block, -1, keepdim=True)
        block_out = torch.softmax(block, -1) @ v[..., s : s + size, :]
        if lse is None:
            lse, out = block_lse, block_out
            continue
        new = torch.logaddexp(lse, block_lse)
        out = torch.exp(lse - new) * out + torch.exp(block_lse - new) * block_out
        lse = new
    return out


# --- accumulation_step ----------------------------------------------------------------------


def _loss_sum(model, batch, pad_id):
    logits = model(batch.src, batch.tgt_in)
    return F.cross_entropy(
        logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=pad_id, reduction="sum"
    )


def _accumulate(model, micro, optimizer, pad_id, *, bug=None):
    total = sum(int((b.tgt_out != pad_id).sum()) for b in micro)
    if bug != "no_zero":
        optimizer.zero_grad()
    summed = 0.0
    for batch in micro:
        if bug == "zero_inside":
            optimizer.zero_grad()
        loss = _loss_sum(model, batch, pad_id)
        tokens = int((batch.tgt_out != pad_id).sum())
        divisor = {"mean_of_means": tokens * len(micro), "no_divide": 1}.get(bug, total)
        (loss / divisor).backward()
        summed += loss.item()
        if bug == "step_inside":
            optimizer.step()
    if bug != "step_inside":
        optimizer.step()
    return summed / total


def _accumulate_scaled_losses(model, micro, optimizer, pad_id):
    """Correct: each micro-batch's mean loss weighted by its share of the tokens."""
    counts = [int((b.tgt_out != pad_id).sum()) for b in micro]
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for batch, n in zip(micro, counts, strict=True):
        logits = model(batch.src, batch.tgt_in)
        mean = F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=pad_id)
        (mean * n / sum(counts)).backward()
        losses.append(mean.detach() * n)
    optimizer.step()
    return torch.stack(losses).sum() / sum(counts)  # a tensor is fine too


def _accumulate_one_graph(model, micro, optimizer, pad_id):
    """Correct (but holds every micro-batch's graph at once): one backward of the total."""
    optimizer.zero_grad()
    total = sum(int((b.tgt_out != pad_id).sum()) for b in micro)
    loss = sum(_loss_sum(model, b, pad_id) for b in micro) / total
    loss.backward()
    optimizer.step()
    return loss.item()


# --- stream_batches --------------------------------------------------------------------------


def _size(example):
    return max(len(example[0]), len(example[1]))


def _stream(stream, max_tokens, pool_size, *, sort=True, last=True, reset=True, by="longest",
            eager=False):  # fmt: skip
    stream = list(stream) if eager else stream
    pool = []

    def cut(pool):
        order = sorted(pool, key=_size) if sort else list(pool)
        batch, longest = [], 0
        for ex in order:
            cost = (len(batch) + 1) * max(longest, _size(ex)) if by == "longest" else sum(map(_size, batch)) + _size(ex)  # fmt: skip
            if batch and cost > max_tokens:
                yield batch
                batch, longest = [], 0
            batch.append(ex)
            longest = max(longest, _size(ex))
        if batch:
            yield batch

    for example in stream:
        pool.append(example)
        if len(pool) == pool_size:
            yield from cut(pool)
            if reset:
                pool = []
    if pool and last:
        yield from cut(pool)


def _stream_with_library(stream, max_tokens, pool_size):
    """Correct: tfx.data.token_batches on each pool, read with islice."""
    iterator = iter(stream)
    seed = 0
    while pool := list(islice(iterator, pool_size)):
        for indices in token_batches(pool, max_tokens, seed=seed):
            yield [pool[i] for i in indices]
        seed += 1


def _stream_descending(stream, max_tokens, pool_size):
    """Correct: longest first, batches of as many rows as the first (longest) one allows."""
    iterator = iter(stream)
    while pool := list(islice(iterator, pool_size)):
        pool.sort(key=_size, reverse=True)
        while pool:
            rows = max(1, max_tokens // _size(pool[0]))
            yield pool[:rows]
            pool = pool[rows:]


BUGS = {
    "blockwise_attention": [
        (partial(_blocks, rescale_out=False), "multiply the output"),
        (partial(_blocks, rescale_sum=False), "running sum by"),
        (partial(_blocks, scale=False), "sqrt(d_k)"),
        (partial(_blocks, last=False), "last, shorter block"),
        (partial(_blocks, fill="-inf"), "finfo(dtype).min"),
        (partial(_blocks, shift=False), "subtract the running maximum"),
        (partial(_blocks, mask_cols="first"), "mask's columns"),
        (_full, "full score matrix"),
        (lambda q, k, v, mask, size: (_blocks(q, k, v, mask, size), None), "output tensor only"),
    ],
    "accumulation_step": [
        (partial(_accumulate, bug="mean_of_means"), "mean losses"),
        (partial(_accumulate, bug="no_divide"), "never divided"),
        (partial(_accumulate, bug="step_inside"), "stepped after every micro-batch"),
        (partial(_accumulate, bug="zero_inside"), "only the last one"),
        (partial(_accumulate, bug="no_zero"), "zero_grad() before the first"),
        (lambda m, micro, o, p: _accumulate(m, micro, o, p) * 2, "loss per token"),
        (lambda m, micro, o, p: None, "returned NoneType"),
        (lambda m, micro, o, p: 1.0, "did not change"),
    ],
    "stream_batches": [
        (partial(_stream, eager=True), "read before the first batch"),
        (partial(_stream, last=False), "never batched"),
        (partial(_stream, reset=False), "two batches"),
        (partial(_stream, by="sum"), "not the sum of lengths"),
        (partial(_stream, sort=False), "sort each pool by length"),
        (lambda s, m, p: list(_stream(s, m, p)), "read before the first batch"),
    ],
}

ALTERNATIVES = {
    "blockwise_attention": [_blocks, blockwise_attention, _two_pass, _log_space],
    "accumulation_step": [_accumulate, _accumulate_scaled_losses, _accumulate_one_graph],
    "stream_batches": [_stream, _stream_with_library, _stream_descending],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)


def test_an_untouched_exercise_is_not_attempted():
    def stub(*args):
        raise NotImplementedError("exercise: write your code here")

    for name, check in CHECKS.items():
        result = check(stub)
        assert not result.passed and "not attempted yet" in result.message, name
