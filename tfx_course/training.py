"""Training a sequence-to-sequence model: config, loss, schedules, optimizer, step, loop, evaluation.

Checkpoints are written by ``tfx_course.checkpoint`` (``save_checkpoint`` and
``load_checkpoint`` are re-exported here). ``fit`` also runs under DistributedDataParallel
(``tfx_course.distributed``).

Shapes: B batch, S source length, T target length, V target vocabulary size.

The model is a ``TrainableModel``: ``forward(src (B, S), tgt_in (B, T)) -> logits (B, T, V)``,
``config.pad_id`` and ``device`` (the course's ``Transformer``); batches are ``Seq2SeqBatch``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from tfx_course.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from tfx_course.data.batching import Seq2SeqBatch
from tfx_course.distributed import all_reduce_sum, any_process, shard_batch, unwrap_model, world
from tfx_course.model import eval_mode
from tfx_course.repro import seed_everything
from tfx_course.validation import is_int

__all__ = [
    "SCHEDULES",
    "TrainConfig",
    "History",
    "Checkpoint",
    "label_smoothed_cross_entropy",
    "noam_peak_lr",
    "WarmupSchedule",
    "warmup_schedule",
    "make_optimizer",
    "make_scheduler",
    "TrainableModel",
    "train_step",
    "fit",
    "evaluate",
    "grad_norms_by_layer",
    "save_checkpoint",
    "load_checkpoint",
]

SCHEDULES = ("noam", "cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16")
# Fields that change how a run reports, not what it computes: a resumed run may change them.
_REPORTING_FIELDS = {"log_every", "eval_every", "checkpoint_every"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``fit`` needs besides the model and the data."""

    lr: float = 1e-3  # peak learning rate, reached at the end of warmup
    max_steps: int = 1000  # optimizer steps in the whole run (the schedule's length)
    warmup_steps: int = 100  # linear ramp from lr / warmup_steps up to lr (may exceed max_steps)
    schedule: str = "noam"  # after warmup: "noam" (1/sqrt(step)), "cosine", "linear", "constant"
    min_lr_ratio: float = 0.0  # where "cosine" and "linear" end, as a fraction of lr
    batch_size: int = 64  # pairs per batch, for make_batches
    label_smoothing: float = 0.1  # probability mass spread over the whole vocabulary
    weight_decay: float = 0.01  # AdamW decay, applied to weight matrices only
    betas: tuple[float, float] = (0.9, 0.98)  # Adam's moment decay rates (the paper's values)
    eps: float = 1e-9  # Adam's denominator guard (the paper's value)
    clip_norm: float | None = 1.0  # clip the global gradient norm to this; None = no clipping
    seed: int = 0  # seeds dropout and the batch order
    shuffle: bool = True  # visit the batches in a new seeded order every epoch
    log_every: int = 10  # refresh the progress bar's loss and lr every n steps
    eval_every: int | None = None  # validation loss every n steps (and at the end)
    checkpoint_every: int | None = None  # save every n steps (and at the end) when given a path
    precision: str = "fp32"  # "bf16": bfloat16 autocast for the forward pass (CUDA only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))  # from_dict may hand in a list
        checks = [
            (self.lr > 0, f"lr={self.lr} must be positive"),
            (is_int(self.max_steps) and self.max_steps >= 1, f"max_steps={self.max_steps} must be a positive integer"),
            (is_int(self.warmup_steps) and self.warmup_steps >= 0, f"warmup_steps={self.warmup_steps} must be a non-negative integer"),
            (self.schedule in SCHEDULES, f"schedule={self.schedule!r} is not one of {SCHEDULES}"),
            (0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]"),
            (is_int(self.batch_size) and self.batch_size >= 1, f"batch_size={self.batch_size} must be a positive integer"),
            (0.0 <= self.label_smoothing < 1.0, f"label_smoothing={self.label_smoothing} must lie in [0, 1)"),
            (self.weight_decay >= 0, f"weight_decay={self.weight_decay} must not be negative"),
            (len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), f"betas={self.betas} must be two numbers in [0, 1)"),
            (self.eps > 0, f"eps={self.eps} must be positive"),
            (self.clip_norm is None or self.clip_norm > 0, f"clip_norm={self.clip_norm} must be positive or None"),
            (is_int(self.log_every) and self.log_every >= 1, f"log_every={self.log_every!r} must be a positive integer"),
            (_positive_or_none(self.eval_every), f"eval_every={self.eval_every!r} must be a positive integer or None"),
            (_positive_or_none(self.checkpoint_every), f"checkpoint_every={self.checkpoint_every!r} must be a positive integer or None"),
            (self.precision in PRECISIONS, f"precision={self.precision!r} is not one of {PRECISIONS}"),
        ]  # fmt: skip
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    @classmethod
    def toy(cls, **changes: Any) -> TrainConfig:
        """Return a CPU setting for the synthetic tasks, to use with ``ModelConfig.tiny``.

        Reversal (lengths 3-8, batches of 64) reaches about 98% exact match in about 30 s of
        one CPU core; dates need about twice the steps (``TrainConfig.toy(max_steps=1500)``).
        """
        base = cls(
            lr=3e-3,
            max_steps=800,
            warmup_steps=80,
            schedule="cosine",
            label_smoothing=0.0,
            weight_decay=0.01,
            clip_norm=1.0,
            eval_every=200,
        )
        return dataclasses.replace(base, **changes)

    @classmethod
    def paper(cls, **changes: Any) -> TrainConfig:
        """Return the base model's recipe of "Attention Is All You Need" (d_model=512, Adam)."""
        base = cls(
            lr=noam_peak_lr(512, 4000),
            max_steps=100_000,
            warmup_steps=4000,
            schedule="noam",
            label_smoothing=0.1,
            weight_decay=0.0,
            clip_norm=None,
            log_every=100,
            eval_every=1000,
        )
        return dataclasses.replace(base, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict (what checkpoints store)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from ``to_dict``'s output."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
        return cls(**values)


def _positive_or_none(value: object) -> bool:
    return value is None or (is_int(value) and value >= 1)


@dataclass
class History:
    """What ``fit`` measured: one entry per optimizer step, one per validation."""

    step: list[int] = field(default_factory=list)  # global step number, from 1
    loss: list[float] = field(default_factory=list)  # training loss (label-smoothed)
    lr: list[float] = field(default_factory=list)  # learning rate used by that step
    grad_norm: list[float] = field(default_factory=list)  # global gradient norm before clipping
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)  # cross-entropy per token, no smoothing
    val_metrics: dict[str, list[float]] = field(default_factory=dict)  # on_validate's, per val_step
    diverged_at: int | None = None  # step whose loss was not finite (the run stopped there)
    train_seconds: float = 0.0  # wall time spent in training steps, over all resumed calls
    train_tokens: int = 0  # target tokens (not padding) trained on, over all resumed calls

    def __repr__(self) -> str:
        last = f", loss={self.loss[-1]:.4f}" if self.loss else ""
        val = f", val_loss={self.val_loss[-1]:.4f}" if self.val_loss else ""
        bad = f", diverged_at={self.diverged_at}" if self.diverged_at is not None else ""
        return f"History(steps={len(self.step)}{last}{val}{bad})"

    def record(self, step: int, loss: float, lr: float, grad_norm: float) -> None:
        """Append one training step."""
        self.step.append(step)
        self.loss.append(loss)
        self.lr.append(lr)
        self.grad_norm.append(grad_norm)

    def record_validation(self, step: int, loss: float, **metrics: float) -> None:
        """Append one validation result, with any extra metrics (e.g. ``bleu=31.2``)."""
        self.val_step.append(step)
        self.val_loss.append(loss)
        for name, value in metrics.items():
            self.val_metrics.setdefault(name, []).append(value)

    @property
    def tokens_per_second(self) -> float:
        """Average training speed: target tokens per second of training steps."""
        return self.train_tokens / self.train_seconds if self.train_seconds > 0 else 0.0

    def summary(self) -> str:
        """Return the progress bar's text: last loss and lr, rounded, so it prints the same each run."""
        if not self.loss:
            return ""
        text = f"loss={self.loss[-1]:.3f}, lr={self.lr[-1]:.2e}"
        text += f", val_loss={self.val_loss[-1]:.3f}" if self.val_loss else ""
        return text + "".join(f", val_{k}={v[-1]:.2f}" for k, v in self.val_metrics.items() if v)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> History:
        values = {k: (list(v) if isinstance(v, list | tuple) else v) for k, v in values.items()}
        values["val_metrics"] = {k: list(v) for k, v in values.get("val_metrics", {}).items()}
        return cls(**values)


def label_smoothed_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    smoothing: float = 0.0,
    pad_id: int = 0,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy against (1 - smoothing) * one-hot + smoothing / V, ignoring padding.

    Equals ``F.cross_entropy(logits, targets, label_smoothing=smoothing, ignore_index=pad_id)``.
    ``reduction="sum"`` returns the sum over real tokens (to average over several batches).
    An all-padding batch gives 0, not NaN.

    Shapes:
        logits: (B, T, V) or (N, V); targets: (B, T) or (N,) -> a scalar.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be targets {tuple(targets.shape)} plus a vocabulary axis"
        )
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing={smoothing} must lie in [0, 1)")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r} must be 'mean' or 'sum'")
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (B, T, V), float32 even under bf16
    keep = targets != pad_id  # (B, T)
    nll = -log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    uniform = -log_probs.mean(dim=-1)  # (B, T): cross-entropy against the uniform distribution
    loss = ((1.0 - smoothing) * nll + smoothing * uniform).masked_fill(~keep, 0.0).sum()
    return loss if reduction == "sum" else loss / keep.sum().clamp(min=1)


def noam_peak_lr(d_model: int, warmup_steps: int) -> float:
    """Return the peak of the paper's rate d_model^-0.5 * min(s^-0.5, s * warmup^-1.5)."""
    return (d_model * warmup_steps) ** -0.5


@dataclass(frozen=True)
class WarmupSchedule:
    """Learning-rate multiplier per step: linear warmup to 1, then decay (LambdaLR-compatible).

    ``schedule(k)`` is the multiplier for optimizer step ``k`` (0-based, as LambdaLR counts);
    it reaches 1.0 at ``k = warmup_steps - 1``. Plain fields only, so it is saved in the
    scheduler's state_dict and survives a checkpoint.
    """

    kind: str
    warmup_steps: int
    max_steps: int
    min_ratio: float = 0.0

    def __call__(self, k: int) -> float:
        s = k + 1  # the step being taken, from 1
        if s <= self.warmup_steps:
            return s / self.warmup_steps
        if self.kind == "noam":
            return math.sqrt(max(self.warmup_steps, 1) / s)
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (s - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        shape = (
            0.5 * (1.0 + math.cos(math.pi * progress)) if self.kind == "cosine" else 1.0 - progress
        )
        return self.min_ratio + (1.0 - self.min_ratio) * shape


def warmup_schedule(
    kind: str, warmup_steps: int, max_steps: int, min_ratio: float = 0.0
) -> WarmupSchedule:
    """Return the multiplier function of ``kind`` ("noam", "cosine", "linear" or "constant")."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule {kind!r} is not one of {SCHEDULES}")
    if warmup_steps < 0 or max_steps < 1:
        raise ValueError(
            f"need warmup_steps >= 0 and max_steps >= 1, got {warmup_steps} and {max_steps}"
        )
    return WarmupSchedule(kind, warmup_steps, max_steps, min_ratio)


def make_optimizer(
    model: nn.Module, config: TrainConfig, fused: bool | None = None
) -> torch.optim.AdamW:
    """Return AdamW with weight decay on weight matrices and none on biases, norms and scales.

    A parameter with two or more dimensions (linear weights, embeddings) decays; vectors
    (biases, LayerNorm weights) do not, since pulling them to 0 fights their purpose.
    ``fused=True`` updates all parameters in one kernel (on a GPU); None is PyTorch's choice.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Return the LambdaLR that applies ``config.schedule`` to the optimizer's learning rate."""
    schedule = warmup_schedule(
        config.schedule, config.warmup_steps, config.max_steps, config.min_lr_ratio
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


class TrainableModel(Protocol):
    """What ``fit``, ``train_step`` and ``evaluate`` need of a model; the course's ``Transformer`` is one.

    ``config.pad_id`` is the default padding id and ``device`` is where batches are moved. Under
    DistributedDataParallel the wrapper is passed; its ``module`` is the model described here.
    """

    @property
    def config(self) -> _PadConfig: ...

    @property
    def device(self) -> torch.device: ...

    def __call__(self, src: Tensor, tgt_in: Tensor) -> Tensor: ...


class _PadConfig(Protocol):
    @property
    def pad_id(self) -> int: ...


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    enabled = precision == "bf16" and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_step(
    model: nn.Module,
    batch: Seq2SeqBatch,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    pad_id: int,
) -> tuple[float, float, float]:
    """Run one optimizer step on ``batch``; return (loss, grad norm before clipping, lr used).

    Under DistributedDataParallel ``batch`` is this process's shard of a global batch: the loss
    is divided by the global number of target tokens, so the averaged gradients and the
    returned loss equal one process's on the whole batch.
    """
    _, processes = world()
    lr = optimizer.param_groups[0]["lr"]
    with _autocast(batch.src.device, config.precision):
        logits = model(batch.src, batch.tgt_in)  # (B, T, V)
    summed = label_smoothed_cross_entropy(
        logits, batch.tgt_out, config.label_smoothing, pad_id, reduction="sum"
    )
    tokens = (batch.tgt_out != pad_id).sum()  # this shard's target tokens, a tensor: no sync
    if processes > 1:  # global loss sum and token count
        reported, tokens = all_reduce_sum(torch.stack([summed.detach(), tokens.to(summed.dtype)]))
    loss = summed * processes / tokens.clamp(min=1)  # DDP averages over ranks: x world undoes that
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = config.clip_norm if config.clip_norm is not None else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    scheduler.step()
    if processes > 1:
        loss = reported / tokens.clamp(min=1)
    return loss.item(), grad_norm.item(), lr


def _batch_stream(
    batches: Sequence[Seq2SeqBatch], start: int, end: int, config: TrainConfig
) -> Iterator[Seq2SeqBatch]:
    """Yield the batches of steps ``start + 1 .. end``, in a new seeded order every epoch.

    The order depends only on (seed, epoch), so a resumed run visits the same batches.
    """
    n = len(batches)
    for step in range(start, end):
        if step == start or step % n == 0:
            order = list(range(n))
            if config.shuffle:  # its own generator: the global random state is left alone
                random.Random(f"{config.seed}:{step // n}").shuffle(order)
        yield batches[order[step % n]]


def _pad_id_and_device(model: nn.Module, pad_id: int | None) -> tuple[int, torch.device]:
    """Return ``pad_id`` (default: the model's ``config.pad_id``) and the model's device."""
    inner = unwrap_model(model)
    try:
        return (inner.config.pad_id if pad_id is None else pad_id), inner.device
    except AttributeError as err:
        raise TypeError(
            f"training needs a TrainableModel, with config.pad_id and device, like the course's "
            f"Transformer ({err})"
        ) from None


def _check_batches(batches: Sequence[Seq2SeqBatch]) -> None:
    if not isinstance(batches, Sequence) or len(batches) == 0:
        raise ValueError(
            "train_batches must be a non-empty list of Seq2SeqBatch (see make_batches)"
        )


class _Run:
    """The state one call of ``fit`` carries from step to step: optimizer, schedule, history."""

    def __init__(self, model: nn.Module, config: TrainConfig, pad_id: int | None) -> None:
        self.model, self.config = model, config
        self.pad_id, self.device = _pad_id_and_device(model, pad_id)
        self.rank, self.processes = world()
        self.lead = self.rank == 0
        self.optimizer = make_optimizer(model, config)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.history, self.step, self.saved_at = History(), 0, -1

    def start(self, checkpoint_path: str | os.PathLike | None, resume: bool) -> None:
        """Continue from ``checkpoint_path`` when resuming and it exists, else seed a new run."""
        if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
            args = (self.model, self.optimizer, self.scheduler, self.config)
            self.step, self.history = _resume(checkpoint_path, *args)
        else:
            seed_everything(self.config.seed)

    def train_on(self, batch: Seq2SeqBatch) -> float:
        """Take one optimizer step on ``batch`` (this process's rows of it); return the loss."""
        tokens = batch.num_tokens(self.pad_id)  # of the global batch, counted on the CPU
        started = time.perf_counter()
        if self.processes > 1:
            batch = shard_batch(batch, self.rank, self.processes)
        args = (self.optimizer, self.scheduler, self.config, self.pad_id)
        loss, grad_norm, lr = train_step(self.model, batch.to(self.device), *args)
        self.step += 1
        self.history.train_seconds += time.perf_counter() - started
        self.history.train_tokens += tokens
        self.history.record(self.step, loss, lr, grad_norm)
        return loss

    def step_on(self, batch: Seq2SeqBatch, bar: tqdm) -> bool:
        """Train on ``batch`` and advance ``bar``; return False (and say so) if the loss diverged."""
        loss = self.train_on(batch)
        bar.update(1)
        if math.isfinite(loss):
            return True
        self.history.diverged_at = self.step
        if not bar.disable:
            bar.write(
                f"stopped at step {self.step}: the loss is {loss} (lower lr or longer warmup?)"
            )
        return False

    def validation_due(self) -> bool:
        """Validate every ``eval_every`` steps and at the end of the schedule."""
        every = self.config.eval_every
        return (every is not None and self.step % every == 0) or self.step == self.config.max_steps

    def summary(self, show_speed: bool) -> str:
        """Return the progress bar's text: loss, lr, validation results and perhaps the speed."""
        speed = f", tok/s={self.history.tokens_per_second:.0f}" if show_speed else ""
        return self.history.summary() + speed

    def validate(self, batches: Sequence[Seq2SeqBatch], on_validate: _OnValidate | None) -> None:
        """Record the validation loss and ``on_validate``'s metrics (rank 0 alone: no collectives)."""
        inner = unwrap_model(self.model)
        loss = evaluate(inner, batches, pad_id=self.pad_id)["loss"]
        metrics = {}
        if on_validate is not None:
            with eval_mode(inner):
                metrics = on_validate(inner, self.step)
        self.history.record_validation(self.step, loss, **metrics)

    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None) -> None:
        """Write a checkpoint of this step (rank 0 writes; every process notes the step)."""
        if self.lead:
            args = (self.model, self.optimizer, self.scheduler, self.step)
            save_checkpoint(path, *args, train_config=self.config, history=self.history, extra=extra)  # fmt: skip
        self.saved_at = self.step


_OnValidate = Callable[[nn.Module, int], dict[str, float]]


def fit(
    model: nn.Module,
    train_batches: Sequence[Seq2SeqBatch],
    config: TrainConfig,
    val_batches: Sequence[Seq2SeqBatch] | None = None,
    *,
    progress: bool = True,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    pad_id: int | None = None,
    max_seconds: float | None = None,
    on_validate: _OnValidate | None = None,
    show_speed: bool = False,
    extra: dict[str, Any] | None = None,
) -> History:
    """Train ``model`` for ``config.max_steps`` steps, cycling through ``train_batches``.

    Seeds with ``config.seed``, builds AdamW and the warmup schedule, and shows a progress bar
    (loss, lr) unless ``progress=False``. Validation loss on ``val_batches`` every
    ``config.eval_every`` steps and at the end. With ``checkpoint_path`` it saves every
    ``config.checkpoint_every`` steps and when it returns; ``resume=True`` first loads that
    file if it exists and continues from its step with the same optimizer, schedule, random
    state and history. ``stop_after`` ends this call at that step (the schedule still spans
    ``max_steps``). A non-finite loss stops the run and sets ``History.diverged_at``.

    ``max_seconds`` ends this call (with a checkpoint) once that much time has passed.
    ``on_validate(model, step)`` runs in eval mode after each validation loss and returns
    metrics (e.g. ``{"bleu": 31.2}``) stored in ``History.val_metrics``. ``show_speed`` adds
    target tokens per second to the bar. ``extra`` is stored in every checkpoint.

    Under DistributedDataParallel (``model`` wrapped, process group running) every process
    passes the same ``train_batches`` and trains on its rows of each (``shard_batch``);
    only rank 0 shows progress, validates and writes checkpoints.
    """
    _check_batches(train_batches)
    run = _Run(model, config, pad_id)
    run.start(checkpoint_path, resume)
    end = config.max_steps if stop_after is None else min(stop_after, config.max_steps)
    shown = progress and run.lead
    bar = tqdm(total=config.max_steps, initial=run.step, desc="train", disable=not shown)
    model.train()
    deadline = math.inf if max_seconds is None else time.perf_counter() + max_seconds
    for batch in _batch_stream(train_batches, run.step, end, config):
        if not run.step_on(batch, bar):  # the loss is not finite: the run stops
            break
        if run.lead and val_batches and run.validation_due():
            run.validate(val_batches, on_validate)
        if run.step % config.log_every == 0 or run.step == end:
            bar.set_postfix_str(run.summary(show_speed), refresh=False)
        if checkpoint_path is not None and run.step % (config.checkpoint_every or end + 1) == 0:
            run.save(checkpoint_path, extra)
        if any_process(time.perf_counter() > deadline, run.device):
            break
    bar.close()
    if checkpoint_path is not None and run.saved_at != run.step:
        run.save(checkpoint_path, extra)
    return run.history


def _resume(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
) -> tuple[int, History]:
    checkpoint = load_checkpoint(path, model, optimizer, scheduler)
    saved = checkpoint.train_config or {}
    ours = config.to_dict()
    changed = [k for k in ours if k not in _REPORTING_FIELDS and k in saved and saved[k] != ours[k]]
    if changed:
        diffs = ", ".join(f"{k}: saved {saved[k]!r}, now {ours[k]!r}" for k in changed)
        raise ValueError(
            f"{path} was trained with another TrainConfig ({diffs}); resume with the same one"
        )
    if checkpoint.rng is not None:
        torch.set_rng_state(checkpoint.rng["torch"])
        if torch.cuda.is_available() and checkpoint.rng.get("cuda"):
            torch.cuda.set_rng_state_all(checkpoint.rng["cuda"])
    history = History.from_dict(checkpoint.history) if checkpoint.history else History()
    return checkpoint.step, history


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Sequence[Seq2SeqBatch], pad_id: int | None = None
) -> dict[str, float]:
    """Return the loss (cross-entropy per real token, no smoothing), perplexity and token accuracy.

    Runs in eval mode (no dropout) and puts the model back in the mode it was in.
    """
    pad_id, device = _pad_id_and_device(model, pad_id)
    total, correct, tokens = 0.0, 0, 0
    with eval_mode(model):
        for batch in batches:
            batch = batch.to(device)
            logits = model(batch.src, batch.tgt_in)  # (B, T, V)
            keep = batch.tgt_out != pad_id  # (B, T)
            summed = label_smoothed_cross_entropy(
                logits, batch.tgt_out, 0.0, pad_id, reduction="sum"
            )
            total += summed.item()
            correct += int(((logits.argmax(-1) == batch.tgt_out) & keep).sum())
            tokens += int(keep.sum())
    if tokens == 0:
        raise ValueError("evaluate got no target tokens (empty batches or only padding)")
    loss = total / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "token_accuracy": correct / tokens,
        "tokens": tokens,
    }


def grad_norms_by_layer(model: nn.Module) -> dict[str, float]:
    """Return the gradient norm of each layer's parameters, in the model's order.

    A layer is the name up to the first numeric index ("encoder.layers.0"), or the owning
    module for parameters outside numbered stacks ("lm_head"). Call after ``backward()``.
    """
    squares: dict[str, float] = {}
    for name, p in unwrap_model(model).named_parameters():
        if p.grad is None:
            continue
        parts = name.split(".")
        digits = [i for i, part in enumerate(parts) if part.isdigit()]
        key = ".".join(parts[: digits[0] + 1] if digits else parts[:-1]) or name
        squares[key] = squares.get(key, 0.0) + float(p.grad.detach().float().pow(2).sum())
    return {k: math.sqrt(v) for k, v in squares.items()}
