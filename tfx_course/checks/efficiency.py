"""Checks for lesson 12 (efficiency and scale): attention over key blocks with an online
softmax, gradient accumulation, and a streaming token-budget batcher.

Shapes: B batch, H heads, T query length, S key length, D = d_head.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfx_course.attention import mask_scores, padding_mask, scaled_dot_product_attention
from tfx_course.checks.core import (
    CheckResult,
    Fail,
    call,
    close,
    diagnose,
    expect_tensor,
    is_float,
    max_gap,
    run_check,
)
from tfx_course.data.batching import Seq2SeqBatch, make_batch
from tfx_course.data.synthetic import make_pairs, tokenizer_for
from tfx_course.efficiency import split_batch, tensor_memory
from tfx_course.model import ModelConfig, Transformer

__all__ = [
    "check_blockwise_attention",
    "check_accumulation_step",
    "check_stream_batches",
]


# --- attention over key blocks ---------------------------------------------------------------


def _blockwise_bug(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, size: int, bug: str) -> Tensor:  # fmt: skip
    """Blockwise attention with one planted mistake (``bug``), as in ``_BLOCKWISE_BUGS``."""
    S = k.shape[-2]
    scale = 1.0 if bug == "no_scale" else math.sqrt(q.shape[-1])
    top = S - S % size if bug == "drop_last" else S
    m = torch.full(q.shape[:-1] + (1,), -math.inf)
    total, out, parts = torch.zeros_like(m), 0.0, []
    for start in range(0, top, size):
        cols = slice(0, size) if bug == "first_mask" else slice(start, start + size)
        scores = q @ k[..., start : start + size, :].transpose(-2, -1) / scale
        if mask is not None:
            scores = mask_scores(scores, mask[..., cols] if mask.shape[-1] > 1 else mask)
        if bug == "per_block":  # each block normalised on its own, the results averaged
            parts.append(scores.softmax(-1) @ v[..., start : start + size, :])
            continue
        new = torch.maximum(m, scores.amax(-1, keepdim=True))
        weights = torch.exp(scores - new)
        rescale = torch.exp(m - new)
        total = (1.0 if bug == "sum_not_rescaled" else rescale) * total + weights.sum(-1, keepdim=True)  # fmt: skip
        out = (1.0 if bug == "out_not_rescaled" else rescale) * out + weights @ v[..., start : start + size, :]  # fmt: skip
        m = new
    return sum(parts) / len(parts) if bug == "per_block" else out / total


_BLOCKWISE_BUGS = {
    "out_not_rescaled": "when a block raises the running maximum, multiply the output "
    "accumulated so far by exp(old max - new max), as you do for the running sum",
    "sum_not_rescaled": "when a block raises the running maximum, multiply the running sum by "
    "exp(old max - new max) too",
    "per_block": "each block was normalised by its own softmax: keep one running sum over all "
    "blocks and divide once, at the end",
    "no_scale": "the scores are not divided by sqrt(d_k)",
    "drop_last": "the last, shorter block of keys was never attended: when block_size does not "
    "divide S, the last block has S % block_size keys",
    "first_mask": "every block used the mask's first columns: take the mask's columns "
    "start:stop for the block of keys start:stop",
}


def _blockwise_mistakes(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, size: int
) -> dict[str, Callable[[], Tensor]]:
    return {
        message: lambda bug=bug: _blockwise_bug(q, k, v, mask, size, bug)
        for bug, message in _BLOCKWISE_BUGS.items()
    }


def _blockwise_inputs(seed: int, T: int, S: int, scale: float = 1.0) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q = scale * torch.randn(2, 2, T, 8, generator=gen)
    k, v = torch.randn(2, 2, S, 8, generator=gen), torch.randn(2, 2, S, 6, generator=gen)
    return q, k, v


def _masks(T: int, S: int) -> dict[str, Tensor | None]:
    keep = torch.ones(2, S, dtype=torch.bool)
    keep[1, S - 3 :] = False  # three padded keys in sequence 2
    causal = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
    blocked_row = torch.ones(T, S, dtype=torch.bool)
    blocked_row[1] = False  # query 1 may attend nowhere
    return {
        "no mask": None,
        "a padding and causal mask": padding_mask(keep) & causal,
        "a mask that blocks every key of query 1": blocked_row,
    }


def _blockwise_case(fn: Callable[..., Any], T: int, S: int, size: int, timeout: float | None) -> None:  # fmt: skip
    q, k, v = _blockwise_inputs(T * 100 + S, T, S)
    for name, mask in _masks(T, S).items():
        what = f"blockwise_attention(q, k, v, mask, block_size={size}) with S={S} and {name}"
        args = (q.clone(), k.clone(), v.clone(), None if mask is None else mask.clone(), size)
        got = call(what, fn, *args, timeout=timeout)
        if isinstance(got, tuple | list):
            raise Fail(f"{what} returned a {type(got).__name__}; return the output tensor only")
        if isinstance(got, Tensor) and not torch.isfinite(got).all() and mask is not None:
            raise Fail(f"{what} contains NaN: fill blocked scores with torch.finfo(dtype).min "
                       "(mask_scores does), not -inf; a fully blocked row then averages the "
                       "values, as the library's attention does")  # fmt: skip
        got = expect_tensor(got, what, shape=(2, 2, T, 6))
        expected, _ = scaled_dot_product_attention(q, k, v, mask)
        if mask is not None and not mask.any(-1).all():
            # A query that may attend nowhere has no meaningful output: any finite one will do.
            got = torch.where(mask.any(-1)[..., None], got, expected)
        if close(got, expected):
            continue
        diagnose(got, _blockwise_mistakes(q, k, v, mask, size))
        raise Fail(f"{what} differs from full attention by up to {max_gap(got, expected):.3g}")


def _overflow_case(fn: Callable[..., Any], timeout: float | None) -> None:
    q, k, v = _blockwise_inputs(1, 4, 9, scale=300.0)  # scores of several thousand
    what = "blockwise_attention(q, k, v, None, block_size=4) on scores of several thousand"
    got = call(what, fn, q.clone(), k.clone(), v.clone(), None, 4, timeout=timeout)
    if isinstance(got, Tensor) and got.dtype.is_floating_point and not torch.isfinite(got).all():
        raise Fail(f"{what} overflowed: subtract the running maximum before exp")
    if isinstance(got, tuple | list):
        raise Fail(f"{what} returned a {type(got).__name__}; return the output tensor only")
    got = expect_tensor(got, what, shape=(2, 2, 4, 6))
    expected, _ = scaled_dot_product_attention(q, k, v)
    if not close(got, expected, atol=1e-4):
        diagnose(got, _blockwise_mistakes(q, k, v, None, 4), atol=1e-4)
        raise Fail(f"{what} differs from full attention by up to {max_gap(got, expected):.3g}")


def _blockwise_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    _overflow_case(fn, timeout)
    _blockwise_case(fn, T=5, S=12, size=4, timeout=timeout)  # 4 divides 12
    _blockwise_case(fn, T=7, S=10, size=3, timeout=timeout)  # 3 does not divide 10
    q, k, v = _blockwise_inputs(2, 96, 96)
    # Measured in the thread that runs the learner's code (the worker, where there is no SIGALRM).
    _, used = call("blockwise_attention", tensor_memory, fn, q, k, v, None, 16, timeout=timeout)
    full = 2 * 2 * 96 * 96 * q.element_size()
    if used.largest_bytes >= full:
        raise Fail("a (B, H, T, S) tensor was formed, the full score matrix: compute the scores "
                   "of one block of keys at a time, (B, H, T, block_size)")  # fmt: skip
    return "equals full attention for 3 masks and 2 block sizes, no overflow, no T x S tensor"


def check_blockwise_attention(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(q, k, v, mask, block_size) -> out``, attention over blocks of keys."""
    return run_check("blockwise_attention", lambda: _blockwise_steps(fn, timeout))


# --- gradient accumulation -------------------------------------------------------------------

_TOKENIZER = tokenizer_for("reversal")


def _accumulation_setup() -> tuple[nn.Module, list[Seq2SeqBatch]]:
    torch.manual_seed(0)
    config = ModelConfig(_TOKENIZER.vocab_size, _TOKENIZER.vocab_size, d_model=16, n_heads=2,
                         n_encoder_layers=1, n_decoder_layers=1, d_ff=32, dropout=0.0, max_len=16)  # fmt: skip
    pairs = sorted(make_pairs("reversal", 12, seed=5, min_len=1, max_len=10), key=lambda p: len(p[0]))  # fmt: skip
    batch = make_batch(pairs, _TOKENIZER, _TOKENIZER)
    return Transformer(config), split_batch(batch, 3)  # token counts differ between the three


def _summed_loss(model: nn.Module, batch: Seq2SeqBatch) -> Tensor:
    logits = model(batch.src, batch.tgt_in)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=0, reduction="sum")  # fmt: skip


def _with_stale_gradients(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` whose gradients hold what an earlier step left behind."""
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.01)
    return model


def _accumulate_bug(model: nn.Module, micro: list[Seq2SeqBatch], bug: str) -> nn.Module:
    """Run one SGD accumulation step with a planted mistake on a copy of ``model``."""
    model = _with_stale_gradients(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    total = sum(b.num_tokens() for b in micro)
    if bug != "stale":
        optimizer.zero_grad()
    for batch in micro:
        if bug == "zero_inside":
            optimizer.zero_grad()
        loss = _summed_loss(model, batch)
        divisor = {"mean_of_means": batch.num_tokens() * len(micro), "sum_of_means": batch.num_tokens(),  # fmt: skip
                   "not_divided": 1}.get(bug, total)  # fmt: skip
        (loss / divisor).backward()
        if bug in ("step_inside", "step_each"):
            optimizer.step()
        if bug == "step_inside":
            optimizer.zero_grad()
    if bug not in ("step_inside", "step_each"):
        optimizer.step()
    return model


_ACCUMULATION_BUGS = {
    "mean_of_means": "you averaged the micro-batches' mean losses; micro-batches hold different "
    "numbers of tokens, so divide each micro-batch's summed loss by the tokens of all of them",
    "sum_of_means": "each micro-batch's loss was averaged over its own tokens and the gradients "
    "added up: divide each summed loss by the tokens of all micro-batches",
    "not_divided": "the summed loss was never divided by the number of tokens",
    "step_inside": "the optimizer stepped after every micro-batch: let the gradients add up "
    "and step once, after the last micro-batch",
    "step_each": "the optimizer stepped after every micro-batch: let the gradients add up "
    "and step once, after the last micro-batch",
    "zero_inside": "the gradients were zeroed before every micro-batch, so only the last one "
    "counted: zero them once, before the first",
    "stale": "gradients left from before this step were added in: call optimizer.zero_grad() "
    "before the first micro-batch",
}


def _accumulation_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    model, micro = _accumulation_setup()
    reference = _accumulate_bug(model, micro, "none")
    learner = _with_stale_gradients(model)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.5)
    what = "accumulation_step(model, micro_batches, optimizer, pad_id=0)"
    loss = call(what, fn, learner, list(micro), optimizer, 0, timeout=timeout)
    value = loss.item() if isinstance(loss, Tensor) and loss.numel() == 1 else loss
    if not is_float(value):
        raise Fail(f"{what} returned {type(loss).__name__}; return the loss per token of all "
                   "micro-batches as a number, after the optimizer step")  # fmt: skip
    got = torch.cat([p.detach().flatten() for p in learner.parameters()])
    expected = torch.cat([p.detach().flatten() for p in reference.parameters()])
    if torch.equal(got, torch.cat([p.detach().flatten() for p in model.parameters()])):
        raise Fail("the weights did not change: call loss.backward() and optimizer.step()")
    if not close(got, expected, atol=1e-6):
        variants = {m: lambda b=b: torch.cat([p.detach().flatten() for p in _accumulate_bug(model, micro, b).parameters()]) for b, m in _ACCUMULATION_BUGS.items()}  # fmt: skip
        diagnose(got, variants, atol=1e-6)
        raise Fail(f"after the step the weights differ from one big batch's by up to {max_gap(got, expected):.3g}")  # fmt: skip
    total = sum(b.num_tokens() for b in micro)
    with torch.no_grad():
        expected_loss = sum(_summed_loss(model, b).item() for b in micro) / total
    if abs(float(value) - expected_loss) > 1e-4:
        raise Fail(f"{what} returned {loss!r}; return the loss per token of all micro-batches, "
                   f"{expected_loss:.4f} here (the summed losses divided by the total tokens)")  # fmt: skip
    return "one step on 3 micro-batches of different sizes equals one step on the whole batch"


def check_accumulation_step(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(model, micro_batches, optimizer, pad_id) -> loss``, one accumulated step."""
    return run_check("accumulation_step", lambda: _accumulation_steps(fn, timeout))


# --- a streaming token-budget batcher --------------------------------------------------------


def _stream_examples(n: int = 230) -> list[tuple[list[int], list[int]]]:
    """Unique examples (the first id is the index) with lengths from 2 to 30."""
    gen = torch.Generator().manual_seed(12)
    lengths = torch.randint(2, 31, (n,), generator=gen).tolist()
    return [([i, *range(length - 1)], [i, *range(length)][:length]) for i, length in enumerate(lengths)]  # fmt: skip


class _Counting:
    """An iterator over examples that counts how many have been read."""

    def __init__(self, examples: list) -> None:
        self.examples, self.read = examples, 0

    def __iter__(self) -> Iterator:
        for example in self.examples:
            self.read += 1
            yield example


def _size(example: tuple[list[int], list[int]]) -> int:
    return max(len(example[0]), len(example[1]))


def _coverage(batches: list, examples: list, pool: int) -> None:
    seen = Counter(ex[0][0] for batch in batches for ex in batch)
    missing = [i for i in range(len(examples)) if seen[i] == 0]
    if any(count > 1 for count in seen.values()):
        raise Fail("some examples are in two batches: start a new, empty pool after batching one")
    if missing and missing == list(range(len(examples) - len(examples) % pool, len(examples))):
        raise Fail(f"the last {len(missing)} examples were never batched: the last pool holds "
                   f"fewer than pool_size={pool} examples, batch it too")  # fmt: skip
    if missing:
        raise Fail(f"{len(missing)} examples are in no batch, e.g. number {missing[0]}")


def _budget(batches: list, max_tokens: int) -> None:
    for number, batch in enumerate(batches):
        if len(batch) == 0:
            raise Fail(f"batch {number} is empty")
        cost = len(batch) * max(_size(ex) for ex in batch)
        if cost > max_tokens:
            raise Fail(f"batch {number} has {len(batch)} examples and its longest has "
                       f"{max(_size(ex) for ex in batch)} tokens: {cost} padded slots > "
                       f"max_tokens={max_tokens}; count rows x longest, not the sum of lengths")  # fmt: skip


def _stream_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    examples, pool, max_tokens = _stream_examples(), 50, 120
    source = _Counting(examples)
    what = f"stream_batches(stream, max_tokens={max_tokens}, pool_size={pool})"
    stream = call(what, fn, iter(source), max_tokens, pool, timeout=timeout)
    try:
        iterator = iter(stream)
    except TypeError:
        raise Fail(
            f"{what} returned {type(stream).__name__}; yield the batches one by one"
        ) from None
    first = call(what, next, iterator, None, timeout=timeout)
    if source.read > pool + 1:
        raise Fail(f"{source.read} examples were read before the first batch came out: read one "
                   f"pool of pool_size={pool} examples, yield its batches, then read on (use "
                   "yield, and do not turn the stream into a list)")  # fmt: skip
    batches = [first, *call(what, list, iterator, timeout=timeout)] if first is not None else []
    if not all(isinstance(b, list | tuple) and all(isinstance(e, tuple | list) and len(e) == 2 for e in b) for b in batches):  # fmt: skip
        raise Fail(f"{what} must yield lists of (source ids, target ids) examples")
    _coverage(batches, examples, pool)
    _budget(batches, max_tokens)
    for batch in batches:
        pools = {ex[0][0] // pool for ex in batch}
        if len(pools) > 1:
            raise Fail("a batch mixes examples of two pools: batch each pool on its own")
    slots = sum(len(b) * max(_size(ex) for ex in b) for b in batches)
    efficiency = sum(_size(ex) for ex in examples) / slots
    if efficiency < 0.8:
        raise Fail(f"only {efficiency:.0%} of the padded slots hold tokens: sort each pool by "
                   "length before cutting it into batches, so that similar lengths share one")  # fmt: skip
    return f"lazy, every example once, within the budget, {efficiency:.0%} of the slots used"


def check_stream_batches(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(stream, max_tokens, pool_size)``, which yields token-budget batches lazily."""
    return run_check("stream_batches", lambda: _stream_steps(fn, timeout))
