"""Translation with little data, measured: BLEU against training-set size, what helps, transfer.

    PYTHONPATH=. python tools/low_resource.py                   # about 40-60 min on 2 CPU cores
    PYTHONPATH=. python tools/low_resource.py --quick --out /tmp   # a smoke test

Part 1, Multi30k German to English. Nested training subsets of 1,000, 4,000, 16,000 and 29,000
pairs (``tfx.data.nested_subsets``, seed 0); for each, a shared BPE vocabulary of 2,000 ids
trained on that subset, a small model (d_model 64, 2 + 2 layers, d_ff 256, dropout 0.1) and a
fixed budget of 600 steps of at most 1,024 tokens (peak learning rate 1e-2, the best of the
sweeps in tools/tuning_sweeps.py); greedy sacreBLEU on the first 300 sentences
of test2016. At 1,000 pairs, three changes the low-resource literature recommends, one at a
time: a smaller model (d_model 32), more dropout (0.3), a smaller vocabulary (500).

Part 2, Tatoeba French to English: 4,000 training pairs (seed 0), the first 500 validation
pairs, 500 test pairs (seed 0); the course checkpoint's shape (d_model 128, 2 + 2 layers,
d_ff 512, tied target embedding) trained for 200 steps. The French side gets its own BPE of
2,000 ids. Runs: from scratch with a 2,000-id English BPE of its own; from scratch with the
course's English vocabulary; the course decoder transferred (``tfx.transfer.transfer_parts``:
decoder layers, target embedding and output layer, with the course vocabulary); the decoder
and the encoder layers transferred.

Writes ``results/low_resource_sizes.json``, ``..._helps.json`` and ``..._tatoeba.json`` (one
per part; ``--part`` runs one, so the three can run side by side): the set-up, the machine, its
load, the wall time, and every run's BLEU, validation loss and curves.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import torch

from tfx_course.data import load_multi30k, load_tatoeba, nested_subsets
from tfx_course.files import write_json
from tfx_course.lowresource import prepare_pairs, train_and_score
from tfx_course.model import ModelConfig, Transformer
from tfx_course.pretrained import load_course_model
from tfx_course.repro import seed_everything
from tfx_course.training import TrainConfig
from tfx_course.transfer import transfer_parts

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("sizes", "helps", "tatoeba")  # each writes results/low_resource_<part>.json
SIZES = [1000, 4000, 16000, 29000]
TRAIN = TrainConfig(lr=1e-2, max_steps=600, warmup_steps=60, schedule="cosine",
                    label_smoothing=0.1, log_every=10)  # fmt: skip
HELPS = {"smaller model (d_model 32)": ({"d_model": 32, "d_ff": 128}, 2000),
         "more dropout (0.3)": ({"dropout": 0.3}, 2000),
         "smaller vocabulary (500)": ({}, 500)}  # fmt: skip
TATOEBA_TRAIN = TrainConfig(lr=2e-3, max_steps=200, warmup_steps=20, schedule="cosine",
                            label_smoothing=0.1, log_every=10)  # fmt: skip


def small_model(vocab: int, **changes: object) -> ModelConfig:
    base = ModelConfig(vocab, vocab, d_model=64, n_heads=4, n_encoder_layers=2,
                       n_decoder_layers=2, d_ff=256, dropout=0.1, max_len=128,
                       tie_embeddings=True, fused_attention=True)  # fmt: skip
    return dataclasses.replace(base, **changes)


def summary(result: dict, **extra: object) -> dict:
    h = result.pop("history")
    return {**extra, **result, "loss": h.loss, "val_step": h.val_step}


def multi30k_runs(sizes: list[int], train: TrainConfig, n_test: int, helps: bool) -> list[dict]:
    """Part 1: one run per training-set size, or (``helps``) the three changes at the smallest."""
    pool = load_multi30k("train")
    subsets = nested_subsets(pool, [min(s, len(pool)) for s in sizes], seed=0)
    val, test = load_multi30k("val")[:500], load_multi30k("test2016")[:n_test]
    plans = [(size, "baseline", {}, 2000) for size in sorted(subsets)]
    if helps:
        plans = [(min(subsets), name, changes, vocab) for name, (changes, vocab) in HELPS.items()]
    runs = []
    for size, name, changes, vocab in plans:
        data = prepare_pairs(subsets[size], val, vocab_size=vocab, max_tokens=1024)
        seed_everything(0)
        model = Transformer(small_model(data.src_tokenizer.vocab_size, **changes))
        result = train_and_score(model, data, train, test)
        runs.append(summary(result, size=size, variant=name, vocab_size=data.src_tokenizer.vocab_size))  # fmt: skip
        print(f"multi30k {size:>6} {name:<28} BLEU {result['bleu']:.2f}", flush=True)
    return runs


def tatoeba_runs(n_train: int, train: TrainConfig, n_test: int) -> list[dict]:
    """Part 2: French to English from scratch and from the course model's decoder."""
    pool, val = load_tatoeba("train"), load_tatoeba("val")[:500]
    pairs = nested_subsets(pool, [n_train], seed=0)[n_train]
    test = nested_subsets(load_tatoeba("test"), [n_test], seed=0)[n_test]
    course, course_tokenizer = load_course_model()
    french = prepare_pairs(pairs, val, vocab_size=2000, tgt_tokenizer=course_tokenizer, max_tokens=1024)  # fmt: skip
    own = prepare_pairs(pairs, val, src_tokenizer=french.src_tokenizer, vocab_size=2000, max_tokens=1024)  # fmt: skip
    runs = []
    for name, data, parts in [
        ("scratch, own English BPE (2,000)", own, None),
        ("scratch, course English vocabulary", french, None),
        ("transfer: course decoder", french, ("decoder",)),
        ("transfer: course decoder + encoder layers", french, ("decoder", "encoder_layers")),
    ]:
        vocab = data.src_tokenizer.vocab_size
        if parts is None:
            seed_everything(0)
            config = dataclasses.replace(course.config, src_vocab_size=vocab,
                                         tgt_vocab_size=data.tgt_tokenizer.vocab_size)  # fmt: skip
            model, copied = Transformer(config), []
        else:
            model, copied = transfer_parts(course, vocab, parts)
        result = train_and_score(model, data, train, test, decode_max_len=40)
        runs.append(summary(result, variant=name, copied_tensors=len(copied)))
        print(f"tatoeba {name:<42} BLEU {result['bleu']:.2f}", flush=True)
    return runs


def _machine(load: float) -> str:
    return (
        f"{platform.machine()} CPU, 1 torch thread, shared (load average {load:.1f} at the start)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "results", help="folder for the JSON files")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 4 steps: a smoke test")
    p.add_argument("--part", choices=["all", *PARTS], default="all", help="one part, or all three")
    p.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="training-set sizes (sizes)")
    p.add_argument("--tag", default="", help="appended to the file name: runs side by side")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    steps = {"max_steps": 4, "warmup_steps": 2} if args.quick else {}
    for part in PARTS if args.part == "all" else [args.part]:
        start, load = time.perf_counter(), os.getloadavg()[0]
        if part == "tatoeba":
            n_train, n_test = (100, 20) if args.quick else (4000, 500)
            runs = tatoeba_runs(n_train, dataclasses.replace(TATOEBA_TRAIN, **steps), n_test)
            setup = {"train_pairs": n_train, "val_pairs": 500, "test_pairs": n_test,
                     "train": TATOEBA_TRAIN.to_dict(),
                     "bleu_on": f"{n_test} Tatoeba test pairs (seed 0), greedy, cased sacreBLEU"}  # fmt: skip
        else:
            sizes = [60, 120] if args.quick else args.sizes
            n_test = 20 if args.quick else 300
            runs = multi30k_runs(
                sizes, dataclasses.replace(TRAIN, **steps), n_test, part == "helps"
            )
            setup = {"sizes": sizes, "train": TRAIN.to_dict(), "model": dataclasses.asdict(small_model(2000)),
                     "bleu_on": f"first {n_test} sentences of test2016, greedy, cased sacreBLEU"}  # fmt: skip
        name = f"low_resource_{part}{args.tag}.json"
        write_json(args.out / name, {
            **setup, "machine": _machine(load), "torch": torch.__version__,
            "wall_minutes": round((time.perf_counter() - start) / 60, 1), "runs": runs,
        })  # fmt: skip
        print(f"wrote {args.out / name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
