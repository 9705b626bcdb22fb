"""Lesson 16's long runs: the two other families, the modern components, efficient attention.

    PYTHONPATH=. python tools/applications.py                  # every part, about 15 minutes of CPU
    PYTHONPATH=. python tools/applications.py --parts vit speed
    PYTHONPATH=. python tools/applications.py --quick --out applications.json  # seconds

Writes ``results/applications_cpu.json`` (after every part, atomically): the machine, and for
each part its settings, its measurements and the seconds it took.

- ``lm``: the decoder-only character language model on the English side of Multi30k, larger
  and trained longer than in the lesson; validation loss and perplexity along the way, and
  samples at several temperatures and top-k.
- ``vit``: the Vision Transformer on scikit-learn's 8x8 digits, three seeds, next to logistic
  regression on the same split.
- ``components``: the lesson's small language model with one modern piece swapped in at a time
  (RoPE, RMSNorm, SwiGLU, grouped-query and multi-query attention) and all of them together, at
  the lesson's fixed budget, three seeds each. Seed 0 of "classic" and "modern" is what the
  lesson re-runs live.
- ``long_range``: full, sliding-window and linear attention on the needle task, accuracy by the
  needle's distance, three seeds (the lesson re-runs seed 0).
- ``speed``: CPU time of causal full, sliding-window and linear attention against the length.

Times are CPU seconds of this process (``time.process_time``) on one thread, so that other work
on a shared machine does not inflate them; ``wall_seconds`` records the elapsed time.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tfx_course import families as fam
from tfx_course.data import CharTokenizer, load_multi30k
from tfx_course.files import write_json
from tfx_course.modern import attention_cpu_seconds, kv_cache_size, swiglu_width
from tfx_course.repro import seed_everything
from tfx_course.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("lm", "vit", "components", "long_range", "speed")

# The lesson's small language model and its budget (the lesson builds the same and checks it).
LM_SMALL = {"d_model": 64, "n_heads": 4, "n_layers": 2, "d_ff": 256, "max_len": 128}
LM_TRAIN = {"lr": 3e-3, "max_steps": 250, "warmup_steps": 30, "schedule": "cosine"}
LM_BATCH, LM_VAL_SENTENCES = 32, 500
# The longer run: a wider, deeper model of the same kind.
LM_LARGE = {"d_model": 128, "n_heads": 4, "n_layers": 4, "d_ff": 512, "max_len": 128}
LM_LARGE_TRAIN = {"lr": 2e-3, "max_steps": 3000, "warmup_steps": 100, "schedule": "cosine"}
SAMPLING = [(1.0, None), (0.8, 10), (0.5, 5)]
VIT = {"d_model": 32, "n_heads": 4, "n_layers": 2, "d_ff": 64, "patch_size": 2}
VIT_TRAIN = {"lr": 3e-3, "max_steps": 400, "warmup_steps": 20, "schedule": "cosine", "weight_decay": 0.05}  # fmt: skip
VIT_BATCH, VIT_TEST = 64, 500


def variants(d_model: int = LM_SMALL["d_model"], d_ff: int = LM_SMALL["d_ff"]) -> dict[str, dict]:
    """Return the component comparison's variants: the LMConfig fields each one changes."""
    swiglu = {"ffn": "swiglu", "d_ff": swiglu_width(d_model, d_ff)}
    return {
        "classic": {},
        "RoPE": {"positional": "rope"},
        "RMSNorm": {"norm": "rmsnorm"},
        "SwiGLU": swiglu,
        "GQA (2 key/value heads)": {"n_kv_heads": 2},
        "MQA (1 key/value head)": {"n_kv_heads": 1},
        "modern (all four, GQA)": {
            "positional": "rope",
            "norm": "rmsnorm",
            **swiglu,
            "n_kv_heads": 2,
        },  # fmt: skip
    }


NEEDLE = {"length": 48, "n_noise": 16, "n_needles": 8}
LONG_RANGE_MODEL = {"d_model": 32, "n_heads": 4, "n_layers": 2, "d_ff": 64, "window": 8}
LONG_RANGE_TRAIN = {"lr": 3e-3, "max_steps": 150, "warmup_steps": 20, "schedule": "cosine", "weight_decay": 0.0}  # fmt: skip
LONG_RANGE_BATCH, LONG_RANGE_TRAIN_SEQUENCES, LONG_RANGE_TEST = 64, 6400, 2000
ATTENTIONS = {"full": {}, "sliding window": {"attention": "sliding"}, "linear": {"attention": "linear"}}  # fmt: skip
SPEED = {"lengths": [256, 512, 1024, 2048, 4096], "heads": 2, "d_head": 16, "window": 32, "repeats": 3}  # fmt: skip


def train_config(values: dict, seed: int = 0) -> TrainConfig:
    """Return the TrainConfig of a part: no label smoothing, clipping at 1."""
    base = {"label_smoothing": 0.0, "weight_decay": 0.01, "seed": seed}
    return TrainConfig(**{**base, **values})


def lm_data(batch_size: int = LM_BATCH) -> tuple[CharTokenizer, list, list]:
    """Return the character tokenizer, the training batches and the validation batches."""
    train = [en for _, en in load_multi30k("train")]
    val = [en for _, en in load_multi30k("val")][:LM_VAL_SENTENCES]
    tokenizer = CharTokenizer.from_texts(train)
    batches = fam.lm_batches(train, tokenizer, batch_size, LM_SMALL["max_len"], seed=0)
    return tokenizer, batches, fam.lm_batches(val, tokenizer, 250, LM_SMALL["max_len"])


def train_lm(
    config: fam.LMConfig, batches: list, train: TrainConfig, seed: int
) -> fam.DecoderOnlyLM:
    """Build the language model from ``seed`` and train it."""
    seed_everything(seed)
    model = fam.DecoderOnlyLM(config)
    fam.train_steps(model, batches, lambda m, b: fam.lm_loss(m, b), train)
    return model


def unigram_loss(batches: list, vocab_size: int) -> float:
    """Return the cross-entropy of predicting each character from its frequency alone."""
    targets = torch.cat([b[:, 1:].flatten() for b in batches])
    counts = torch.bincount(targets[targets != 0], minlength=vocab_size).double()
    p = counts / counts.sum()
    return float(-(p[p > 0] * p[p > 0].log()).sum())


def run_lm(quick: bool) -> dict:
    tokenizer, batches, val = lm_data()
    config = fam.LMConfig(tokenizer.vocab_size, **LM_LARGE)
    steps = 20 if quick else LM_LARGE_TRAIN["max_steps"]
    train = train_config({**LM_LARGE_TRAIN, "max_steps": steps, "eval_every": max(steps // 12, 1)})
    seed_everything(0)
    model = fam.DecoderOnlyLM(config)
    history = fam.train_steps(
        model,
        batches,
        lambda m, b: fam.lm_loss(m, b),
        train,
        evaluate=lambda m: fam.evaluate_lm(m, val),
    )
    gen = torch.Generator().manual_seed(0)
    samples = []
    for temperature, top_k in SAMPLING:
        ids = fam.sample(model, 5, 160, temperature, top_k, gen)
        texts = [tokenizer.decode(row.tolist()) for row in ids]
        samples.append({"temperature": temperature, "top_k": top_k, "texts": texts})
    final = history.val_loss[-1]
    return {
        "config": dataclasses.asdict(config),
        "train": {**LM_LARGE_TRAIN, "max_steps": steps, "batch_size": LM_BATCH},
        "parameters": model.num_parameters(),
        "curve": {"step": history.val_step, "val_loss": history.val_loss},
        "val_loss": final,
        "perplexity": math.exp(final),
        "unigram_loss": unigram_loss(batches, tokenizer.vocab_size),
        "uniform_loss": math.log(tokenizer.vocab_size - 4),
        "samples": samples,
    }


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return scikit-learn's 8x8 digits as (train images, train labels, test images, test labels).

    Images (n, 1, 8, 8) scaled to [0, 1]; 500 test images, stratified, fixed by random_state=0.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    split = train_test_split(
        digits.images, digits.target, test_size=VIT_TEST, random_state=0, stratify=digits.target
    )
    x_train, x_test, y_train, y_test = (torch.tensor(a) for a in split)
    return x_train[:, None].float() / 16, y_train, x_test[:, None].float() / 16, y_test


def image_batches(images: torch.Tensor, labels: torch.Tensor, size: int) -> list:
    """Cut (images, labels) into batches in their order (train_steps shuffles the batches)."""
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, len(labels), size)]


def run_vit(quick: bool) -> dict:
    from sklearn.linear_model import LogisticRegression

    x_train, y_train, x_test, y_test = digits_split()
    batches = image_batches(x_train, y_train, VIT_BATCH)
    steps = 10 if quick else VIT_TRAIN["max_steps"]
    accuracy = []
    for seed in (0,) if quick else (0, 1, 2):
        seed_everything(seed)
        model = fam.VisionTransformer(fam.ViTConfig(**VIT))
        train = train_config({**VIT_TRAIN, "max_steps": steps}, seed)
        fam.train_steps(model, batches, lambda m, b: F.cross_entropy(m(b[0]), b[1]), train)
        model.eval()
        with torch.no_grad():
            accuracy.append((model(x_test).argmax(-1) == y_test).float().mean().item())
    linear = LogisticRegression(max_iter=5000).fit(x_train.flatten(1).numpy(), y_train.numpy())
    return {
        "config": dataclasses.asdict(fam.ViTConfig(**VIT)),
        "train": {**VIT_TRAIN, "max_steps": steps, "batch_size": VIT_BATCH},
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_images": len(y_train),
        "test_images": len(y_test),
        "accuracy": accuracy,
        "logistic_regression_accuracy": float(
            linear.score(x_test.flatten(1).numpy(), y_test.numpy())
        ),  # fmt: skip
    }


def run_components(quick: bool) -> dict:
    tokenizer, batches, val = lm_data()
    base = fam.LMConfig(tokenizer.vocab_size, **LM_SMALL)
    steps = 10 if quick else LM_TRAIN["max_steps"]
    seeds = (0,) if quick else (0, 1, 2)
    results = {}
    for name, changes in variants().items():
        config = dataclasses.replace(base, **changes)
        losses = []
        for seed in seeds:
            model = train_lm(config, batches, train_config({**LM_TRAIN, "max_steps": steps}, seed), seed)  # fmt: skip
            losses.append(fam.evaluate_lm(model, val))
        cache = kv_cache_size(config.n_layers, config.kv_heads, config.d_head, config.max_len)
        results[name] = {"changes": changes, "parameters": model.num_parameters(), "kv_cache": cache, "val_loss": losses}  # fmt: skip
        print(f"  {name:<26} val loss {' '.join(f'{v:.3f}' for v in losses)}", flush=True)
    return {
        "base_config": dataclasses.asdict(base),
        "train": {**LM_TRAIN, "max_steps": steps, "batch_size": LM_BATCH},
        "seeds": list(seeds),
        "val_sentences": LM_VAL_SENTENCES,
        "variants": results,
    }


def long_range_edges() -> list[int]:
    """Distance buckets: inside one window, within reach of the stacked windows, beyond."""
    window, layers = LONG_RANGE_MODEL["window"], LONG_RANGE_MODEL["n_layers"]
    return [1, window, layers * (window - 1) + 1, NEEDLE["length"]]


def run_long_range(quick: bool) -> dict:
    task = fam.NeedleTask(**NEEDLE)
    tokens, needles, _ = task.sample(LONG_RANGE_TRAIN_SEQUENCES, seed=0)
    batches = image_batches(tokens, needles, LONG_RANGE_BATCH)
    test = task.sample(LONG_RANGE_TEST, seed=1)
    base = fam.LMConfig(task.vocab_size, max_len=task.length, **LONG_RANGE_MODEL)
    steps = 10 if quick else LONG_RANGE_TRAIN["max_steps"]
    kinds = {}
    for name, changes in ATTENTIONS.items():
        kinds[name] = []
        for seed in (0,) if quick else (0, 1, 2):
            seed_everything(seed)
            model = fam.DecoderOnlyLM(dataclasses.replace(base, **changes))
            train = train_config({**LONG_RANGE_TRAIN, "max_steps": steps}, seed)
            fam.train_steps(model, batches, fam.needle_loss, train)
            kinds[name].append(fam.needle_accuracy(model, *test, long_range_edges()))
        print(f"  {name:<16} {kinds[name]}", flush=True)
    return {
        "task": NEEDLE,
        "model": LONG_RANGE_MODEL,
        "train": {**LONG_RANGE_TRAIN, "max_steps": steps, "batch_size": LONG_RANGE_BATCH},
        "edges": long_range_edges(),
        "accuracy": kinds,
    }


def run_speed(quick: bool) -> dict:
    settings = {**SPEED, "lengths": SPEED["lengths"][:2]} if quick else SPEED
    seconds: dict[str, list[float]] = {}
    for length in settings["lengths"]:
        measured = attention_cpu_seconds(
            length, settings["window"], settings["heads"], settings["d_head"], settings["repeats"]
        )
        for kind, value in measured.items():
            seconds.setdefault(kind, []).append(value)
    return {**settings, "cpu_seconds": seconds}


RUNS = {"lm": run_lm, "vit": run_vit, "components": run_components, "long_range": run_long_range, "speed": run_speed}  # fmt: skip


def machine() -> dict:
    return {
        "processor": platform.processor() or platform.machine(),
        "system": platform.system(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "applications_cpu.json")
    parser.add_argument("--quick", action="store_true", help="a few steps of each part (a smoke test)")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the lessons' setting: CPU sums in the same order
    import json

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["machine"] = machine()
    for part in args.parts:
        print(f"{part} ...", flush=True)
        start, wall = time.process_time(), time.perf_counter()
        results[part] = RUNS[part](args.quick)
        results[part]["cpu_seconds_total"] = round(time.process_time() - start, 1)
        results[part]["wall_seconds"] = round(time.perf_counter() - wall, 1)
        results[part]["quick"] = args.quick
        write_json(args.out, results)
        print(f"{part}: {results[part]['cpu_seconds_total']} CPU s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
