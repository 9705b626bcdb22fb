"""Train the ``gpu-base`` preset on one GPU, score it on Multi30k test2016, record everything.

    PYTHONPATH=. python tools/gpu/gpu_run.py                 # one H100: 5 minutes in all
    PYTHONPATH=. python tools/gpu/gpu_run.py --smoke         # the same path on a CPU, seconds
    PYTHONPATH=. python tools/gpu/gpu_run.py --budget-minutes 6   # fit the schedule to 6 min
    PYTHONPATH=. python tools/gpu/gpu_run.py --replot results/gpu_base_history.json

Writes ``results/gpu_base.json`` (configuration, git commit, device, wall time, tokens/s, model
FLOPs utilisation, sacreBLEU cased and lower-cased, greedy and beam search) and the curves
``results/gpu_base_curves.png`` with the history ``results/gpu_base_history.json``. The
training folder (checkpoint, tokenizer) is ``runs/gpu_base``; ``--resume`` continues a run
that was stopped.

With ``--budget-minutes`` the script first times a few training steps and one validation on
the device, then shortens the schedule (``max_steps``, and the warmup in proportion) so that
training and its validations end inside the budget with the learning rate fully decayed. A run
cut off by a time limit mid-schedule would instead stop at a high learning rate. The preset's
``max_steps`` stays the upper bound. The plan is recorded in the results.

The script needs only torch, tokenizers and sacrebleu (a bare GPU machine). Without matplotlib
it writes the history and skips the plot; ``--replot`` draws it later from the history file.

Model FLOPs utilisation = 6 x parameters x target tokens per second / the device's peak dense
bf16 FLOP/s. Counting target tokens only is the usual approximation for an encoder-decoder:
the encoder's parameters see the source tokens, about as many as the target tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from tfx_course.cli import draw_curves
from tfx_course.data.subword import SubwordTokenizer
from tfx_course.device import pick_device
from tfx_course.evaluation import evaluate_translation
from tfx_course.files import write_json
from tfx_course.model import ModelConfig
from tfx_course.pretrained import model_from_training_checkpoint, score_test2016
from tfx_course.training import (
    TrainConfig,
    evaluate,
    make_optimizer,
    make_scheduler,
    train_step,
)
from tfx_course.translation import (
    Preset,
    TranslationData,
    build_model,
    get_preset,
    prepare_data,
    train_translation,
)

REPO = Path(__file__).resolve().parents[2]
# Peak dense bf16 tensor FLOP/s (no sparsity), from the vendors' data sheets.
PEAK_BF16_FLOPS = {
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H200 NVL": 835e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
}

SMOKE = Preset(
    name="smoke",
    description="the GPU script's path on a CPU in seconds (the BLEU means nothing)",
    model=ModelConfig(
        300, 300, d_model=32, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, d_ff=64,
        max_len=128, tie_embeddings=True, fused_attention=True,
    ),
    train=TrainConfig(lr=3e-3, max_steps=4, warmup_steps=2, schedule="cosine", log_every=1),
    max_tokens=600,
    max_train_pairs=200,
    max_val_pairs=20,
    bleu_sentences=5,
    decode_max_len=10,
)  # fmt: skip


def _gpu_small() -> Preset:
    base = get_preset("gpu-base")
    model = dataclasses.replace(
        base.model, d_model=256, n_heads=4, n_encoder_layers=4, n_decoder_layers=4, d_ff=1024
    )
    return dataclasses.replace(
        base,
        name="gpu-small",
        description="d_model 256, 4 + 4 layers, 8k shared BPE, bf16: a candidate beside gpu-base",
        model=model,
        train=dataclasses.replace(base.train, lr=1e-3),
    )


# Candidates measured beside gpu-base on the same machine, not (yet) course presets. Published
# text-only baselines on Multi30k use models far smaller than the base Transformer: with 29,000
# sentence pairs, a narrower model at the same dropout may translate as well or better.
CANDIDATES = {"gpu-small": _gpu_small()}


def preset_named(name: str) -> Preset:
    """Return a course preset, or one of this script's candidates."""
    return CANDIDATES[name] if name in CANDIDATES else get_preset(name)


def peak_flops(device_name: str) -> tuple[str | None, float | None]:
    """Return (table entry, peak bf16 FLOP/s) for a CUDA device name, or (None, None)."""
    name = device_name.upper()
    if "H100" in name and not any(k in name for k in ("PCIE", "NVL")):
        return "H100 SXM", PEAK_BF16_FLOPS["H100 SXM"]
    for key, flops in PEAK_BF16_FLOPS.items():
        if all(part in name for part in key.upper().split()):
            return key, flops
    return None, None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_within(
    budget: float, per_step: float, per_validation: float, eval_every: int, max_steps: int
) -> int:
    """Return the most steps (1 to ``max_steps``) whose training and validations fit ``budget``.

    Validation runs every ``eval_every`` steps and once at the end, so ``n`` steps cost
    ``n * per_step + (n / eval_every + 1) * per_validation`` seconds.
    """
    fit = (budget - per_validation) / (per_step + per_validation / eval_every)
    return max(1, min(max_steps, math.floor(fit)))


def _time_steps(
    model: torch.nn.Module,
    preset: Preset,
    data: TranslationData,
    device: torch.device,
    counts: tuple[int, ...],
) -> list[float]:
    """Time runs of ``counts`` training steps, each run starting again at the first batch."""
    optimizer = make_optimizer(model, preset.train)
    scheduler = make_scheduler(optimizer, preset.train)
    batches, seconds = data.train_batches, []
    for steps in counts:  # the warm-up, then batches it has already seen
        _sync(device)
        start = time.perf_counter()
        for i in range(steps):
            batch = batches[i % len(batches)].to(device)
            train_step(model, batch, optimizer, scheduler, preset.train, data.tokenizer.pad_id)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def plan_steps(
    preset: Preset,
    budget_seconds: float,
    device: torch.device,
    data: TranslationData,
    timing_steps: int = 20,
    max_warmup_steps: int = 100,
) -> dict:
    """Time training steps and one validation of ``preset`` on ``device``; fit the schedule.

    The first pass over the batches is slow on a GPU (in the reference run on an H100: 8 s for
    the first 20 steps, about 0.06 s a step from the second epoch on; timing only early steps
    planned 478 steps for a 3.5-minute budget that 4,000 fit). So the plan first runs up to one
    epoch (at most ``max_warmup_steps``) of distinct batches, then times ``timing_steps`` more
    steps on batches already seen. The warm-up's time beyond the steady rate is charged once
    against the budget.

    Returns the plan: seconds per step, the one-time extra, seconds per validation, the steps
    that fit in ``budget_seconds`` (at most the preset's ``max_steps``, at least 1) and the
    warmup scaled by the same factor. The timing model is a throwaway copy, freed before
    training starts.
    """
    model = build_model(preset, data.tokenizer.vocab_size, preset.train.seed).to(device)
    batches = data.train_batches
    warm = min(len(batches), max_warmup_steps)
    seconds = _time_steps(model, preset, data, device, (warm, timing_steps))
    per_step = seconds[1] / timing_steps
    one_time = max(0.0, seconds[0] - warm * per_step)
    start = time.perf_counter()
    evaluate(model, data.val_batches, data.tokenizer.pad_id)
    # An untrained model decodes to max_len: a validation later in training is shorter.
    evaluate_translation(
        model, data.tokenizer, data.val_pairs, max_len=preset.decode_max_len, batch_size=100
    )
    _sync(device)
    per_validation = time.perf_counter() - start
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    eval_every = len(batches) * preset.validate_every_epochs
    steps = steps_within(
        budget_seconds - one_time, per_step, per_validation, eval_every, preset.train.max_steps
    )
    scale = steps / preset.train.max_steps
    return {
        "budget_seconds": budget_seconds,
        "seconds_per_step": per_step,
        "seconds_first_pass_extra": one_time,
        "seconds_per_validation": per_validation,
        "steps_per_epoch": len(batches),
        "max_steps": steps,
        "warmup_steps": max(1, round(preset.train.warmup_steps * scale)),
        "preset_max_steps": preset.train.max_steps,
    }


def replot(history_path: str | Path) -> Path | None:
    """Draw ``<name>_curves.png`` next to a ``<name>_history.json`` (None without matplotlib)."""
    history_path = Path(history_path)
    name = history_path.name.removesuffix("_history.json")
    target = history_path.with_name(f"{name}_curves.png")
    return draw_curves(history_path, target, f"Multi30k de-en, {name.replace('_', '-')}")


def git_commit() -> str:
    """Return HEAD (``+uncommitted`` if the tree is dirty), or $TFX_COURSE_COMMIT without git."""
    if os.environ.get("TFX_COURSE_COMMIT"):  # a copied tree on a machine without .git
        return os.environ["TFX_COURSE_COMMIT"]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)  # fmt: skip
        return result.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, few steps, on the CPU")
    p.add_argument(
        "--preset",
        default="gpu-base",
        help=f"preset to train (default gpu-base; candidates: {', '.join(CANDIDATES)})",
    )
    p.add_argument("--out", default=str(REPO / "results"), help="folder for the results")
    p.add_argument("--run-dir", default=None, help="training folder (default runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--max-minutes", type=float, default=10.0, help="training time limit")
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="time a few steps first and shorten the schedule to end within this many minutes",
    )
    p.add_argument("--replot", metavar="HISTORY", help="only draw the curves of a history file")
    p.add_argument("--beam-size", type=int, default=5, help="beam width for the beam score")
    p.add_argument("--data-root", default=None, help="folder holding multi30k/")
    return p.parse_args(argv)


def plan_or_resume(args: argparse.Namespace, preset: Preset, device: torch.device, run_dir: Path):
    """Return (preset, plan, data): the schedule fitted to --budget-minutes, or the one a resumed
    run was planned with (``plan`` None without a budget), and the data prepared for planning."""
    plan, data = None, None
    plan_file = run_dir / "plan.json"  # a resumed run keeps the schedule it was planned with
    if args.resume and plan_file.exists():
        plan = json.loads(plan_file.read_text())
    elif args.budget_minutes is not None and not args.resume:
        data = prepare_data(preset, args.data_root)  # planned on, then trained on
        plan = plan_steps(preset, 60.0 * args.budget_minutes, device, data)
        write_json(plan_file, plan)
    if plan is not None:
        print(f"plan: {json.dumps(plan)}")
        planned = {"max_steps": plan["max_steps"], "warmup_steps": plan["warmup_steps"]}
        preset = dataclasses.replace(preset, train=dataclasses.replace(preset.train, **planned))
    return preset, plan, data


def training_results(
    preset: Preset, plan: dict | None, summary: dict, device: torch.device
) -> dict:
    """Return the results file's content after training (the test2016 scores still None)."""
    peak_name, peak = peak_flops(summary["device"]) if device.type == "cuda" else (None, None)
    flops_per_second = 6 * summary["parameters"] * summary["tokens_per_second"]
    return {
        "preset": preset.to_dict(),
        "git_commit": git_commit(),
        "device": summary["device"],
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "parameters": summary["parameters"],
        "steps": summary["steps"],
        "finished_schedule": summary["finished"],
        "plan": plan,
        "train_seconds": round(summary["train_seconds"], 1),
        "wall_seconds_to_trained_model": None,
        "wall_seconds_total": None,
        "target_tokens_per_second": round(summary["tokens_per_second"], 1),
        "model_flops_per_second": flops_per_second,
        "mfu": flops_per_second / peak if peak else None,
        "mfu_peak": {"device": peak_name, "bf16_dense_flops": peak},
        "mfu_formula": "6 * parameters * target tokens/s / peak dense bf16 FLOP/s",
        "val_loss": summary["val_loss"],
        "val_bleu_greedy_subset": summary["val_bleu_greedy"],
        "test2016_greedy": None,
        "test2016_beam": None,
    }


def score(
    args: argparse.Namespace,
    preset: Preset,
    run_dir: Path,
    device: torch.device,
    results: dict,
    save,
    started: float,
) -> None:
    """Score the trained model on test2016, greedy then beam search, saving after each."""
    model = model_from_training_checkpoint(run_dir / "checkpoint.pt").to(device)
    tokenizer = SubwordTokenizer.load(run_dir / "tokenizer.json")
    common = dict(
        limit=20 if args.smoke else None, root=args.data_root, max_len=preset.decode_max_len
    )
    for key, beam_size in (("test2016_greedy", None), ("test2016_beam", args.beam_size)):
        scored = time.perf_counter()
        result = score_test2016(model, tokenizer, beam_size=beam_size, **common)
        result["seconds"] = round(time.perf_counter() - scored, 1)
        results[key] = result
        results["wall_seconds_total"] = round(time.perf_counter() - started, 1)
        save()
        print(f"test2016 {key[9:]} BLEU {result['bleu']:.2f} ({result['signature']})")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.replot:
        print(f"wrote {replot(args.replot)}")
        return {}
    started = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    preset = SMOKE if args.smoke else preset_named(args.preset)
    device = torch.device("cpu") if args.smoke else pick_device()
    if not args.smoke and device.type != "cuda":
        print("warning: no CUDA device; this will be slow (use --smoke to test the path)")
    name = "gpu_base_smoke" if args.smoke else args.preset.replace("-", "_")
    run_dir, out = Path(args.run_dir or REPO / "runs" / name), Path(args.out)
    preset, plan, data = plan_or_resume(args, preset, device, run_dir)
    max_minutes = args.max_minutes
    if args.budget_minutes is not None:  # a safety net only: the plan should end sooner
        max_minutes = min(max_minutes, 1.25 * args.budget_minutes)
    summary = train_translation(
        preset, run_dir, resume=args.resume, max_minutes=max_minutes, device=device,
        data_root=args.data_root, progress=not args.smoke, data=data,
    )  # fmt: skip
    results = training_results(preset, plan, summary, device)
    results["wall_seconds_to_trained_model"] = round(time.perf_counter() - started, 1)

    def save() -> None:  # now and after each score: a run cut off while scoring keeps its training
        write_json(out / f"{name}.json", results)

    save()
    shutil.copyfile(run_dir / "history.json", out / f"{name}_history.json")
    replot(out / f"{name}_history.json")  # without matplotlib: later, with --replot
    print(json.dumps({k: results[k] for k in ("device", "steps", "train_seconds", "mfu")}))
    score(args, preset, run_dir, device, results, save, started)
    return results


if __name__ == "__main__":
    main()
