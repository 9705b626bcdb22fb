"""Sweep the knobs of lesson 14 on a small budget and record every run: a grid and Optuna.

    PYTHONPATH=. python tools/tuning_sweeps.py    # 53 min on 2 shared, heavily loaded CPU cores
    PYTHONPATH=. python tools/tuning_sweeps.py --quick --out s.json   # seconds: a smoke test

The task: Multi30k German to English, the first 4,000 training pairs, one shared BPE vocabulary
of 1,000 ids, the first 500 validation pairs; a small model (d_model 64, 2 + 2 layers, 4 heads,
d_ff 256, dropout 0.1, tied embeddings) trained for 120 steps of at most 1,024 tokens. Each run
reports its final validation loss (plain cross-entropy per token, so label smoothing does not
change its scale). Three sweeps share that budget:

1. a plain grid: peak learning rate x warmup steps;
2. one knob at a time around the base recipe: label smoothing, dropout, width, depth;
3. Optuna (TPE sampler, seeded) over learning rate, warmup, label smoothing and dropout.

Writes ``results/tuning_sweeps.json``: the set-up, the machine, its load and the wall time, and
for every run its settings, final validation loss and curves (training loss per step,
validation loss).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import optuna
import torch

from tfx_course.data import load_multi30k
from tfx_course.files import write_json
from tfx_course.lowresource import prepare_pairs
from tfx_course.model import ModelConfig
from tfx_course.training import TrainConfig
from tfx_course.tuning import Trial, grid, run_trial, suggest

ROOT = Path(__file__).resolve().parents[1]
BASE_TRAIN = TrainConfig(lr=3e-3, max_steps=120, warmup_steps=30, schedule="cosine",
                         label_smoothing=0.1, log_every=10)  # fmt: skip
GRID = {"lr": [3e-4, 1e-3, 3e-3, 1e-2], "warmup_steps": [0, 30]}
ONE_AT_A_TIME = {"label_smoothing": [0.0, 0.2], "dropout": [0.0, 0.3], "d_model": [32, 128],
                 "n_layers": [1, 3]}  # fmt: skip
SPACE = {"lr": ("log", 1e-4, 3e-2), "warmup_steps": ("int", 0, 60),
         "label_smoothing": ("float", 0.0, 0.2), "dropout": ("float", 0.0, 0.3)}  # fmt: skip


def base_model(vocab_size: int) -> ModelConfig:
    """The sweeps' model: d_model 64, 2 + 2 layers, 4 heads, d_ff 256, dropout 0.1, tied."""
    return ModelConfig(vocab_size, vocab_size, d_model=64, n_heads=4, n_encoder_layers=2,
                       n_decoder_layers=2, d_ff=256, dropout=0.1, max_len=128,
                       tie_embeddings=True, fused_attention=True)  # fmt: skip


def record(trial: Trial, sweep: str) -> dict:
    h = trial.history
    return {"sweep": sweep, "params": trial.params, "val_loss": trial.val_loss,
            "loss": h.loss, "val_step": h.val_step, "val_loss_curve": h.val_loss,
            "diverged_at": h.diverged_at}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "tuning_sweeps.json")
    p.add_argument("--quick", action="store_true", help="tiny data and 6 steps: a smoke test")
    p.add_argument("--trials", type=int, default=12, help="Optuna trials (default 12)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start, load = time.perf_counter(), os.getloadavg()[0]
    n_train, n_val, steps = (200, 50, 6) if args.quick else (4000, 500, BASE_TRAIN.max_steps)
    data = prepare_pairs(load_multi30k("train")[:n_train], load_multi30k("val")[:n_val],
                         vocab_size=1000, max_tokens=1024)  # fmt: skip
    model = base_model(data.src_tokenizer.vocab_size)
    train = dataclasses.replace(BASE_TRAIN, max_steps=steps, warmup_steps=min(30, steps // 2))
    batches = (data.train_batches, data.val_batches)
    runs = []

    def run(params: dict, sweep: str) -> float:
        trial = run_trial(params, model, train, *batches)
        runs.append(record(trial, sweep))
        print(f"{sweep:<13} {params} -> val loss {trial.val_loss:.4f}", flush=True)
        return trial.val_loss

    for params in grid(**GRID):
        run(params, "grid")
    for knob, values in ONE_AT_A_TIME.items():
        for value in values:
            run({knob: value}, "one-at-a-time")
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=6)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(lambda t: run(suggest(t, SPACE), "optuna"), n_trials=3 if args.quick else args.trials)  # fmt: skip
    write_json(args.out, {
        "task": "Multi30k de-en, first 4,000 training pairs, shared BPE 1,000, first 500 val pairs",
        "model": dataclasses.asdict(model), "train": train.to_dict(),
        "grid": GRID, "one_at_a_time": ONE_AT_A_TIME, "optuna_space": {k: list(v) for k, v in SPACE.items()},
        "optuna": {"sampler": "TPESampler(seed=0, n_startup_trials=6)", "version": optuna.__version__,
                   "best_params": study.best_params, "best_val_loss": study.best_value},
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, "
                   f"shared (load average {load:.1f} at the start)",
        "torch": torch.__version__, "wall_minutes": round((time.perf_counter() - start) / 60, 1),
        "runs": runs,
    })  # fmt: skip
    print(f"wrote {args.out} in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
