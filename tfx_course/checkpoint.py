"""Checkpoints: write a training run's full state atomically and read it back safely.

A checkpoint holds the model, optimizer and scheduler states, the step, the configs, the
history and the random state, so that ``fit(resume=True)`` continues a stopped run exactly.
Only tensors and plain Python values are stored: ``torch.load(weights_only=True)`` reads it,
so loading a checkpoint cannot run code.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from tfx_course.distributed import unwrap_model
from tfx_course.files import atomic_open

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_FORMAT = 1


class Storable(Protocol):
    """What a checkpoint stores of a config or a history (``TrainConfig``, ``History``)."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` read besides the states it loaded into your objects."""

    step: int
    model_config: dict[str, Any] | None  # dataclasses.asdict(model.config), e.g. ModelConfig(**...)
    train_config: dict[str, Any] | None  # TrainConfig.from_dict(...) rebuilds it
    history: dict[str, Any] | None
    extra: dict[str, Any]  # anything passed as extra= (tokenizer vocabulary, scores, ...)
    rng: dict[str, Any] | None  # torch (and CUDA) random state at the time of saving
    model_state: dict[str, Tensor]


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    step: int = 0,
    *,
    train_config: Storable | None = None,
    history: Storable | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write model, optimizer and scheduler states, step and configs to ``path`` atomically.

    The file is written next to ``path`` under a temporary name and renamed over it, so an
    interrupted save never leaves a half-written checkpoint. Only tensors and plain Python
    values are stored, so ``torch.load(weights_only=True)`` can read it.
    """
    path = Path(path)
    inner = unwrap_model(model)
    config = inner.config
    payload = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "model": inner.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "model_config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None,
        "train_config": train_config.to_dict() if train_config is not None else None,
        "history": history.to_dict() if history is not None else None,
        "extra": dict(extra or {}),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        },
    }
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint`` and load its states into what you pass.

    Uses ``torch.load(weights_only=True)``: a checkpoint cannot run code when loaded.
    The global random state is not touched (``fit(resume=True)`` restores it).
    """
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a tfx_course checkpoint (format {CHECKPOINT_FORMAT})")
    if model is not None:
        unwrap_model(model).load_state_dict(payload["model"])
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if target is not None:
            if payload[name] is None:
                raise ValueError(f"{path} holds no {name} state; it was saved without one")
            target.load_state_dict(payload[name])
    return Checkpoint(
        step=payload["step"],
        model_config=payload["model_config"],
        train_config=payload["train_config"],
        history=payload["history"],
        extra=payload["extra"],
        rng=payload["rng"],
        model_state=payload["model"],
    )
