"""Training at the hardware's speed: a compiled step that never waits, on large fixed-shape batches.

``training.fit`` is the readable reference, and on a CPU it is as fast as anything. On a GPU
a step of a small model is so short that the overheads set the pace: Python launching a few
thousand small kernels one by one, and the CPU waiting for the GPU at every ``.item()`` (the
loss and gradient norm ``fit`` reads after every step), which empties the GPU's queue. This
module is the opt-in fast path for one GPU; it computes the same update (tested):

- **Large batches of few shapes** (``data.bucketing.make_fixed_shape_batches``): a token budget
  several times ``fit``'s, padded to a few lengths, each with a fixed number of rows, so the
  work per kernel is large and ``torch.compile`` meets few shapes. ``scale_recipe`` re-derives
  the schedule for the larger batches.
- **Compilation**: ``torch.compile`` of the model and the loss together fuses the element-wise
  work (LayerNorm, dropout, residual adds, softmax of the loss) into fewer, larger kernels.
- **Fused AdamW** (one kernel for all parameters, CUDA) and **bf16 autocast**.
- **No host-device sync inside a step**: the loss sums and token counts stay on the device and
  are read every ``log_every`` steps; the gradient norm is read at the same time.
- **Pinned memory and non-blocking copies**: batches wait in page-locked memory and are copied
  without making the CPU wait.

Shapes: B batch, S source length, T target length, V vocabulary size.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tfx_course.data.batching import Seq2SeqBatch
from tfx_course.repro import seed_everything
from tfx_course.training import (
    History,
    TrainConfig,
    _autocast,
    _batch_stream,
    _pad_id_and_device,
    label_smoothed_cross_entropy,
    make_optimizer,
    make_scheduler,
)

__all__ = ["scale_recipe", "SummedLoss", "FastTrainer", "FastRun", "fit_fast", "check_token_ids"]


def scale_recipe(config: TrainConfig, factor: float) -> TrainConfig:
    """Return ``config`` re-derived for batches ``factor`` times larger (in tokens).

    The rule: the same number of epochs, so ``factor`` times fewer steps; the warmup the same
    share of the run (so also ``factor`` times fewer steps); the peak learning rate times
    sqrt(factor), the square-root scaling rule for Adam (a batch k times larger averages away
    k times the gradient variance, whose standard deviation falls by sqrt(k)). ``min_lr_ratio``
    and everything else stay. Logging intervals shrink with the steps.
    """
    if not factor > 0:
        raise ValueError(f"factor={factor} must be positive")
    return dataclasses.replace(
        config,
        lr=config.lr * math.sqrt(factor),
        max_steps=max(1, round(config.max_steps / factor)),
        warmup_steps=round(config.warmup_steps / factor),
        log_every=max(1, round(config.log_every / factor)),
    )


class SummedLoss(nn.Module):
    """The model and its loss as one module: (src, tgt_in, tgt_out) -> (summed loss, tokens).

    Compiling this (rather than the model alone) lets the compiler fuse the loss's softmax
    over the vocabulary with the output layer's epilogue. The loss is label-smoothed
    cross-entropy summed over the real target tokens, in float32; tokens is their count, a
    tensor (reading it would be a sync).
    """

    def __init__(self, model: nn.Module, smoothing: float, pad_id: int, precision: str) -> None:
        super().__init__()
        self.model, self.smoothing, self.pad_id, self.precision = (
            model,
            smoothing,
            pad_id,
            precision,
        )

    def forward(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> tuple[Tensor, Tensor]:
        with _autocast(src.device, self.precision):
            logits = self.model(src, tgt_in)  # (B, T, V)
        summed = label_smoothed_cross_entropy(
            logits, tgt_out, self.smoothing, self.pad_id, reduction="sum"
        )
        return summed, (tgt_out != self.pad_id).sum()


class FastTrainer:
    """Optimizer steps on device batches without reading anything back until ``read``.

    ``compile`` wraps ``SummedLoss`` in ``torch.compile`` (``compile_options`` go to it, e.g.
    ``{"mode": "max-autotune-no-cudagraphs"}`` or ``{"dynamic": False}``). AdamW is fused on
    CUDA. One step is ``training.train_step``'s update (tested), for one process.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        compile: bool = True,
        pad_id: int | None = None,
        compile_options: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.config = model, config
        self.pad_id, self.device = _pad_id_and_device(model, pad_id)
        loss = SummedLoss(model, config.label_smoothing, self.pad_id, config.precision)
        self.loss = torch.compile(loss, **(compile_options or {})) if compile else loss
        self.optimizer = make_optimizer(model, config, fused=self.device.type == "cuda" or None)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.max_norm = config.clip_norm if config.clip_norm is not None else math.inf
        self.loss_sum = torch.zeros((), device=self.device)  # since the last read
        self.token_sum = torch.zeros((), device=self.device, dtype=torch.long)
        self.grad_norm = torch.zeros((), device=self.device)  # of the last step

    def step(self, batch: Seq2SeqBatch) -> None:
        """Take one optimizer step on ``batch`` (already on the device); read nothing back."""
        summed, tokens = self.loss(batch.src, batch.tgt_in, batch.tgt_out)
        self.optimizer.zero_grad(set_to_none=True)
        (summed / tokens.clamp(min=1)).backward()
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.loss_sum += summed.detach().float()
        self.token_sum += tokens

    def read(self) -> tuple[float, float]:
        """Return the mean loss per token since the last read and the last gradient norm (a sync)."""
        values = torch.stack([self.loss_sum / self.token_sum.clamp(min=1), self.grad_norm.float()])
        loss, grad_norm = values.tolist()  # the one place a step's results come back
        self.loss_sum.zero_()
        self.token_sum.zero_()
        return loss, grad_norm


def check_token_ids(batches: Sequence[Seq2SeqBatch], vocab_size: int) -> None:
    """Check once, on the CPU, every id the compiled model will see (it cannot check them)."""
    for i, batch in enumerate(batches):
        for name in ("src", "tgt_in", "tgt_out"):
            ids = getattr(batch, name)
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= vocab_size:
                raise ValueError(
                    f"batch {i}: {name} holds ids from {low} to {high}, outside the vocabulary "
                    f"[0, {vocab_size}); was the tokenizer built with a larger vocabulary?"
                )


@dataclass
class FastRun:
    """What ``fit_fast`` measured: the history, and the clock at every read."""

    history: History
    timeline: list[dict[str, float]] = field(default_factory=list)  # step, seconds, tokens
    first_step_seconds: float | None = None  # mostly compilation, when compiled
    trainer: FastTrainer | None = None  # the trainer, to keep stepping (its compiled graph too)

    def tokens_per_second(self, after_step: int = 0) -> float:
        """Target tokens per second from the first read at or after ``after_step`` to the end.

        With ``after_step=0``, over the whole run (compilation included).
        """
        marks = [{"step": 0, "seconds": 0.0, "tokens": 0}, *self.timeline]
        first = next((m for m in marks if m["step"] >= after_step), marks[-1])
        seconds = marks[-1]["seconds"] - first["seconds"]
        return (marks[-1]["tokens"] - first["tokens"]) / seconds if seconds > 0 else 0.0


def _staged(batches: Sequence[Seq2SeqBatch], device: torch.device) -> list[Seq2SeqBatch]:
    """Return the batches in pinned memory when they will be copied to a GPU."""
    return [b.pin_memory() for b in batches] if device.type == "cuda" else list(batches)


class _Clock:
    """Seconds since the start, read after the device has finished what was queued (a sync)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.start = device, time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of host time, without waiting for the device."""
        return time.perf_counter() - self.start

    def read(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.elapsed()


def _log(run: FastRun, trainer: FastTrainer, step: int, lr: float, tokens: int, clock: _Clock) -> float:  # fmt: skip
    """Read the loss since the last log and record it with the clock; return the loss."""
    loss, grad_norm = trainer.read()
    run.history.record(step, loss, lr, grad_norm)
    run.timeline.append({"step": step, "seconds": clock.read(), "tokens": tokens})
    if not math.isfinite(loss):
        run.history.diverged_at = step
    return loss


def fit_fast(
    model: nn.Module,
    batches: Sequence[Seq2SeqBatch],
    config: TrainConfig,
    *,
    compile: bool = True,
    compile_options: dict[str, Any] | None = None,
    max_seconds: float | None = None,
    on_log: Callable[[int, float], None] | None = None,
) -> FastRun:
    """Train ``model`` for ``config.max_steps`` steps on one device with ``FastTrainer``.

    The batches are visited as ``fit`` visits them (a new seeded order every epoch). Every
    ``config.log_every`` steps (and at the end) the loss and gradient norm are read and
    recorded with the clock, and ``on_log(step, loss)`` is called. A non-finite loss stops
    the run (``History.diverged_at``); so does ``max_seconds``. No validation and no
    checkpoints: the caller evaluates the model it gets back trained.
    """
    if not batches:
        raise ValueError("batches must be a non-empty list of Seq2SeqBatch")
    seed_everything(config.seed)
    trainer = FastTrainer(model, config, compile, compile_options=compile_options)
    check_token_ids(batches, model.config.tgt_vocab_size)
    staged, clock = _staged(batches, trainer.device), _Clock(trainer.device)
    run = FastRun(History(), trainer=trainer)
    counts = {id(b): b.num_tokens(trainer.pad_id) for b in staged}  # once, on the CPU
    model.train()
    tokens = 0
    for step, batch in enumerate(_batch_stream(staged, 0, config.max_steps, config), start=1):
        lr = trainer.optimizer.param_groups[0]["lr"]
        trainer.step(batch.to(trainer.device, non_blocking=True))
        tokens += counts[id(batch)]
        if step == 1:
            run.first_step_seconds = clock.read()
        late = max_seconds is not None and clock.elapsed() > max_seconds
        if step % config.log_every == 0 or step == config.max_steps or late:
            loss = _log(run, trainer, step, lr, tokens, clock)
            if on_log is not None:
                on_log(step, loss)
            if late or run.history.diverged_at is not None:
                break
    run.history.train_seconds, run.history.train_tokens = run.timeline[-1]["seconds"], tokens
    return run
