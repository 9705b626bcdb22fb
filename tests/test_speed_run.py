"""Tests for the side-by-side GPU speed run (tools/gpu/speed_run.py), on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FILES = ["speed_summary.json", "speed_train.json", "speed_history.json", "speed_sweep.json",
         "speed_decoding.json", "speed_profile.json", "speed_profile.txt"]  # fmt: skip
HEADER = ("device", "device_model", "peak_bf16_dense_flops", "torch", "git_commit", "smoke")


@pytest.fixture(scope="module")
def speed_run(load_script):
    return load_script("tools/gpu/speed_run.py")


def test_smoke_run_writes_every_result_file_well_formed(
    tmp_path, data_root, speed_run, monkeypatch
):
    monkeypatch.setenv("TFX_COURSE_COMMIT", "abc123")
    out = tmp_path / "speed"
    summary = speed_run.main(["--smoke", "--out", str(out), "--data-root", str(data_root)])
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)  # no temporary files left
    saved = {name: json.loads((out / name).read_text()) for name in FILES if name.endswith(".json")}
    assert saved["speed_summary.json"] == json.loads(json.dumps(summary))
    for name, content in saved.items():
        if name != "speed_history.json":
            assert all(key in content for key in HEADER), name
            assert content["device"].startswith("CPU") and content["git_commit"] == "abc123"
    stages = saved["speed_summary.json"]["stages"]
    assert list(stages) == ["train", "sweep", "decoding", "profile"]
    assert all(stage["status"] == "ok" for stage in stages.values()), stages

    train = saved["speed_train.json"]
    assert train["compiled"] and train["finished_schedule"] and train["steps"] == 2
    assert train["recipe"]["max_tokens"] == 1200 and train["target_tokens_per_second"] > 0
    assert train["mfu"] is None  # no peak for a CPU
    scores = train["test2016"]
    for key in ("greedy, static", "greedy, eager", "beam 5, static", "beam 5, eager"):
        assert scores[key]["sentences"] == 20 and scores[key]["signature"].startswith("nrefs:1|case:mixed")  # fmt: skip
    assert scores["greedy: identical outputs static vs eager"] == "20 of 20"
    assert scores["beam 5: identical outputs static vs eager"] == "20 of 20"
    history = saved["speed_history.json"]
    assert history["step"] == [1, 2] and len(history["loss"]) == 2

    paths = [row["path"] for row in saved["speed_sweep.json"]["rows"]]
    assert paths == ["reference step, token batches", "fast step eager, fixed shapes",
                     "fast step compiled, fixed shapes", "fast step compiled, token batches"]  # fmt: skip
    assert all(row["tokens_per_second"] > 0 and "error" not in row for row in saved["speed_sweep.json"]["rows"])  # fmt: skip
    rows = saved["speed_decoding.json"]["rows"]
    assert [(r["batch_size"], r["tokens"]) for r in rows] == [(1, 4), (2, 4)]
    assert all(r["same"] and r["full/cached"] > 0 and r["static ms"] > 0 for r in rows)
    profiles = saved["speed_profile.json"]["profiles"]
    assert len(profiles) == 4 and all(p["top"] and p["gpu_idle_share"] is None for p in profiles.values())  # fmt: skip
    text = (out / "speed_profile.txt").read_text()
    assert all(f"## {name}" in text for name in profiles)
    targets = saved["speed_summary.json"]["targets"]
    assert len(targets) == 4 and not any(t["met"] for t in targets.values())  # a CPU meets none


def test_trace_summary_counts_busy_time_as_the_union_of_kernels(speed_run):
    def event(cat, name, ts, dur):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}

    trace = {"traceEvents": [
        event("cpu_op", "aten::mm", 0, 100),
        event("kernel", "gemm", 10, 20),  # 10-30
        event("kernel", "gemm", 20, 20),  # 20-40: overlaps, union 10-40
        event("kernel", "softmax", 60, 10),  # 60-70
        event("kernel", "gemm", 90, 10),  # 90-100
        {"ph": "i", "cat": "marker", "name": "x", "ts": 500},  # instant events do not count
    ]}  # fmt: skip
    summary = speed_run.trace_summary(trace, top=5)
    assert summary["window_ms"] == pytest.approx(0.1) and summary["kernels"] == 4
    assert summary["gpu_busy_ms"] == pytest.approx(0.05)  # 30 + 10 + 10 microseconds
    assert summary["gpu_idle_share"] == pytest.approx(0.5)
    assert [(r["name"], r["calls"]) for r in summary["top"]] == [("gemm", 3), ("softmax", 1)]
    assert summary["top"][0]["share"] == pytest.approx(50 / 60)
    cpu_only = speed_run.trace_summary({"traceEvents": [event("cpu_op", "aten::mm", 0, 5)]}, 5)
    assert cpu_only["gpu_idle_share"] is None and cpu_only["top"][0]["name"] == "aten::mm"


def test_targets_compare_each_measurement_with_its_bound(speed_run):
    results = {
        "train": {"mfu_after_first_epoch": 0.31, "test2016_beam": 42.5, "seconds_to_trained_model": 75.0},
        "decoding": {"B=1 L=128": {"full/static path": 2.5}},
    }  # fmt: skip
    met = {name: t["met"] for name, t in speed_run.targets(results).items()}
    assert met == {
        "MFU >= 0.30 on gpu-base (after the first epoch)": True,
        "test2016 cased BLEU (beam) >= 42": True,
        "cached decoding >= 3x full recomputation, B=1, 128 tokens": False,
        "trained to >= 42 BLEU (beam) in <= 60 s": False,
    }
    assert not any(t["met"] for t in speed_run.targets({}).values())


def test_peak_table_names_the_h200(speed_run):
    assert speed_run.GPU_RUN.peak_flops("NVIDIA H200") == ("H200", 989e12)
    assert speed_run.GPU_RUN.peak_flops("NVIDIA H200 NVL") == ("H200 NVL", 835e12)
    assert speed_run.mfu(1_000_000, 1e6, 6e12) == pytest.approx(1.0)
    assert speed_run.mfu(1, 1.0, None) is None


def test_static_decoding_methods_of_the_benchmark_agree_on_the_cpu(load_script):
    kv_cache = load_script("benchmarks/kv_cache.py")
    model = kv_cache.random_model("cpu-smoke", 300, "cpu")
    src = kv_cache.make_sources(3, 10, 300, "cpu")
    methods = kv_cache.decoding_methods(model, src, 6, static=True)
    assert list(methods) == ["full", "last", "cached", "static"]
    result = kv_cache.measure(methods, repeats=1, device="cpu")
    assert result["same"] and result["full/static"] > 0 and result["cached/static"] > 0
    # the graph's step, run eagerly: full recomputation on a fixed-width padded prefix
    with torch.no_grad():
        full = kv_cache.FullRecomputeGraph(model, src, 6, graphs=False)()
    assert torch.equal(full, methods["cached"]())


def test_machine_script_runs_the_speed_run_and_keeps_its_log(tmp_path, data_root):
    out = tmp_path / "out"
    env = {**os.environ, "TFX_COURSE_DATA": str(data_root), "TFX_COURSE_COMMIT": "abc123"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    done = subprocess.run(
        ["bash", str(REPO / "tools" / "gpu" / "speed_machine.sh"), str(out), "--smoke", "--stages", "decoding"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "C compiler" in (out / "machine.txt").read_text()
    assert "== decoding: ok" in (out / "log.txt").read_text()
    summary = json.loads((out / "speed_summary.json").read_text())
    assert summary["stages"]["decoding"]["status"] == "ok" and summary["git_commit"] == "abc123"
    missing = subprocess.run(
        ["bash", str(REPO / "tools" / "gpu" / "speed_machine.sh"), str(out)],
        cwd=REPO, env={**env, "TFX_COURSE_DATA": str(tmp_path)}, capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode == 2 and "no Multi30k" in missing.stderr
