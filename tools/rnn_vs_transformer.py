"""Train the Transformer, the LSTM and the convolutional encoder on Multi30k at equal steps.

    TFX_COURSE_DATA=<folder holding multi30k/> PYTHONPATH=. nice -n 5 \\
        python tools/rnn_vs_transformer.py --threads 2          # the committed run
    PYTHONPATH=. python tools/rnn_vs_transformer.py --steps 4 --eval-every 2 --out try.json

Writes ``results/rnn_vs_transformer.json``, one entry per model as it finishes (a run that is
stopped keeps the models it finished; running again trains only the missing ones, ``--force``
all). Every model gets the course checkpoint's recipe (``cpu-course``: the shipped 6,000-subword
tokenizer, AdamW, warmup then cosine, label smoothing 0.1) with 1,000-token batches (the
checkpoint's are 2,000: half the time per step on a shared 2-core machine), the same
batches in the same order and the same number of steps: equal steps, so equal data, whatever the
machine's load. Each model is ``baselines.comparison_model(kind, 6000, "course")``, all about
2.5 million parameters. Every ``--eval-every`` steps: the validation loss and greedy sacreBLEU on
the first 200 validation sentences, with the training seconds so far (so the curves can also be
read at equal seconds); at the end, greedy sacreBLEU on all of test2016. The file records the
machine, its load, the torch version, the commit and the wall times. The first ``--slice``
training losses are stored for the lesson, which re-runs those steps and compares.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tfx_course.baselines import MODEL_KINDS, comparison_model
from tfx_course.data.multi30k import load_multi30k
from tfx_course.data.subword import SubwordTokenizer
from tfx_course.evaluation import evaluate_translation
from tfx_course.files import write_json
from tfx_course.pretrained import course_checkpoint_dir
from tfx_course.training import evaluate, fit, make_optimizer, make_scheduler, train_step
from tfx_course.translation import PRESETS, Preset, TranslationData, prepare_data

ROOT = Path(__file__).resolve().parents[1]
BLEU_SENTENCES = 200  # validation sentences decoded at every evaluation
DECODE_MAX_LEN = 80  # as the course checkpoint's results


def recipe(steps: int, eval_every: int, max_tokens: int) -> Preset:
    """Return the cpu-course preset with ``steps`` steps (the cosine spans them) of
    ``max_tokens``-token batches, validating every ``eval_every`` steps."""
    preset = PRESETS["cpu-course"]
    train = dataclasses.replace(
        preset.train, max_steps=steps, eval_every=eval_every, checkpoint_every=None
    )
    return dataclasses.replace(
        preset, train=train, bleu_sentences=BLEU_SENTENCES, max_tokens=max_tokens
    )


def machine() -> dict[str, Any]:
    """Return what the run ran on: processor, threads, load, versions and the commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "commit": commit or None,
        "date": time.strftime("%Y-%m-%d"),
    }


class _Validations:
    """``fit``'s ``on_validate``: validation loss, greedy BLEU and the training seconds so far.

    ``fit`` is given one validation batch only (its own loss on it is ignored), and the full
    validation loss is computed here, so the time of every validation can be left out of the
    training seconds.
    """

    def __init__(self, data: TranslationData) -> None:
        self.data, self.started, self.spent = data, time.perf_counter(), 0.0
        self.train_seconds: list[float] = []
        self.loss: list[float] = []

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        begun = time.perf_counter()
        self.train_seconds.append(round(begun - self.started - self.spent, 1))
        self.loss.append(evaluate(model, self.data.val_batches)["loss"])
        result = evaluate_translation(
            model, self.data.tokenizer, self.data.val_pairs, max_len=DECODE_MAX_LEN, batch_size=100
        )
        self.spent += time.perf_counter() - begun
        return {"bleu": result.bleu.score}


def train_one(kind: str, preset: Preset, data: TranslationData, n_slice: int) -> dict[str, Any]:
    """Train one model of the comparison with ``preset``; return what the results file keeps."""
    model = comparison_model(kind, data.tokenizer.vocab_size, "course", seed=preset.train.seed)
    validations = _Validations(data)
    started = time.perf_counter()
    history = fit(model, data.train_batches, preset.train, data.val_batches[:1],
                  on_validate=validations, show_speed=True)  # fmt: skip
    wall = time.perf_counter() - started
    test = load_multi30k("test2016")
    scored = evaluate_translation(model, data.tokenizer, test, max_len=DECODE_MAX_LEN, batch_size=100)  # fmt: skip
    print(f"{kind}: test2016 greedy BLEU {scored.bleu.score:.2f}", flush=True)
    return {
        "parameters": model.num_parameters(),
        "steps": history.step[-1],
        "train_seconds": round(history.train_seconds, 1),
        "wall_seconds_with_validation": round(wall, 1),
        "tokens_per_second": round(history.tokens_per_second, 1),
        "first_losses": history.loss[:n_slice],
        "final_loss": sum(history.loss[-20:]) / len(history.loss[-20:]),
        "val_step": history.val_step,
        "val_loss": validations.loss,
        "val_bleu": history.val_metrics.get("bleu", []),
        "val_train_seconds": validations.train_seconds,
        "test2016_greedy": {**scored.bleu.to_dict(), "sentences": len(test)},
        "load_average_at_end": list(os.getloadavg()),
    }


def measure_speed(data: TranslationData, preset: Preset, rounds: int, steps: int) -> dict[str, Any]:
    """Time training steps of every model back to back, in turns, on the same batches.

    The training seconds of the run above depend on what else the machine ran meanwhile; here
    every model gets ``rounds`` turns of ``steps`` steps, one model after the other, and keeps
    its fastest turn, so all three are timed under the same conditions.
    """
    batches = data.train_batches[:steps]
    tokens = sum(b.num_tokens(data.tokenizer.pad_id) for b in batches)
    runs = {}
    for kind in MODEL_KINDS:
        model = comparison_model(kind, data.tokenizer.vocab_size, "course").train()
        optimizer = make_optimizer(model, preset.train)
        runs[kind] = (model, optimizer, make_scheduler(optimizer, preset.train))
    best = dict.fromkeys(MODEL_KINDS, float("inf"))
    for _ in range(rounds):
        for kind, (model, optimizer, scheduler) in runs.items():
            started = time.perf_counter()
            for batch in batches:
                train_step(model, batch, optimizer, scheduler, preset.train, data.tokenizer.pad_id)
            best[kind] = min(best[kind], time.perf_counter() - started)
    return {
        "method": f"the fastest of {rounds} turns of {steps} training steps on the same batches, "
        "the models taking turns",
        "seconds_per_step": {k: round(v / steps, 3) for k, v in best.items()},
        "tokens_per_second": {k: round(tokens / v, 1) for k, v in best.items()},
        "load_average": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="optimizer steps per model (400)")
    p.add_argument("--max-tokens", type=int, default=1000, help="tokens per batch (1000)")
    p.add_argument("--eval-every", type=int, default=100, help="validate every n steps (100)")
    p.add_argument("--slice", type=int, default=5, help="first losses kept for the lesson (5)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    p.add_argument("--models", nargs="+", default=list(MODEL_KINDS), choices=MODEL_KINDS)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "rnn_vs_transformer.json")
    p.add_argument("--force", action="store_true", help="retrain models already in --out")
    p.add_argument("--speed-rounds", type=int, default=3, help="turns of the speed test (3)")
    p.add_argument("--speed-steps", type=int, default=10, help="steps per turn (10; 0: skip it)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = recipe(args.steps, args.eval_every, args.max_tokens)
    tokenizer = SubwordTokenizer.load(course_checkpoint_dir() / "tokenizer.json")
    data = prepare_data(preset, tokenizer=tokenizer)
    old = json.loads(args.out.read_text()) if args.out.exists() and not args.force else {}
    if old and old["recipe"]["train"] != preset.train.to_dict() | {
        "betas": list(preset.train.betas)
    }:
        raise SystemExit(f"{args.out} holds another recipe: pass --force to start again")
    results = {
        "recipe": {**preset.to_dict(), "tokenizer": "the course checkpoint's (6,000 subwords)"},
        "comparison": "equal steps: the same batches in the same order for every model",
        "train_pairs": data.n_train_pairs,
        "steps_per_epoch": len(data.train_batches),
        "command": "TFX_COURSE_DATA=<folder holding multi30k/> PYTHONPATH=. nice -n 5 python "
        f"tools/rnn_vs_transformer.py --steps {args.steps} --max-tokens {args.max_tokens} "
        f"--threads {args.threads}",
        "machine": old.get("machine") or machine(),
        "models": old.get("models", {}),
    }
    for kind in args.models:
        if kind in results["models"]:
            print(f"{kind}: already in {args.out}, skipped (--force retrains)")
            continue
        results["models"][kind] = train_one(kind, preset, data, args.slice)
        write_json(args.out, results)  # after every model: a stopped run keeps what it finished
    if args.speed_steps and set(results["models"]) == set(MODEL_KINDS):
        results["speed"] = measure_speed(data, preset, args.speed_rounds, args.speed_steps)
        print("seconds per step:", results["speed"]["seconds_per_step"])
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
