"""Tests for the Multi30k recipe: presets, data pipeline, training run, resume, scoring."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tfx_course.cli import build_parser
from tfx_course.data.batching import Seq2SeqBatch
from tfx_course.data.multi30k import load_multi30k
from tfx_course.model import ModelConfig, Transformer
from tfx_course.pretrained import (
    SUBSET_SIZE,
    course_checkpoint_dir,
    export_course_checkpoint,
    export_model,
    gpu_results_summary,
    load_course_model,
    load_model,
    model_from_training_checkpoint,
    score_test2016,
)
from tfx_course.training import TrainConfig, load_checkpoint
from tfx_course.translation import (
    PRESETS,
    Preset,
    build_model,
    get_preset,
    prepare_data,
    train_translation,
)

REPO = Path(__file__).resolve().parents[1]


def _tiny(max_len: int = 64, max_steps: int = 6, **changes) -> Preset:
    """A preset that trains in about a second: 120 sentence pairs, d_model 16."""
    model = ModelConfig(
        300,
        300,
        d_model=16,
        n_heads=4,
        n_encoder_layers=1,
        n_decoder_layers=1,
        d_ff=32,
        dropout=0.1,  # dropout on: resuming must restore the random state too
        max_len=max_len,
        tie_embeddings=True,
        fused_attention=True,
    )
    train = TrainConfig(
        lr=3e-3, max_steps=max_steps, warmup_steps=2, schedule="cosine", checkpoint_every=2
    )
    options = dict(
        max_tokens=400, max_train_pairs=120, max_val_pairs=20, bleu_sentences=4, decode_max_len=8
    )
    return Preset("test-tiny", "tests", model, train, **{**options, **changes})  # fmt: skip


def test_presets_build_valid_models_of_the_promised_size():
    for name, preset in PRESETS.items():
        assert get_preset(name) is preset and preset.name == name
        assert preset.model.tie_embeddings and preset.vocab_size == preset.model.src_vocab_size
    course = PRESETS["cpu-course"]
    assert course.model == ModelConfig.course(6000, 6000)
    assert PRESETS["gpu-base"].model == ModelConfig.base(8000, 8000)
    model = Transformer(course.model)
    assert 2 * model.num_parameters() <= 20e6  # half precision, tied matrix stored once
    with pytest.raises(ValueError, match="unknown preset 'gpu'"):
        get_preset("gpu")
    with pytest.raises(ValueError, match="max_tokens=10 must be at least max_len"):
        _tiny(max_tokens=10)
    with pytest.raises(ValueError, match="bleu_sentences must be a positive integer"):
        _tiny(bleu_sentences=0)


def test_the_shipped_course_model_is_the_course_preset():
    model, _ = load_course_model()
    assert model.config == PRESETS["cpu-course"].model
    recipe = json.loads((course_checkpoint_dir() / "recipe.json").read_text())
    assert recipe["run"]["preset"]["name"] == "cpu-course"


def test_build_model_fits_the_trained_vocabulary():
    preset = _tiny()
    model = build_model(preset, 257, seed=3)
    assert model.config == dataclasses.replace(preset.model, src_vocab_size=257, tgt_vocab_size=257)
    again = build_model(preset, 257, seed=3)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True)
    )


def test_prepare_data_shares_one_tokenizer_and_respects_the_token_budget(data_root):
    preset = _tiny()
    data = prepare_data(preset, data_root)
    assert len(data.val_pairs) == 4
    train = load_multi30k("train", data_root)[:120]
    fits = [
        len(data.tokenizer.encode(de)) <= 64 and len(data.tokenizer.encode(en)) <= 65
        for de, en in train
    ]
    assert 100 < sum(fits) < 120  # a few long pairs are dropped at max_len=64
    assert data.n_train_pairs == sum(fits) == sum(len(b) for b in data.train_batches)
    for batch in data.train_batches:
        assert batch.src.numel() <= preset.max_tokens and batch.tgt_in.numel() <= preset.max_tokens
        assert bool((batch.tgt_in[:, 0] == data.tokenizer.bos_id).all())
    german = data.tokenizer.encode("Ein Mann", add_special=False)
    assert data.tokenizer.decode(german) == "Ein Mann"  # one vocabulary for both languages


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, data_root):
    preset = _tiny()
    straight = train_translation(preset, tmp_path / "a", data_root=data_root, progress=False)
    part = train_translation(
        preset, tmp_path / "b", data_root=data_root, progress=False, stop_after=3
    )
    assert part["steps"] == 3 and not part["finished"]
    rest = train_translation(
        preset, tmp_path / "b", data_root=data_root, progress=False, resume=True
    )
    assert rest["finished"] and rest["steps"] == straight["steps"] == 6
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")  # fmt: skip
    for name, tensor in a.model_state.items():
        assert torch.equal(tensor, b.model_state[name]), name
    assert a.history["loss"] == b.history["loss"] and a.history["lr"] == b.history["lr"]
    assert a.history["val_metrics"]["bleu"] == b.history["val_metrics"]["bleu"]
    for name in ("tokenizer.json", "history.json", "run.json"):
        assert (tmp_path / "b" / name).is_file(), name
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert history["step"] == list(range(1, 7)) and history["train_tokens"] > 0


def test_export_keeps_ties_halves_the_size_and_reloads_with_weights_only(tmp_path, data_root):
    train_translation(_tiny(max_steps=2), tmp_path, data_root=data_root, progress=False)
    model = model_from_training_checkpoint(tmp_path / "checkpoint.pt")
    path = export_model(model, tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["dtype"] == "float16"
    weights = payload["state_dict"]
    assert all(t.dtype == torch.float16 for t in weights.values() if t.is_floating_point())
    tied = weights["lm_head.weight"].untyped_storage().data_ptr()
    assert tied == weights["decoder.embed.embedding.weight"].untyped_storage().data_ptr()
    loaded = load_model(path)
    assert not loaded.training
    src = torch.tensor([[1, 5, 6, 2]])
    tgt = torch.tensor([[1, 7]])
    rounded = Transformer(model.config).eval()  # the same rounding, applied independently
    rounded.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    expected = rounded(src, tgt)
    assert torch.allclose(loaded(src, tgt), expected, atol=1e-5)


def test_cli_train_parses_its_options():
    args = build_parser().parse_args(
        ["train", "--preset", "cpu-smoke", "--out", "runs/x", "--resume", "--max-minutes", "5"]
    )
    assert args.preset == "cpu-smoke" and args.resume and args.max_minutes == 5.0
    assert args.func.__name__ == "_train"


def test_gpu_script_smoke_path_writes_its_results(tmp_path, data_root, monkeypatch, load_script):
    gpu_run = load_script("tools/gpu/gpu_run.py")
    out = tmp_path / "results"
    argv = ["--smoke", "--out", str(out), "--run-dir", str(tmp_path / "run")]
    # A bare GPU machine has no matplotlib: the run must still finish, then --replot draws.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "tfx_course.viz", raising=False)
    monkeypatch.setenv("TFX_COURSE_COMMIT", "abc123")
    results = gpu_run.main([*argv, "--data-root", str(data_root), "--budget-minutes", "5"])
    saved = json.loads((out / "gpu_base_smoke.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["steps"] == 4 and saved["test2016_greedy"]["sentences"] == 20
    assert saved["test2016_greedy"]["signature"].startswith("nrefs:1|case:mixed")
    assert saved["test2016_greedy"]["decoder"] == "greedy"
    assert saved["test2016_beam"]["decoder"] == "beam 5"
    assert saved["mfu"] is None and saved["target_tokens_per_second"] > 0  # no peak for a CPU
    assert saved["git_commit"] == "abc123"
    plan = saved["plan"]  # 5 minutes is far more than 4 tiny steps need: the preset's 4 stay
    assert plan["max_steps"] == 4 and plan["seconds_per_step"] > 0
    assert not (out / "gpu_base_smoke_curves.png").exists()
    monkeypatch.undo()
    gpu_run.main(["--replot", str(out / "gpu_base_smoke_history.json")])
    assert (out / "gpu_base_smoke_curves.png").stat().st_size > 1000
    summary = gpu_results_summary(out / "gpu_base_smoke.json").splitlines()
    assert summary[1].endswith(f"{saved['parameters']:,}") and "schedule finished" in summary[2]
    for line, key in zip(summary[4:6], ("test2016_greedy", "test2016_beam"), strict=True):
        score = saved[key]
        assert line.startswith(f"test2016 {score['decoder']}")
        assert f"{score['bleu']:.2f} cased, {score['bleu_lowercase']:.2f} lower-cased" in line
    assert summary[-1].endswith(saved["test2016_beam"]["signature"])
    saved["test2016_beam"] = None  # a run stopped while beam search was scoring
    (out / "partial.json").write_text(json.dumps(saved))
    partial = gpu_results_summary(out / "partial.json")
    assert "test2016 greedy" in partial and "beam" not in partial
    assert gpu_results_summary(out / "absent.json") is None
    assert gpu_run.peak_flops("NVIDIA H100 80GB HBM3") == ("H100 SXM", 989e12)
    assert gpu_run.peak_flops("NVIDIA H100 PCIe")[0] == "H100 PCIe"


def test_gpu_script_resumes_with_the_schedule_it_planned(tmp_path, data_root, load_script):
    gpu_run = load_script("tools/gpu/gpu_run.py")
    argv = ["--smoke", "--out", str(tmp_path / "results"), "--run-dir", str(tmp_path / "run")]
    argv += ["--data-root", str(data_root)]
    # A budget far too small for the preset's 4 steps: the plan cuts the schedule to 1 step.
    first = gpu_run.main([*argv, "--budget-minutes", "0.0001"])
    assert first["plan"]["max_steps"] == 1 < first["plan"]["preset_max_steps"]
    assert first["steps"] == 1 and first["finished_schedule"]
    # Resuming must use the planned schedule, not the preset's (else the configs disagree).
    again = gpu_run.main([*argv, "--resume"])
    assert again["plan"] == first["plan"] and again["steps"] == 1 and again["finished_schedule"]


def test_gpu_machine_script_runs_each_preset_and_stays_within_eight_files(tmp_path, data_root):
    out = tmp_path / "out"
    env = {**os.environ, "TFX_COURSE_DATA": str(data_root), "PRESETS": "gpu-base gpu-small"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    done = subprocess.run(
        ["bash", str(REPO / "tools" / "gpu" / "gpu_machine.sh"), "0.05", str(out), "--smoke", "--run-dir", str(tmp_path / "run")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"machine.txt", "log.txt", "gpu_base_smoke.json"} <= set(files)
    log = (out / "log.txt").read_text()
    assert log.count("test2016 beam BLEU") == 2 and "== gpu-base" in log and "== gpu-small" in log
    assert "python " in (out / "machine.txt").read_text()
    assert json.loads((out / "gpu_base_smoke.json").read_text())["plan"]["budget_seconds"] == 3.0
    whole = tmp_path / "whole"  # budget 0: the preset's whole schedule, no plan
    done = subprocess.run(
        ["bash", str(REPO / "tools" / "gpu" / "gpu_machine.sh"), "0", str(whole), "--smoke", "--run-dir", str(tmp_path / "run0")],
        cwd=REPO, env={**env, "PRESETS": "gpu-base"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    saved = json.loads((whole / "gpu_base_smoke.json").read_text())
    assert saved["plan"] is None and saved["steps"] == 4 and saved["finished_schedule"]
    missing = subprocess.run(
        ["bash", str(REPO / "tools" / "gpu" / "gpu_machine.sh"), "1", str(out)],
        cwd=REPO, env={**env, "TFX_COURSE_DATA": str(tmp_path / "nothing")}, capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode == 2 and "no Multi30k in" in missing.stderr


@pytest.mark.parametrize(
    ("budget", "per_step", "per_validation", "eval_every"),
    [(100.0, 0.1, 10.0, 100), (420.0, 0.05, 3.0, 325), (60.0, 0.2, 1.0, 20), (5.0, 1.0, 10.0, 50)],
)
def test_gpu_plan_fills_the_budget_without_passing_it(
    budget, per_step, per_validation, eval_every, load_script
):
    steps_within = load_script("tools/gpu/gpu_run.py").steps_within

    def cost(n: int) -> float:
        return n * per_step + (n / eval_every + 1) * per_validation

    steps = steps_within(budget, per_step, per_validation, eval_every, max_steps=10**9)
    assert steps == 1 or cost(steps) <= budget + 1e-9  # at least one step, even over budget
    assert cost(steps + 1) > budget
    assert steps_within(budget, per_step, per_validation, eval_every, max_steps=3) == min(3, steps)


def test_gpu_plan_times_steps_after_the_slow_first_pass(data_root, monkeypatch, load_script):
    gpu_run = load_script("tools/gpu/gpu_run.py")
    data = gpu_run.prepare_data(gpu_run.SMOKE, data_root)
    seen: set[int] = set()

    def step(model, batch, *args):  # like the GPU: a batch's first step is slow, later ones fast
        time.sleep(0.002 if id(batch) in seen else 0.03)
        seen.add(id(batch))

    monkeypatch.setattr(gpu_run, "train_step", step)
    monkeypatch.setattr(Seq2SeqBatch, "to", lambda self, device: self)
    n = len(data.train_batches)
    plan = gpu_run.plan_steps(gpu_run.SMOKE, 100.0, torch.device("cpu"), data)
    assert plan["seconds_per_step"] < 0.01  # timed on batches already seen
    assert plan["seconds_first_pass_extra"] >= n * 0.02  # the slow first pass, charged once
    assert plan["steps_per_epoch"] == n and plan["max_steps"] == gpu_run.SMOKE.train.max_steps


def test_export_course_checkpoint_scores_the_shipped_weights(tmp_path, data_root):
    preset = _tiny(max_len=128, max_steps=2)
    train_translation(preset, tmp_path / "run", data_root=data_root, progress=False)
    dest = tmp_path / "course"
    results = export_course_checkpoint(tmp_path / "run", dest, {"command": "x"}, root=data_root)
    assert results["test2016_greedy"]["sentences"] == 1000
    assert results["test2016_subset_greedy"]["sentences"] == SUBSET_SIZE
    recipe = json.loads((dest / "recipe.json").read_text())
    assert recipe["command"] == "x" and recipe["run"]["steps"] == 2
    model, tokenizer = load_course_model(dest)
    again = score_test2016(model, tokenizer, limit=SUBSET_SIZE, root=data_root, max_len=8)
    assert again["bleu"] == pytest.approx(results["test2016_subset_greedy"]["bleu"])
    with pytest.raises(FileNotFoundError, match="model.pt, tokenizer.json not found"):
        load_course_model(tmp_path)


def test_published_gpu_result_is_the_current_gpu_base_and_is_cited_as_measured():
    results = json.loads((REPO / "results" / "gpu_base.json").read_text())
    preset = get_preset("gpu-base")
    recorded = results["preset"]
    # The run is the preset as it stands (only the wording of its description may change). It
    # was recorded before presets held a ModelConfig: its model sizes sit at the top level.
    model_fields = ("d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "d_ff", "dropout", "max_len")  # fmt: skip
    assert {k: recorded[k] for k in model_fields} == {k: getattr(preset.model, k) for k in model_fields}  # fmt: skip
    assert recorded["vocab_size"] == preset.vocab_size
    assert recorded["train"] == json.loads(json.dumps(preset.to_dict()["train"]))
    now = {k: v for k, v in preset.to_dict().items() if k not in ("model", "train", "description")}
    assert now == {k: recorded[k] for k in now}
    model = build_model(preset, preset.vocab_size, seed=0)
    assert results["parameters"] == sum(p.numel() for p in model.parameters())
    assert results["finished_schedule"] and results["steps"] == preset.train.max_steps
    beam, greedy = results["test2016_beam"], results["test2016_greedy"]
    assert beam["sentences"] == greedy["sentences"] == 1000
    assert beam["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    history = json.loads((REPO / "results" / "gpu_base_history.json").read_text())
    assert len(history["step"]) == results["steps"]
    assert round(history["train_seconds"], 1) == results["train_seconds"]
    readme = (REPO / "README.md").read_text()
    lesson = (REPO / "notebooks" / "09_training.ipynb").read_text()
    minutes = f"{results['train_seconds'] / 60:.1f} min"
    for score in (f"{beam['bleu']:.2f}", f"{greedy['bleu']:.2f}"):
        assert f"**{score}**" in readme and f"**{score}**" in lesson
    assert minutes in readme and minutes.replace("min", "minutes") in lesson
