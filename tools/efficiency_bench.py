"""Measure what lesson 12 plots: attention's cost against length, naive vs fused, blockwise
attention's memory, a Transformer layer against an LSTM layer, bf16 autocast, torch.compile.

    PYTHONPATH=. python tools/efficiency_bench.py                    # results/efficiency_cpu.json
    PYTHONPATH=. python tools/efficiency_bench.py --skip compile     # leave a part out
    PYTHONPATH=. python tools/efficiency_bench.py --only compile --out compile.json

Everything runs on the CPU with one torch thread, as the lessons do (``--threads`` to change
it). Times are the fastest of ``--repeats`` calls after a warm-up, the functions of one
comparison taking turns (``tfx.efficiency.best_times``), so a busy moment hits all alike; on a
shared machine the minimum is the most repeatable summary. Memory is counted exactly, by the
bytes of the tensors a computation holds (``tfx.efficiency.tensor_memory``). The JSON records
the machine, the sizes and every measured number; lesson 12 loads it, plots it, and re-runs a
small slice live. ``torch.compile`` needs a C++ compiler; its first compilation is timed with an
empty cache (a fresh temporary ``TORCHINDUCTOR_CACHE_DIR``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tfx_course import efficiency
from tfx_course.files import write_json
from tfx_course.layers import EncoderLayer, FeedForward
from tfx_course.model import ModelConfig, Transformer
from tfx_course.repro import seed_everything

ROOT = Path(__file__).resolve().parents[1]
# The attention sizes of the course checkpoint: d_model 128 in 4 heads of 32, d_ff 512.
C, H, D, D_FF = 128, 4, 32, 512


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v step by step, forming the (B, H, T, T) scores."""
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1) @ v


def qkv(B: int, T: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, T, D, generator=gen) for _ in range(3))


def ms(seconds: float) -> float:
    return round(1e3 * seconds, 4)


def machine(threads: int) -> dict:
    """Describe the CPU and the software the numbers were measured with."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "note": "a 2-core machine shared with other work; times are minima of repeated calls",
    }


def scaling(lengths: list[int], repeats: int) -> dict:
    """Time attention (naive, fused, blockwise) and the feed-forward block against length."""
    ff = FeedForward(C, D_FF).eval()
    rows = []
    with torch.no_grad():
        for T in lengths:
            q, k, v = qkv(1, T)
            x = torch.randn(1, T, C)
            times = efficiency.best_times(
                {
                    "naive": partial(naive_attention, q, k, v),
                    "fused": partial(F.scaled_dot_product_attention, q, k, v),
                    "blockwise": partial(efficiency.blockwise_attention, q, k, v),
                    "feed_forward": partial(ff, x),
                },
                repeats,
            )
            rows.append({"length": T, **{f"{name}_ms": ms(t) for name, t in times.items()}})
            print(f"scaling T={T:5d} " + " ".join(f"{n} {ms(t):9.3f}" for n, t in times.items()))
    fit = [r for r in rows if r["length"] >= 256]
    slopes = {
        name: round(
            efficiency.loglog_slope([r["length"] for r in fit], [r[f"{name}_ms"] for r in fit]), 3
        )  # fmt: skip
        for name in ("naive", "fused", "blockwise", "feed_forward")
    }
    sizes = {"batch": 1, "heads": H, "d_head": D, "d_model": C, "d_ff": D_FF, "block_size": 128}
    return {"sizes": sizes, "slopes_from_length_256": slopes, "rows": rows}


def crossover(rows: list[dict]) -> int | None:
    """Return the shortest length from which the fused kernel is faster at every longer one."""
    found = None
    for row in reversed(rows):
        if row["naive_ms"] / row["fused_ms"] <= 1.0:
            break
        found = row["length"]
    return found


def naive_vs_fused(batches: list[int], lengths: list[int], repeats: int) -> dict:
    """Time naive and fused attention for several batch sizes; find where fused starts winning."""
    result = {}
    with torch.no_grad():
        for B in batches:
            rows = []
            for T in lengths:
                q, k, v = qkv(B, T)
                times = efficiency.best_times(
                    {
                        "naive": partial(naive_attention, q, k, v),
                        "fused": partial(F.scaled_dot_product_attention, q, k, v),
                    },
                    repeats,
                )
                rows.append({"length": T, "naive_ms": ms(times["naive"]), "fused_ms": ms(times["fused"])})  # fmt: skip
                print(
                    f"naive vs fused B={B:3d} T={T:5d} ratio {times['naive'] / times['fused']:.2f}"
                )
            result[str(B)] = {"crossover_length": crossover(rows), "rows": rows}
    return {"heads": H, "d_head": D, "by_batch": result}


def memory(lengths: list[int], block_size: int) -> dict:
    """Count the tensor memory of naive, blockwise and fused attention (exact, no timing)."""
    rows = []
    with torch.no_grad():
        for T in lengths:
            q, k, v = qkv(1, T)
            row = {"length": T}
            for name, fn in (
                ("naive", partial(naive_attention, q, k, v)),
                ("blockwise", partial(efficiency.blockwise_attention, q, k, v, None, block_size)),
                ("fused", partial(F.scaled_dot_product_attention, q, k, v)),
            ):
                _, used = efficiency.tensor_memory(fn)
                row[f"{name}_peak_bytes"] = used.peak_bytes
            rows.append(row)
            print(f"memory T={T:5d} " + " ".join(f"{k} {v}" for k, v in row.items()))
    return {"batch": 1, "heads": H, "d_head": D, "block_size": block_size, "rows": rows}


def lstm_vs_transformer(lengths: list[int], batch: int, repeats: int) -> dict:
    """Time an LSTM layer, a Transformer encoder layer and its self-attention sublayer alone,
    over the same (B, T, C) input."""
    seed_everything(0)
    lstm = nn.LSTM(C, C, batch_first=True).eval()
    layer = EncoderLayer(C, H, D_FF, fused_attention=True, fused_norm=True).eval()
    rows = []
    with torch.no_grad():
        for T in lengths:
            x = torch.randn(batch, T, C)
            fns = {
                "lstm": partial(lstm, x),
                "transformer": partial(layer, x),
                "self_attention": partial(layer.self_attn, x, x, x, need_weights=False),
            }
            times = efficiency.best_times(fns, repeats)
            rows.append({"length": T, **{f"{name}_ms": ms(t) for name, t in times.items()}})
            print(f"lstm vs transformer T={T:5d} " + " ".join(f"{n} {ms(t):9.3f}" for n, t in times.items()))  # fmt: skip
    params = {
        "lstm": sum(p.numel() for p in lstm.parameters()),
        "transformer": sum(p.numel() for p in layer.parameters()),
        "self_attention": sum(p.numel() for p in layer.self_attn.parameters()),
    }
    return {"batch": batch, "d_model": C, "heads": H, "d_ff": D_FF, "parameters": params, "rows": rows}  # fmt: skip


def bf16(repeats: int) -> dict:
    """Time a forward pass of a Transformer in float32 and under bf16 autocast; compare outputs."""
    out = {}
    for name, config, B, T in (
        ("course", ModelConfig.course(6000, 6000), 32, 32),
        ("base", ModelConfig.base(8000, 8000), 8, 32),
    ):
        seed_everything(0)
        model = Transformer(dataclasses.replace(config, dropout=0.0)).eval()
        src = torch.randint(4, 6000, (B, T))
        tgt = torch.randint(4, 6000, (B, T))

        def run(enabled: bool, model: nn.Module = model, src=src, tgt=tgt) -> torch.Tensor:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                return model(src, tgt).float()

        times = efficiency.best_times({"float32": lambda: run(False), "bf16": lambda: run(True)}, repeats)  # fmt: skip
        full, half = run(False), run(True)
        out[name] = {
            "batch": B,
            "length": T,
            "parameters": model.num_parameters(),
            "float32_ms": ms(times["float32"]),
            "bf16_ms": ms(times["bf16"]),
            "max_abs_logit_difference": round((full - half).abs().max().item(), 5),
            "same_argmax": round((full.argmax(-1) == half.argmax(-1)).float().mean().item(), 5),
        }
        print(f"bf16 {name}: {out[name]}")
    return out


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compile_case(eager: Callable[[int], object], compiled: Callable[[int], object], repeats: int) -> dict:  # fmt: skip
    """Time the first compiled call, two new lengths, then eager against compiled at T=32."""
    first = timed(lambda: compiled(32))
    second_length = timed(lambda: compiled(40))  # a new shape: compiled again, now dynamic
    third_length = timed(lambda: compiled(48))
    times = efficiency.best_times({"eager": lambda: eager(32), "compiled": lambda: compiled(32)}, repeats)  # fmt: skip
    saved = times["eager"] - times["compiled"]
    return {
        "first_call_s": round(first, 2),
        "second_length_s": round(second_length, 2),
        "third_length_s": round(third_length, 2),
        "eager_ms": ms(times["eager"]),
        "compiled_ms": ms(times["compiled"]),
        "break_even_calls": math.ceil(first / saved) if saved > 0 else None,
    }


def compile_cost(repeats: int) -> dict:
    """torch.compile on three workloads: a training step, inference, a step-by-step layer."""
    seed_everything(0)
    model = Transformer(dataclasses.replace(ModelConfig.course(6000, 6000), dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def tokens(T: int) -> torch.Tensor:
        return torch.randint(4, 6000, (32, T), generator=torch.Generator().manual_seed(T))

    def train(net: nn.Module, T: int) -> None:
        src = tokens(T)
        loss = F.cross_entropy(net(src, src).flatten(0, 1), src.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer(net: nn.Module, T: int) -> None:
        net(tokens(T), tokens(T))

    layer = EncoderLayer(C, H, D_FF).eval()  # explicit attention, from-scratch LayerNorm
    x = {T: torch.randn(32, T, C) for T in (32, 40, 48)}

    @torch.no_grad()
    def layer_forward(net: nn.Module, T: int) -> None:
        net(x[T])

    result = {"note": "course-size model (d_model 128, 2 + 2 layers, vocab 6000), B=32"}
    for name, fn, net in (
        ("training_step", train, model),
        ("inference", infer, model.eval()),
        ("step_by_step_layer", layer_forward, layer),
    ):
        compiled = torch.compile(net)
        result[name] = compile_case(partial(fn, net), partial(fn, compiled), repeats)
        print(f"compile {name}: {result[name]}", flush=True)
        torch._dynamo.reset()  # the next workload starts from nothing compiled
    return result


PARTS = ("scaling", "naive_vs_fused", "memory", "lstm", "bf16", "compile")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "efficiency_cpu.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--skip", nargs="+", choices=PARTS, default=[])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache = tempfile.TemporaryDirectory()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name  # an empty cache: a first compilation
    parts = [part for part in args.only if part not in args.skip]
    # Parts measured before and not measured now are kept (--only to re-measure one part).
    result: dict = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    result.update({"machine": machine(args.threads), "repeats": args.repeats})
    lengths = [64, 128, 256, 512, 1024, 2048, 4096]
    jobs = {
        "scaling": lambda: scaling(lengths, args.repeats),
        "naive_vs_fused": lambda: naive_vs_fused(
            [1, 16, 64], [8, 16, 32, 64, 128, 256, 512, 1024], args.repeats
        ),  # fmt: skip
        "memory": lambda: memory(lengths, block_size=128),
        "lstm": lambda: lstm_vs_transformer([16, 32, 64, 128, 256, 512, 1024], 16, args.repeats),
        "bf16": lambda: bf16(args.repeats),
        "compile": lambda: compile_cost(args.repeats),
    }
    for part in parts:
        start = time.perf_counter()
        result[part] = jobs[part]()
        result[part]["bench_seconds"] = round(time.perf_counter() - start, 1)
        write_json(args.out, result)  # after every part: a stopped run keeps what it measured
    cache.cleanup()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
