"""Efficiency and scale: attention over key blocks, measuring time, FLOPs and memory, gradient
accumulation, and a corpus streamed from shards in token-budget batches.

Shapes: B batch, H heads, T query length, S key length, D = d_head, C = d_model.

``blockwise_attention`` computes exact attention one block of keys at a time with an online
softmax (a running maximum and a running sum per query), so it never holds more than
``(..., T, block_size)`` scores: the idea behind FlashAttention, written with tensor operations.
``tensor_memory`` measures what a computation holds: the bytes of the tensors it creates, while
they are alive, counted at every operation (exact, and the same on every machine for the same
operations). ``accumulation_step`` splits one optimizer step over several micro-batches and
equals ``training.train_step`` on their union; ``read_shards`` and ``stream_token_batches`` read
a corpus lazily and bucket it pool by pool with ``data.make_token_batches``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from tfx_course.attention import _check_mask, _check_qkv, mask_scores
from tfx_course.data.batching import Seq2SeqBatch
from tfx_course.data.bucketing import make_token_batches
from tfx_course.data.tokenizers import PAD_ID, Tokenizer
from tfx_course.distributed import world
from tfx_course.files import atomic_write_text
from tfx_course.training import TrainConfig, _autocast, label_smoothed_cross_entropy
from tfx_course.validation import check_positive_int

__all__ = [
    "blockwise_attention",
    "TensorMemory",
    "tensor_memory",
    "count_operations",
    "count_flops",
    "best_times",
    "loglog_slope",
    "split_batch",
    "accumulation_step",
    "write_shards",
    "read_shards",
    "stream_token_batches",
]


# --- attention over key blocks, with an online softmax -------------------------------------


def _mask_block(mask: Tensor | None, start: int, stop: int) -> Tensor | None:
    """Return the columns start:stop of a mask broadcastable to (..., T, S)."""
    if mask is None or mask.shape[-1] == 1:
        return mask  # None, or one column that broadcasts over every key
    return mask[..., start:stop]


def _online_step(
    state: tuple[Tensor, Tensor, Tensor] | None, scores: Tensor, v_block: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Fold one block of scores into (running max, running sum, unnormalised output).

    Shapes: scores (..., T, b), v_block (..., b, Dv); state (..., T, 1), (..., T, 1), (..., T, Dv).
    """
    # The max only keeps exp() from overflowing; the result does not depend on it, so it
    # needs no gradient (detach), and the shifted scores can become the weights in place.
    block_max = scores.detach().amax(dim=-1, keepdim=True)  # (..., T, 1)
    if state is None:  # the first block: nothing to rescale yet
        weights = (scores - block_max).exp_()  # (..., T, b), unnormalised
        return block_max, weights.sum(dim=-1, keepdim=True), weights @ v_block
    running_max, running_sum, out = state
    new_max = torch.maximum(running_max, block_max)
    rescale = torch.exp(running_max - new_max)  # (..., T, 1): earlier terms to the new max
    weights = (scores - new_max).exp_()  # (..., T, b)
    running_sum = running_sum * rescale + weights.sum(dim=-1, keepdim=True)
    return new_max, running_sum, out * rescale + weights @ v_block  # (..., T, Dv)


def blockwise_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, block_size: int = 128
) -> Tensor:
    """Compute softmax(q k^T / sqrt(d_k)) v over blocks of keys, with an online softmax.

    Shapes:
        q: (..., T, D), k: (..., S, D), v: (..., S, Dv), mask: broadcastable to (..., T, S)
        (boolean, True = may attend) -> (..., T, Dv).

    Equals ``attention.scaled_dot_product_attention``'s output (blocked scores get
    ``finfo.min`` too, so a fully blocked row averages the values) while holding the scores
    of one block of keys, ``(..., T, block_size)``, at a time; the last block may be shorter.
    """
    _check_qkv(q, k, v)
    check_positive_int(block_size=block_size)
    d_k, T, S = q.shape[-1], q.shape[-2], k.shape[-2]
    if mask is not None:
        _check_mask(mask, torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]) + (T, S))
    state = None
    for start in range(0, S, block_size):
        stop = min(start + block_size, S)
        scores = q @ k[..., start:stop, :].transpose(-2, -1) / math.sqrt(d_k)  # (..., T, b)
        scores = mask_scores(scores, _mask_block(mask, start, stop))
        state = _online_step(state, scores, v[..., start:stop, :])
        del scores  # free this block's scores before the next block's are made
    if state is None:
        raise ValueError("blockwise_attention needs at least one key (S > 0)")
    _, running_sum, out = state
    return out / running_sum  # (..., T, Dv)


# --- measuring: memory, FLOPs, time --------------------------------------------------------


@dataclass(frozen=True)
class TensorMemory:
    """What a computation held: the most bytes alive at once, and its largest single tensor."""

    peak_bytes: int
    largest_bytes: int


class _LiveTensors(TorchDispatchMode):
    """Follow the storages that operations create; keep their live total, its peak, the largest."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[StorageWeakRef, int] = {}
        self.current = self.peak = self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for ref in [ref for ref in self.live if ref.expired()]:  # freed since the last operation
            self.current -= self.live.pop(ref)
        given = {_storage_ref(t) for t in tree_flatten((args, kwargs))[0] if _counted(t)}
        for t in tree_flatten(out)[0]:
            if not _counted(t):
                continue
            ref = _storage_ref(t)
            if ref not in given and ref not in self.live:  # not a view, not in place: new
                nbytes = t.untyped_storage().nbytes()
                self.live[ref] = nbytes
                self.current += nbytes
                self.largest = max(self.largest, nbytes)
        self.peak = max(self.peak, self.current)
        return out


def _counted(t: object) -> bool:
    return isinstance(t, Tensor) and t.device.type != "meta"


def _storage_ref(t: Tensor) -> StorageWeakRef:
    return StorageWeakRef(t.untyped_storage())


def tensor_memory(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, TensorMemory]:
    """Run ``fn(*args, **kwargs)``; return its result and the tensor memory it held.

    Counts every tensor an operation creates inside ``fn`` (intermediates, outputs, what
    autograd saves for backward, gradients) from its creation until Python frees it, measured
    after every operation. Inputs are not counted, nor scratch memory a kernel frees before it
    returns. The count depends only on the operations, not on the machine or its load.
    """
    tracker = _LiveTensors()
    with tracker:
        result = fn(*args, **kwargs)
    return result, TensorMemory(tracker.peak, tracker.largest)


class _OperationCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_operations(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Return how many tensor operations (ATen calls, views included) ``fn(*args)`` runs.

    Each is a step the program takes in order; on parallel hardware each is at least one
    kernel launch, whatever the size of the tensors it works on.
    """
    with _OperationCounter() as counter:
        fn(*args, **kwargs)
    return counter.count


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Return the floating-point operations of ``fn(*args)`` as PyTorch's FLOP counter counts
    them: 2 per multiply-add of matrix products and attention, nothing for element-wise work."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def best_times(
    fns: Mapping[Hashable, Callable[[], Any]],
    repeats: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[Hashable, float]:
    """Return the fastest of ``repeats`` timed calls of each function, in seconds.

    Each runs once untimed first (warm-up); then the functions take turns in a rotating order,
    so that a busy moment of the machine hits all of them alike. The minimum is the run least
    disturbed by other work, the most repeatable summary on a shared machine. ``clock`` is
    wall time by default; ``time.thread_time`` counts only the CPU time of the calling thread,
    which other programs sharing the core do not inflate (for one-thread work).
    """
    check_positive_int(repeats=repeats)
    names = list(fns)
    for fn in fns.values():
        fn()
    times: dict[Hashable, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = clock()
            fns[name]()
            times[name].append(clock() - start)
    return {name: min(t) for name, t in times.items()}


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Return the least-squares slope of log y against log x: y ~ x^slope."""
    if len(xs) != len(ys) or len(xs) < 2 or min(*xs, *ys) <= 0:
        raise ValueError("loglog_slope needs two or more matching positive xs and ys")
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    spread = sum((a - mx) ** 2 for a in lx)
    if spread == 0:
        raise ValueError("loglog_slope needs at least two different xs")
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / spread


# --- gradient accumulation ---------------------------------------------------------------------


def split_batch(batch: Seq2SeqBatch, n: int) -> list[Seq2SeqBatch]:
    """Split a batch's rows into ``n`` consecutive micro-batches (sizes differ by at most one).

    Shapes: (B, L) tensors -> n batches of about B / n rows, same widths.
    """
    check_positive_int(n=n)
    if n > len(batch):
        raise ValueError(f"cannot split a batch of {len(batch)} rows into {n} micro-batches")
    parts = zip(*(t.tensor_split(n) for t in (batch.src, batch.tgt_in, batch.tgt_out)), strict=True)  # fmt: skip
    return [Seq2SeqBatch(src, tgt_in, tgt_out) for src, tgt_in, tgt_out in parts]


def accumulation_step(
    model: nn.Module,
    micro_batches: Sequence[Seq2SeqBatch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    pad_id: int,
) -> tuple[float, float, float]:
    """Run one optimizer step on several micro-batches; return (loss, grad norm, lr used).

    Each micro-batch's summed loss is divided by the target tokens of *all* of them, and the
    gradients add up in ``.grad`` before the single clip and step: the result equals
    ``training.train_step`` on one batch holding every row, with one micro-batch in memory at a
    time. One process only: under DistributedDataParallel use ``train_step`` per step.
    """
    if world()[1] > 1:
        raise RuntimeError("accumulation_step runs in one process; under torchrun use train_step")
    if len(micro_batches) == 0:
        raise ValueError("accumulation_step needs at least one micro-batch")
    lr = optimizer.param_groups[0]["lr"]
    total = max(1, sum(batch.num_tokens(pad_id) for batch in micro_batches))
    optimizer.zero_grad(set_to_none=True)
    summed_loss = 0.0
    for batch in micro_batches:
        with _autocast(batch.src.device, config.precision):
            logits = model(batch.src, batch.tgt_in)  # (B, T, V)
        summed = label_smoothed_cross_entropy(
            logits, batch.tgt_out, config.label_smoothing, pad_id, reduction="sum"
        )
        (summed / total).backward()  # gradients add up in .grad
        summed_loss += summed.item()
    max_norm = config.clip_norm if config.clip_norm is not None else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    scheduler.step()
    return summed_loss / total, grad_norm.item(), lr


# --- a corpus in shards, streamed ----------------------------------------------------------


def write_shards(
    pairs: Iterable[tuple[str, str]], folder: str | Path, shard_size: int
) -> list[Path]:
    """Write (source, target) pairs as tab-separated shards of ``shard_size`` lines each.

    Reads ``pairs`` lazily and writes each shard atomically (``shard-00000.tsv``, ...), so a
    corpus larger than memory can be written from a generator. Returns the shard paths.
    """
    check_positive_int(shard_size=shard_size)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    iterator = iter(pairs)
    while chunk := list(islice(iterator, shard_size)):
        for source, target in chunk:
            if any(c in text for text in (source, target) for c in "\t\n\r"):
                raise ValueError(f"a shard line cannot hold a tab or a newline: {source!r}")
        path = folder / f"shard-{len(paths):05d}.tsv"
        atomic_write_text(path, "".join(f"{s}\t{t}\n" for s, t in chunk))
        paths.append(path)
    return paths


def read_shards(
    paths: Sequence[str | Path], shuffle: bool = False, seed: int = 0
) -> Iterator[tuple[str, str]]:
    """Yield the (source, target) pairs of tab-separated shards, one line at a time.

    Only the line being read is in memory. ``shuffle`` visits the shards in an order seeded by
    ``seed`` (use ``seed + epoch`` for a new order every epoch); lines keep their order.
    """
    order = list(paths)
    if shuffle:
        random.Random(seed).shuffle(order)
    for path in order:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                source, tab, target = line.rstrip("\n").partition("\t")
                if not tab:
                    raise ValueError(f"{Path(path).name} line {number} has no tab")
                yield source, target


def stream_token_batches(
    pairs: Iterable[tuple[str, str]],
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    max_tokens: int,
    pool_size: int = 10_000,
    seed: int = 0,
    pad_id: int = PAD_ID,
) -> Iterator[Seq2SeqBatch]:
    """Bucket a stream of text pairs into token-budget batches, one pool at a time.

    Reads ``pool_size`` pairs, encodes them, sorts them by length and cuts them into batches of
    at most ``max_tokens`` padded slots (``data.make_token_batches``), yields those in a seeded
    random order, then reads the next pool. Every pair is in exactly one batch, and at most
    ``pool_size`` pairs are held at once, however long the stream.
    """
    check_positive_int(max_tokens=max_tokens, pool_size=pool_size)
    rng = random.Random(seed)
    iterator = iter(pairs)
    while pool := list(islice(iterator, pool_size)):
        ids = [
            (src_tokenizer.encode(s, add_special=True), tgt_tokenizer.encode(t, add_special=True))
            for s, t in pool
        ]
        yield from make_token_batches(
            ids, max_tokens, shuffle=True, seed=rng.randrange(2**31), pad_id=pad_id
        )
