"""The GPU paths side by side in one run: the reference step against the fast one, decoding, a profile.

    PYTHONPATH=. python tools/gpu/speed_run.py --out results/speed        # one GPU, < 10 minutes
    PYTHONPATH=. python tools/gpu/speed_run.py --smoke --out runs/speed_smoke  # every stage on a CPU

Four stages, most important first. Each writes its file atomically as soon as it has
something to say, and ``speed_summary.json`` is rewritten after every stage, so a run cut off
by a time limit keeps all it measured. Every file names the device and the peak it is
measured against. The run keeps to ``--budget-seconds``: a stage that no longer fits is
recorded as skipped, and the loops inside a stage stop when the time is up.

1. ``train`` (``speed_train.json``, ``speed_history.json``): gpu-base trained by the fast path
   (``tfx_course.fast_training``): fixed-shape batches ``--factor`` times the preset's token
   budget, the schedule re-derived by ``scale_recipe``, ``torch.compile``, fused AdamW, bf16,
   no sync inside a step. Time to the trained model (data, compilation and training), tokens/s
   and model FLOPs utilisation, then test2016 cased sacreBLEU, greedy and beam 5, decoded both
   by the static cache with CUDA graphs and by the eager decoders (same outputs?). The
   reference run (``results/gpu_base.json``) is quoted beside it.
2. ``sweep`` (``speed_sweep.json``): one training step's throughput at several token budgets:
   the reference step (``training.train_step``, what ``fit`` runs) on token batches, the fast
   step eager and compiled on fixed-shape batches, and compiled on token batches (dynamic
   shapes); with the host-device syncs counted in one step of each (CUDA).
3. ``decoding`` (``speed_decoding.json``): greedy decoding of gpu-base (random weights, EOS
   suppressed) at batch 1 and 32, 16 to 128 tokens: full recomputation, the growing cache, the
   static cache, the static cache as CUDA graphs, and full recomputation as CUDA graphs.
4. ``profile`` (``speed_profile.json``, ``speed_profile.txt``): ``torch.profiler`` over a few
   steps of the reference and the fast training step and over one cached and one graphed
   decoding: the top kernels, and the share of the time the GPU is idle.

Model FLOPs utilisation = 6 x parameters x target tokens per second / the device's peak dense
bf16 FLOP/s (``gpu_run.PEAK_BF16_FLOPS``); target tokens are real tokens, not padding.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from tfx_course.data.batching import Seq2SeqBatch
from tfx_course.data.bucketing import make_fixed_shape_batches, make_token_batches
from tfx_course.data.multi30k import load_multi30k
from tfx_course.device import pick_device
from tfx_course.evaluation import evaluate_translation
from tfx_course.fast_training import FastTrainer, fit_fast, scale_recipe
from tfx_course.files import atomic_write_text, write_json
from tfx_course.pretrained import LENGTH_PENALTY
from tfx_course.static_decoding import StaticDecoder
from tfx_course.training import evaluate, make_optimizer, make_scheduler, train_step
from tfx_course.translation import Preset, build_model, get_preset, prepare_data

REPO = Path(__file__).resolve().parents[2]


def _load(relative: str) -> ModuleType:
    """Import a script of this repository by its path (tools/ and benchmarks/ are not packages)."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GPU_RUN = _load("tools/gpu/gpu_run.py")  # peak FLOP/s, git commit, the smoke preset
KV_CACHE = _load("benchmarks/kv_cache.py")  # the decoding methods and their timing


class Budget:
    """The run's time limit: seconds left, and whether a stage still fits."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def used(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.used()


class Recorder:
    """Write each stage's file atomically, and the summary after every stage."""

    def __init__(self, out: Path, header: dict[str, Any]) -> None:
        self.out, self.header = out, header
        self.summary: dict[str, Any] = {**header, "stages": {}, "results": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.save_summary()

    def write(self, name: str, data: dict[str, Any]) -> Path:
        """Write ``speed_<name>.json``: the header (device, peak, versions) and ``data``."""
        return write_json(self.out / f"speed_{name}.json", {**self.header, **data})

    def save_summary(self) -> None:
        write_json(self.out / "speed_summary.json", self.summary)

    def stage(self, name: str, run: Callable[[], dict[str, Any] | None], needs: float, budget: Budget) -> None:  # fmt: skip
        """Run one stage if ``needs`` seconds are left; record its status, time and headline."""
        started, entry = time.perf_counter(), {"status": "skipped: out of time", "seconds": 0.0}
        if budget.left() >= needs:
            print(f"== {name} ({budget.left():.0f} s left)", flush=True)
            try:
                headline = run()
                entry["status"] = "ok"
                self.summary["results"][name] = headline
            except Exception as err:  # a failed stage must not stop the others
                entry["status"] = f"error: {type(err).__name__}: {err}"[:2000]
                traceback.print_exc()
            entry["seconds"] = round(time.perf_counter() - started, 1)
        self.summary["stages"][name] = entry
        self.summary["wall_seconds"] = round(budget.used(), 1)
        self.save_summary()
        print(f"== {name}: {entry['status']} ({entry['seconds']} s)", flush=True)


def device_header(device: torch.device, smoke: bool) -> dict[str, Any]:
    """Return what every result file starts with: the device, its peak, the software."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"  # fmt: skip
    entry, peak = GPU_RUN.peak_flops(name) if device.type == "cuda" else (None, None)
    return {
        "device": name,
        "device_model": entry,  # the row of the peak table: "H100 SXM", "H200", ...
        "peak_bf16_dense_flops": peak,
        "mfu_formula": "6 * parameters * target tokens/s / peak dense bf16 FLOP/s",
        "smoke": smoke,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "c_compiler": shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc"),
        "git_commit": GPU_RUN.git_commit(),
    }


def mfu(parameters: int, tokens_per_second: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: 6 N tokens/s over the peak (None without a peak)."""
    return 6 * parameters * tokens_per_second / peak if peak else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- stage 1: train and score
def fast_preset(base: Preset, factor: float) -> Preset:
    """The preset with ``factor`` times its token budget and the schedule re-derived for it."""
    return dataclasses.replace(
        base,
        name=f"{base.name}-fast",
        max_tokens=int(base.max_tokens * factor),
        train=scale_recipe(base.train, factor),
    )


def reference_run() -> dict[str, Any] | None:
    """The committed reference GPU run's headline numbers, if its file is here."""
    path = REPO / "results" / "gpu_base.json"
    if not path.exists():
        return None
    ref = json.loads(path.read_text())
    keys = ("device", "train_seconds", "wall_seconds_to_trained_model", "target_tokens_per_second", "mfu", "steps")  # fmt: skip
    out = {k: ref.get(k) for k in keys}
    out["test2016_beam"] = (ref.get("test2016_beam") or {}).get("bleu")
    out["test2016_greedy"] = (ref.get("test2016_greedy") or {}).get("bleu")
    return out


def train_fast(args: argparse.Namespace, ctx: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """Prepare fixed-shape batches, train with ``fit_fast``; compile, or eager if that fails."""
    started, preset = time.perf_counter(), fast_preset(ctx["base"], args.factor)
    data = prepare_data(preset, args.data_root, buckets=args.buckets)
    data_seconds = time.perf_counter() - started
    options = {"dynamic": args.dynamic, "backend": args.compile_backend}
    max_seconds = max(10.0, min(args.train_seconds, budget.left() - args.reserve_seconds))
    compile_error, compiled = None, args.compile
    while True:
        model = build_model(preset, data.tokenizer.vocab_size, preset.train.seed).to(ctx["device"])
        try:
            run = fit_fast(model, data.train_batches, preset.train, compile=compiled,
                           compile_options=options, max_seconds=max_seconds,
                           on_log=lambda s, loss: print(f"step {s} loss {loss:.3f}", flush=True))  # fmt: skip
            break
        except Exception as err:  # no compiler, or a compiler error: measure the eager fast path
            if not compiled:
                raise
            compile_error, compiled = f"{type(err).__name__}: {err}"[:2000], False
            traceback.print_exc()
            max_seconds = max(10.0, min(args.train_seconds, budget.left() - args.reserve_seconds))
    ctx.update(model=model, data=data, preset=preset, run=run, compiled=compiled)
    return {
        "data_seconds": data_seconds,
        "seconds_to_trained_model": time.perf_counter() - started,
        "compiled": compiled,
        "compile_options": options if compiled else None,
        "compile_error": compile_error,
    }


def train_results(ctx: dict[str, Any], timing: dict[str, Any], header: dict[str, Any]) -> dict:
    """Return the training stage's results (the test2016 scores still to come)."""
    run, data, preset, model = ctx["run"], ctx["data"], ctx["preset"], ctx["model"]
    steps_per_epoch = len(data.train_batches)
    params, peak = model.num_parameters(), header["peak_bf16_dense_flops"]
    overall, steady = run.tokens_per_second(), run.tokens_per_second(after_step=steps_per_epoch)
    real = sum(b.num_tokens(0) for b in data.train_batches)
    slots = sum(b.tgt_out.numel() for b in data.train_batches)
    last = run.history.step[-1] if run.history.step else 0
    steady = round(steady, 1) if last > steps_per_epoch else None  # compilation left out
    return {
        "recipe": preset.to_dict(),
        "rule": "max_tokens x factor; lr x sqrt(factor); steps and warmup / factor (same epochs)",
        "bucket_lengths": list(data.lengths or ()),
        "batch_shapes": sorted({tuple(b.src.shape) for b in data.train_batches}),
        "steps_per_epoch": steps_per_epoch,
        "target_padding_efficiency": real / slots,
        "parameters": params,
        "steps": last,
        "finished_schedule": last >= preset.train.max_steps and run.history.diverged_at is None,
        "diverged_at": run.history.diverged_at,
        **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in timing.items()},
        "first_step_seconds": round(run.first_step_seconds or 0.0, 2),
        "train_seconds": round(run.history.train_seconds, 2),
        "target_tokens": run.history.train_tokens,
        "target_tokens_per_second": round(overall, 1),
        "target_tokens_per_second_after_first_epoch": steady,
        "mfu": mfu(params, overall, peak),
        "mfu_after_first_epoch": mfu(params, steady, peak) if steady is not None else None,
        "final_train_loss": run.history.loss[-1] if run.history.loss else None,
        "val_loss": evaluate(model, data.val_batches)["loss"],
        "reference": reference_run(),
        "test2016": {},
    }


def score(args: argparse.Namespace, ctx: dict[str, Any], results: dict, save: Callable) -> None:
    """Score test2016 greedy and beam, eagerly (the reference protocol) then by the static cache.

    With CUDA the static cache runs as CUDA graphs; if that fails, the error is recorded and the
    eager scores stand.
    """
    model, tokenizer = ctx["model"].eval(), ctx["data"].tokenizer
    pairs = load_multi30k("test2016", args.data_root)[: args.test_limit]
    graphs = ctx["device"].type == "cuda"
    static = StaticDecoder(model, graphs=graphs)
    common = dict(length_penalty=LENGTH_PENALTY, batch_size=100, max_len=ctx["preset"].decode_max_len)  # fmt: skip
    paths = {"eager": {}, "static" + (" (CUDA graphs)" if graphs else ""): {"translator": static.translate}}  # fmt: skip
    for method, beam_size in (("greedy", 1), ("beam", args.beam_size)):
        key, outputs = "greedy" if method == "greedy" else f"beam {beam_size}", []
        for path, extra in paths.items():
            try:
                result = evaluate_translation(model, tokenizer, pairs, method, beam_size=beam_size, **common, **extra)  # fmt: skip
            except Exception as err:  # e.g. a graph that would not capture: keep the rest
                results["test2016"][f"{key}, {path}"] = {"error": f"{type(err).__name__}: {err}"[:1000]}  # fmt: skip
                traceback.print_exc()
                continue
            outputs.append(result.hypotheses)
            results["test2016"][f"{key}, {path}"] = {
                "bleu": result.bleu.score, "bleu_lowercase": result.bleu.lowercase_score,
                "signature": result.bleu.signature, "seconds": round(result.seconds, 2),
                "sentences": len(pairs),
            }  # fmt: skip
            print(f"test2016 {key}, {path}: BLEU {result.bleu.score:.2f} in {result.seconds:.1f} s", flush=True)  # fmt: skip
            save()
        if len(outputs) == 2:
            same = sum(a == b for a, b in zip(*outputs, strict=True))
            results["test2016"][f"{key}: identical outputs static vs eager"] = f"{same} of {len(pairs)}"  # fmt: skip
            save()


def stage_train(args, ctx, recorder: Recorder, budget: Budget) -> dict[str, Any]:
    """Stage 1: train gpu-base by the fast path, record it, then score test2016."""
    timing = train_fast(args, ctx, budget)
    results = train_results(ctx, timing, recorder.header)
    recorder.write("train", results)
    write_json(recorder.out / "speed_history.json", ctx["run"].history.to_dict())
    score(args, ctx, results, lambda: recorder.write("train", results))
    beam = [v for k, v in results["test2016"].items() if k.startswith("beam") and "eager" in k and "bleu" in v]  # fmt: skip
    return {
        "compiled": results["compiled"],
        "seconds_to_trained_model": results["seconds_to_trained_model"],
        "train_seconds": results["train_seconds"],
        "target_tokens_per_second": results["target_tokens_per_second"],
        "mfu": results["mfu"],
        "mfu_after_first_epoch": results["mfu_after_first_epoch"],
        "test2016_beam": beam[0]["bleu"] if beam else None,
        "reference": results["reference"],
    }


# ---------------------------------------------------------------- stage 2: throughput sweep
def count_syncs(step: Callable[[], None], device: torch.device) -> int | None:
    """Count the host-device syncs one call of ``step`` makes (CUDA's sync debug mode)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def time_steps(step: Callable[[Seq2SeqBatch], None], batches: list[Seq2SeqBatch], warmup: int, steps: int, device: torch.device) -> dict:  # fmt: skip
    """Run ``warmup`` then ``steps`` timed steps over ``batches``; return time and tokens."""
    for i in range(warmup):
        step(batches[i % len(batches)])
    syncs = count_syncs(lambda: step(batches[warmup % len(batches)]), device)
    timed = [batches[(warmup + 1 + i) % len(batches)] for i in range(steps)]
    tokens = sum(b.num_tokens(0) for b in timed)  # counted before the clock starts
    slots = sum(b.tgt_out.numel() for b in timed)
    sync(device)
    start = time.perf_counter()
    for batch in timed:
        step(batch)
    sync(device)
    seconds = time.perf_counter() - start
    return {"ms_per_step": 1e3 * seconds / steps, "target_tokens_per_step": tokens / steps,
            "tokens_per_second": tokens / seconds, "target_padding_efficiency": tokens / slots,
            "syncs_per_step": syncs}  # fmt: skip


def sweep_paths(ctx: dict[str, Any], budget_tokens: int) -> dict[str, tuple[Callable, list]]:
    """Return the paths measured at one token budget: (step function, batches)."""
    model, data, device, base = ctx["model"], ctx["data"], ctx["device"], ctx["base"]
    ids, seed = data.train_ids, base.train.seed
    token = make_token_batches(ids, budget_tokens, seed=seed)
    fixed = make_fixed_shape_batches(ids, data.lengths, budget_tokens, seed=seed)
    pinned = device.type == "cuda"
    token_pinned = [b.pin_memory() if pinned else b for b in token[:16]]
    fixed_pinned = [b.pin_memory() if pinned else b for b in fixed[:16]]
    optimizer = make_optimizer(model, base.train)
    scheduler = make_scheduler(optimizer, base.train)
    eager = FastTrainer(model, base.train, compile=False)
    paths = {
        "reference step, token batches": (
            lambda b: train_step(model, b.to(device), optimizer, scheduler, base.train, 0),
            token[:16],
        ),  # fmt: skip
        "fast step eager, fixed shapes": (
            lambda b: eager.step(b.to(device, non_blocking=True)),
            fixed_pinned,
        ),  # fmt: skip
    }
    if ctx.get("compiled"):
        trainer = ctx["run"].trainer
        paths["fast step compiled, fixed shapes"] = (lambda b: trainer.step(b.to(device, non_blocking=True)), fixed_pinned)  # fmt: skip
        paths["fast step compiled, token batches"] = (lambda b: trainer.step(b.to(device, non_blocking=True)), token_pinned)  # fmt: skip
    return paths


def stage_sweep(args, ctx, recorder: Recorder, budget: Budget) -> dict[str, Any]:
    """Stage 2: steps per second of each path at several token budgets."""
    model, device, peak = ctx["model"].train(), ctx["device"], recorder.header["peak_bf16_dense_flops"]  # fmt: skip
    rows: list[dict[str, Any]] = []
    for budget_tokens in args.sweep_tokens:
        for path, (step, batches) in sweep_paths(ctx, budget_tokens).items():
            if budget.left() < args.reserve_seconds:
                break
            row = {"path": path, "max_tokens": budget_tokens}
            try:
                row |= time_steps(step, batches, args.sweep_warmup, args.sweep_steps, device)
                row["mfu"] = mfu(model.num_parameters(), row["tokens_per_second"], peak)
            except Exception as err:  # e.g. out of memory at the largest budget: go on
                row["error"] = f"{type(err).__name__}: {err}"[:500]
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
            recorder.write("sweep", {"rows": rows, "warmup": args.sweep_warmup, "steps": args.sweep_steps})  # fmt: skip
    best = max((r for r in rows if "mfu" in r), key=lambda r: r["tokens_per_second"], default=None)
    return {"best": best, "rows": len(rows)}


# ---------------------------------------------------------------- stage 3: decoding
def stage_decoding(args, ctx, recorder: Recorder, budget: Budget) -> dict[str, Any]:
    """Stage 3: greedy decoding with and without the cache, eager and as CUDA graphs.

    Float32 matrix products without TF32, as in the reference table (results/kv_cache_cuda.txt).
    """
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return _decoding_rows(args, ctx, recorder, budget)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _decoding_rows(args, ctx, recorder: Recorder, budget: Budget) -> dict[str, Any]:
    device = ctx["device"]
    graphs = device.type == "cuda"
    model = KV_CACHE.random_model(args.decode_preset, args.decode_vocab, str(device))
    rows: list[dict[str, Any]] = []
    for batch_size in args.decode_batch_sizes:
        src = KV_CACHE.make_sources(batch_size, 24, model.config.src_vocab_size, str(device))
        for length in args.decode_lengths:
            if budget.left() < args.reserve_seconds / 2:
                break
            row: dict[str, Any] = {"batch_size": batch_size, "tokens": length}
            try:
                methods = KV_CACHE.decoding_methods(model, src, length, static=True, graphs=graphs)
                result = KV_CACHE.measure(methods, args.decode_repeats, str(device))
            except Exception as err:  # graphs that would not capture: measure the rest
                if not graphs:
                    raise
                row["graph_error"], graphs = f"{type(err).__name__}: {err}"[:1000], False
                traceback.print_exc()
                methods = KV_CACHE.decoding_methods(model, src, length, static=True)
                result = KV_CACHE.measure(methods, args.decode_repeats, str(device))
            row |= {(f"{k} ms" if k in methods else k): (1e3 * v if k in methods else v) for k, v in result.items()}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            recorder.write("decoding", {"preset": args.decode_preset, "weights": "random, EOS suppressed", "source_length": 24, "repeats": args.decode_repeats, "rows": rows})  # fmt: skip
    headline = {}
    for row in rows:
        ratio = row.get("full/graph", row.get("full/static"))
        headline[f"B={row['batch_size']} L={row['tokens']}"] = {"full/cached": row["full/cached"], "full/static path": ratio, "full_graph/graph": row.get("full_graph/graph"), "same": row["same"]}  # fmt: skip
    return headline


# ---------------------------------------------------------------- stage 4: profile
def trace_summary(trace: dict[str, Any], top: int) -> dict[str, Any]:
    """Return the top kernels and the GPU's busy and idle shares of a Chrome trace.

    Busy time is the union of the kernels' intervals; the window runs from the first event to
    the last. Without kernels (a CPU run) the top CPU operators are listed instead.
    """
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    listed = kernels or [e for e in events if e.get("cat") == "cpu_op"]
    totals: dict[str, list[float]] = {}
    for e in listed:
        entry = totals.setdefault(e["name"], [0, 0.0])
        entry[0], entry[1] = entry[0] + 1, entry[1] + float(e["dur"])
    grand = sum(t for _, t in totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]
    rows = [{"name": n[:160], "calls": c, "ms": t / 1e3, "share": t / grand} for n, (c, t) in ranked]  # fmt: skip
    start = min((float(e["ts"]) for e in events), default=0.0)
    end = max((float(e["ts"]) + float(e["dur"]) for e in events), default=0.0)
    busy, reach = 0.0, -math.inf
    for s, d in sorted((float(e["ts"]), float(e["dur"])) for e in kernels):
        busy += max(0.0, s + d - max(s, reach))
        reach = max(reach, s + d)
    window = end - start
    return {
        "window_ms": window / 1e3,
        "kernels": len(kernels),
        "gpu_busy_ms": busy / 1e3 if kernels else None,
        "gpu_idle_share": 1.0 - busy / window if kernels and window > 0 else None,
        "top": rows,
        "top_is": "CUDA kernels" if kernels else "CPU operators (no GPU)",
    }


def profile(fn: Callable[[], Any], device: torch.device, top: int) -> tuple[dict, str]:
    """Profile one call of ``fn`` (after one warm-up call); return its summary and a table."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])  # fmt: skip
    with torch_profile(activities=activities) as prof:
        fn()
        sync(device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        summary = trace_summary(json.loads(path.read_text()), top)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return summary, prof.key_averages().table(sort_by=sort, row_limit=top)


def profile_targets(args, ctx) -> dict[str, Callable[[], Any]]:
    """The calls profiled: a few reference and fast training steps, two ways of decoding."""
    model, device, base = ctx["model"], ctx["device"], ctx["base"]
    paths = sweep_paths(ctx, base.max_tokens)
    fast_key = "fast step compiled, fixed shapes" if ctx.get("compiled") else "fast step eager, fixed shapes"  # fmt: skip
    if ctx["preset"].max_tokens != base.max_tokens:
        fast = sweep_paths(ctx, ctx["preset"].max_tokens)[fast_key]
    else:
        fast = paths[fast_key]
    n = args.profile_steps
    decoder_model = KV_CACHE.random_model(args.decode_preset, args.decode_vocab, str(device))
    src = KV_CACHE.make_sources(32, 24, decoder_model.config.src_vocab_size, str(device))
    static = StaticDecoder(decoder_model, graphs=device.type == "cuda", pad_to=1)
    length = args.decode_lengths[min(2, len(args.decode_lengths) - 1)]

    def steps(step: Callable, batches: list) -> Callable[[], None]:
        return lambda: [step(batches[i % len(batches)]) for i in range(n)]

    model.train()
    fast_name = fast_key.removesuffix(", fixed shapes").replace(" step", "")
    graphs = " as CUDA graphs" if device.type == "cuda" else ""
    return {
        f"train: {n} reference steps (token budget {base.max_tokens})": steps(*paths["reference step, token batches"]),
        f"train: {n} {fast_name} steps (token budget {ctx['preset'].max_tokens})": steps(*fast),
        f"decode: greedy, growing cache, B=32, {length} tokens": lambda: KV_CACHE.greedy_decode(decoder_model, src, max_len=length),
        f"decode: greedy, static cache{graphs}, B=32, {length} tokens": lambda: static.greedy(src, max_len=length),
    }  # fmt: skip


def stage_profile(args, ctx, recorder: Recorder, budget: Budget) -> dict[str, Any]:
    """Stage 4: torch.profiler summaries of training steps and decoding, old and new."""
    summaries: dict[str, Any] = {}
    tables = []
    for name, fn in profile_targets(args, ctx).items():
        if budget.left() < 10:
            break
        try:
            summary, table = profile(fn, ctx["device"], args.profile_top)
        except Exception as err:  # one that fails must not hide the others
            summary, table = {"error": f"{type(err).__name__}: {err}"[:1000], "gpu_idle_share": None}, str(err)  # fmt: skip
            traceback.print_exc()
        summaries[name] = summary
        tables.append(f"## {name}\n\n{table}\n")
        recorder.write("profile", {"profiles": summaries})
        peak = recorder.header["peak_bf16_dense_flops"]
        text = f"device: {recorder.header['device']} (peak dense bf16 FLOP/s: {peak})\n\n" + "\n".join(tables)  # fmt: skip
        atomic_write_text(recorder.out / "speed_profile.txt", text)
    return {name: s["gpu_idle_share"] for name, s in summaries.items()}


# ---------------------------------------------------------------- the run
STAGES = {"train": (stage_train, 120), "sweep": (stage_sweep, 30), "decoding": (stage_decoding, 20), "profile": (stage_profile, 15)}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="a tiny model, every stage, on the CPU")
    p.add_argument("--out", default=str(REPO / "results" / "speed"), help="folder for the results")
    p.add_argument("--data-root", default=None, help="folder holding multi30k/")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--budget-seconds", type=float, default=480.0, help="the whole run's limit")
    p.add_argument("--reserve-seconds", type=float, default=60.0, help="kept for later stages")
    p.add_argument("--factor", type=float, default=4.0, help="token budget x this (lr x sqrt)")
    p.add_argument("--buckets", type=int, default=6, help="padded lengths of the fixed shapes")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager fast path")
    p.add_argument("--static-shapes", dest="dynamic", action="store_false",
                   help="compile one graph per shape (default: one graph with dynamic shapes)")  # fmt: skip
    p.add_argument("--compile-backend", default="inductor",
                   help='torch.compile backend ("eager": trace only, no code generation)')  # fmt: skip
    p.add_argument("--train-seconds", type=float, default=200.0, help="training time limit")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--test-limit", type=int, default=None, help="score only the first n sentences")
    p.add_argument("--sweep-tokens", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    p.add_argument("--sweep-warmup", type=int, default=3)
    p.add_argument("--sweep-steps", type=int, default=10)
    p.add_argument("--decode-preset", default="gpu-base")
    p.add_argument("--decode-vocab", type=int, default=None, help="default: the preset's")
    p.add_argument("--decode-batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--decode-lengths", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--decode-repeats", type=int, default=3)
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--profile-top", type=int, default=12)
    args = p.parse_args(argv)
    if args.smoke:  # the same stages at a size a CPU runs in seconds
        # Compilation is traced by dynamo but not code-generated: inductor on a CPU takes
        # minutes (tests/test_fast_training.py checks the compiled step itself).
        args.factor, args.buckets, args.train_seconds, args.test_limit = 2.0, 1, 60.0, 20
        args.compile_backend, args.decode_vocab = "eager", 300
        args.sweep_tokens, args.sweep_warmup, args.sweep_steps = [1200], 1, 2
        args.decode_preset, args.decode_batch_sizes, args.decode_lengths = "cpu-smoke", [1, 2], [4]  # fmt: skip
        args.decode_repeats, args.profile_steps, args.reserve_seconds = 1, 2, 5.0
    return args


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """Return each of the targets with the measured value and whether it was met."""
    train, decoding = results.get("train") or {}, results.get("decoding") or {}
    longest = decoding.get("B=1 L=128") or {}
    checks = {
        "MFU >= 0.30 on gpu-base (after the first epoch)": (train.get("mfu_after_first_epoch"), 0.30),
        "test2016 cased BLEU (beam) >= 42": (train.get("test2016_beam"), 42.0),
        "cached decoding >= 3x full recomputation, B=1, 128 tokens": (longest.get("full/static path"), 3.0),
    }  # fmt: skip
    out = {name: {"value": v, "met": v is not None and v >= bound} for name, (v, bound) in checks.items()}  # fmt: skip
    seconds = train.get("seconds_to_trained_model")
    fast = seconds is not None and seconds <= 60 and out["test2016 cased BLEU (beam) >= 42"]["met"]
    out["trained to >= 42 BLEU (beam) in <= 60 s"] = {"value": seconds, "met": fast}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    budget = Budget(args.budget_seconds)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device("cpu") if args.smoke else pick_device()
    if not args.smoke and device.type != "cuda":
        print("warning: no CUDA device; this measures the CPU (use --smoke to test the path)")
    recorder = Recorder(Path(args.out), device_header(device, args.smoke))
    print(json.dumps(recorder.header), flush=True)
    ctx: dict[str, Any] = {"device": device, "base": GPU_RUN.SMOKE if args.smoke else get_preset("gpu-base")}  # fmt: skip
    for name in args.stages:
        stage, needs = STAGES[name]
        if name != "train" and "model" not in ctx and name != "decoding":
            recorder.summary["stages"][name] = {"status": "skipped: needs the train stage", "seconds": 0.0}  # fmt: skip
            continue
        recorder.stage(name, lambda s=stage: s(args, ctx, recorder, budget), needs if not args.smoke else 0, budget)  # fmt: skip
    recorder.summary["targets"] = targets(recorder.summary["results"])
    recorder.summary["wall_seconds"] = round(budget.used(), 1)
    recorder.save_summary()
    return recorder.summary


if __name__ == "__main__":
    main()
