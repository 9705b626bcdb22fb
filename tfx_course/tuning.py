"""Hyperparameter sweeps on a small budget: a plain grid, a tuning library's trials, a range test.

A *trial* trains one seeded model with some settings changed and reports the validation loss
at the end (plain cross-entropy, comparable across label smoothing). ``grid`` lists every
combination of a few values per knob; ``suggest`` asks an Optuna trial for values from a search
space, so the same ``run_trial`` serves both. The knobs are the names of ``TrainConfig`` and
``ModelConfig`` fields (``lr``, ``warmup_steps``, ``label_smoothing``, ``dropout``, ``d_model``
...), plus ``n_layers`` (encoder and decoder alike); ``d_model`` keeps ``d_ff = 4 * d_model``.

``lr_range_test`` is Smith's learning-rate range test (2017): train for a few steps while the
rate grows exponentially, record the smoothed loss, and read a good peak rate off it
(``range_test_step`` makes the one-step trainer it calls from a model and its batches).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tfx_course.data.batching import Seq2SeqBatch
from tfx_course.model import ModelConfig, Transformer
from tfx_course.repro import seed_everything
from tfx_course.training import History, TrainConfig, evaluate, fit, train_step

__all__ = [
    "Trial",
    "grid",
    "configs_for",
    "run_trial",
    "suggest",
    "range_test_step",
    "lr_range_test",
]

_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


@dataclass
class Trial:
    """One training run of a sweep: the settings it changed, its final validation loss, its curves."""

    params: dict[str, Any]
    val_loss: float  # at the end of the run; inf if the run diverged
    history: History

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "val_loss": self.val_loss, "history": self.history.to_dict()}


def grid(**values: Sequence[Any]) -> list[dict[str, Any]]:
    """Return every combination of the given values, the last knob varying fastest.

    ``grid(lr=[1e-3, 3e-3], warmup_steps=[0, 50])`` gives four settings.
    """
    empty = [name for name, options in values.items() if len(options) == 0]
    if empty:
        raise ValueError(f"give at least one value for {empty[0]}")
    names = list(values)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values.values())]


def configs_for(
    params: Mapping[str, Any], model: ModelConfig, train: TrainConfig
) -> tuple[ModelConfig, TrainConfig]:
    """Return ``model`` and ``train`` with ``params`` applied, each name to the config that has it."""
    model_changes, train_changes = {}, {}
    for name, value in params.items():
        if name == "n_layers":
            model_changes |= {"n_encoder_layers": value, "n_decoder_layers": value}
        elif name == "d_model":
            model_changes |= {"d_model": value, "d_ff": 4 * value}
        elif name in _TRAIN_FIELDS:
            train_changes[name] = value
        elif name in _MODEL_FIELDS:
            model_changes[name] = value
        else:
            raise ValueError(
                f"unknown knob {name!r}: use a field of TrainConfig or ModelConfig, or n_layers"
            )
    return dataclasses.replace(model, **model_changes), dataclasses.replace(train, **train_changes)


def run_trial(
    params: Mapping[str, Any],
    model: ModelConfig,
    train: TrainConfig,
    train_batches: Sequence[Seq2SeqBatch],
    val_batches: Sequence[Seq2SeqBatch],
) -> Trial:
    """Train a seeded model with ``params`` applied; return its final validation loss and history."""
    model_config, train_config = configs_for(params, model, train)
    seed_everything(train_config.seed)
    net = Transformer(model_config)
    history = fit(net, train_batches, train_config, val_batches, progress=False)
    if history.diverged_at is not None:
        return Trial(dict(params), math.inf, history)
    val_loss = history.val_loss[-1] if history.val_loss else evaluate(net, val_batches)["loss"]
    return Trial(dict(params), val_loss, history)


def suggest(trial: Any, space: Mapping[str, tuple]) -> dict[str, Any]:
    """Ask an Optuna ``trial`` for one value per knob of ``space``.

    ``space`` maps a knob to ``("log", low, high)`` (a float on a log scale), ``("float", low,
    high)``, ``("int", low, high)`` or ``("choice", [values])``.
    """
    params = {}
    for name, (kind, *bounds) in space.items():
        if kind == "log":
            params[name] = trial.suggest_float(name, *bounds, log=True)
        elif kind == "float":
            params[name] = trial.suggest_float(name, *bounds)
        elif kind == "int":
            params[name] = trial.suggest_int(name, *bounds)
        elif kind == "choice":
            params[name] = trial.suggest_categorical(name, bounds[0])
        else:
            raise ValueError(f"{name}: kind {kind!r} is not log, float, int or choice")
    return params


def range_test_step(
    model: nn.Module, batches: Sequence[Seq2SeqBatch], config: TrainConfig | None = None
) -> Callable[[float], float]:
    """Return ``train_step(lr) -> loss`` for a range test: one AdamW step of a copy of ``model``.

    Each call trains on the next batch of ``batches``; ``model`` itself is left untouched.
    """
    config = config or TrainConfig(lr=1.0, warmup_steps=0, schedule="constant", clip_norm=None)
    net = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, betas=config.betas, eps=config.eps)  # fmt: skip
    keep = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # the rate is set by hand
    calls = itertools.count()

    def step(lr: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = batches[next(calls) % len(batches)].to(net.device)
        return train_step(net, batch, optimizer, keep, config, net.config.pad_id)[0]

    return step


def lr_range_test(
    train_step: Callable[[float], float],
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    num_steps: int = 100,
    beta: float = 0.9,
) -> tuple[list[float], list[float], float]:
    """Smith's range test: return the rates tried, the smoothed losses and a suggested peak rate.

    Step i (from 0) trains at ``start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))``. The
    loss is smoothed with an exponential moving average, bias-corrected:
    ``avg = beta * avg + (1 - beta) * loss`` and ``smoothed = avg / (1 - beta ** (i + 1))``. The
    test stops after the first step whose smoothed loss is not finite or exceeds 4 times the
    lowest so far (the run has diverged). The suggestion is a tenth of the rate at the lowest
    smoothed loss: safely below where the loss turns up.
    """
    if not 0 < start_lr < end_lr or num_steps < 2:
        raise ValueError("need 0 < start_lr < end_lr and num_steps >= 2")
    lrs, smoothed, avg, best, best_lr = [], [], 0.0, math.inf, start_lr
    for i in range(num_steps):
        lr = start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))
        avg = beta * avg + (1 - beta) * train_step(lr)
        value = avg / (1 - beta ** (i + 1))
        lrs.append(lr)
        smoothed.append(value)
        if not math.isfinite(value) or value > 4 * best:
            break
        if value < best:
            best, best_lr = value, lr
    return lrs, smoothed, best_lr / 10
