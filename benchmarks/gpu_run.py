"""Train the ``gpu-base`` preset on one GPU, score it on Multi30k test2016, record everything.

    PYTHONPATH=. python benchmarks/gpu_run.py                 # one GPU, about ten minutes
    PYTHONPATH=. python benchmarks/gpu_run.py --smoke         # the same path on a CPU, seconds

Writes ``results/gpu_base.json`` (configuration, git commit, device, wall time, tokens/s, model
FLOPs utilisation, sacreBLEU cased and lower-cased, greedy and beam search) and the curves
``results/gpu_base_curves.png`` with the history ``results/gpu_base_history.json``. The
training folder (checkpoint, tokenizer) is ``runs/gpu_base``; ``--resume`` continues a run
that was stopped.

Model FLOPs utilisation = 6 x parameters x target tokens per second / the device's peak dense
bf16 FLOP/s. Counting target tokens only is the usual approximation for an encoder-decoder:
the encoder's parameters see the source tokens, about as many as the target tokens.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from tfx_course.device import pick_device
from tfx_course.pretrained import model_from_training_checkpoint, score_test2016
from tfx_course.training import TrainConfig
from tfx_course.translation import Preset, get_preset, train_translation, write_json

REPO = Path(__file__).resolve().parents[1]
# Peak dense bf16 tensor FLOP/s (no sparsity), from the vendors' data sheets.
PEAK_BF16_FLOPS = {
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
}

SMOKE = Preset(
    name="smoke",
    description="the GPU script's path on a CPU in seconds (the BLEU means nothing)",
    vocab_size=300,
    d_model=32,
    n_heads=4,
    n_encoder_layers=1,
    n_decoder_layers=1,
    d_ff=64,
    max_len=128,
    max_tokens=600,
    max_train_pairs=200,
    max_val_pairs=20,
    bleu_sentences=5,
    decode_max_len=10,
    train=TrainConfig(lr=3e-3, max_steps=4, warmup_steps=2, schedule="cosine", log_every=1),
)


def peak_flops(device_name: str) -> tuple[str | None, float | None]:
    """Return (table entry, peak bf16 FLOP/s) for a CUDA device name, or (None, None)."""
    name = device_name.upper()
    if "H100" in name and not any(k in name for k in ("PCIE", "NVL")):
        return "H100 SXM", PEAK_BF16_FLOPS["H100 SXM"]
    for key, flops in PEAK_BF16_FLOPS.items():
        if all(part in name for part in key.upper().split()):
            return key, flops
    return None, None


def git_commit() -> str:
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
    p.add_argument("--preset", default="gpu-base", help="preset to train (default gpu-base)")
    p.add_argument("--out", default=str(REPO / "results"), help="folder for the results")
    p.add_argument("--run-dir", default=None, help="training folder (default runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--max-minutes", type=float, default=10.0, help="training time limit")
    p.add_argument("--beam-size", type=int, default=5, help="beam width for the beam score")
    p.add_argument("--data-root", default=None, help="folder holding multi30k/")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    preset = SMOKE if args.smoke else get_preset(args.preset)
    device = torch.device("cpu") if args.smoke else pick_device()
    if not args.smoke and device.type != "cuda":
        print("warning: no CUDA device; this will be slow (use --smoke to test the path)")
    name = "gpu_base_smoke" if args.smoke else args.preset.replace("-", "_")
    run_dir = Path(args.run_dir or REPO / "runs" / name)
    out = Path(args.out)
    summary = train_translation(
        preset,
        run_dir,
        resume=args.resume,
        max_minutes=args.max_minutes,
        device=device,
        data_root=args.data_root,
        progress=not args.smoke,
    )
    train_wall = time.perf_counter() - started
    model = model_from_training_checkpoint(run_dir / "checkpoint.pt").to(device)
    from tfx_course.data.subword import SubwordTokenizer

    tokenizer = SubwordTokenizer.load(run_dir / "tokenizer.json")
    limit = 20 if args.smoke else None
    common = dict(limit=limit, root=args.data_root, max_len=preset.decode_max_len)
    greedy = score_test2016(model, tokenizer, **common)
    beam = score_test2016(model, tokenizer, beam_size=args.beam_size, **common)
    device_name = summary["device"]
    peak_name, peak = peak_flops(device_name) if device.type == "cuda" else (None, None)
    flops_per_second = 6 * summary["parameters"] * summary["tokens_per_second"]
    results = {
        "preset": preset.to_dict(),
        "git_commit": git_commit(),
        "device": device_name,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "parameters": summary["parameters"],
        "steps": summary["steps"],
        "finished_schedule": summary["finished"],
        "train_seconds": round(summary["train_seconds"], 1),
        "wall_seconds_to_trained_model": round(train_wall, 1),
        "wall_seconds_total": round(time.perf_counter() - started, 1),
        "target_tokens_per_second": round(summary["tokens_per_second"], 1),
        "model_flops_per_second": flops_per_second,
        "mfu": flops_per_second / peak if peak else None,
        "mfu_peak": {"device": peak_name, "bf16_dense_flops": peak},
        "mfu_formula": "6 * parameters * target tokens/s / peak dense bf16 FLOP/s",
        "val_loss": summary["val_loss"],
        "val_bleu_greedy_subset": summary["val_bleu_greedy"],
        "test2016_greedy": greedy,
        "test2016_beam": beam,
        "beam_note": None if beam else "tfx_course.decoding has no beam search yet: greedy only",
    }
    write_json(out / f"{name}.json", results)
    shutil.copyfile(run_dir / "curves.png", out / f"{name}_curves.png")
    shutil.copyfile(run_dir / "history.json", out / f"{name}_history.json")
    print(json.dumps({k: results[k] for k in ("device", "steps", "train_seconds", "mfu")}))
    print(f"test2016 greedy BLEU {greedy['bleu']:.2f} ({greedy['signature']})")
    if beam:
        print(f"test2016 beam {args.beam_size} BLEU {beam['bleu']:.2f}")
    return results


if __name__ == "__main__":
    main()
