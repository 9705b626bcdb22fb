"""The run-history diagnosis (tfx_course.diagnosis): synthetic histories, real short runs, probes."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import tfx_course as tfx
from tfx_course.cli import main
from tfx_course.diagnosis import diagnose, overfitting_start, padding_changes_output, smooth
from tfx_course.training import History, TrainConfig, fit


def _history(loss, val=(), every=10, lr=1e-3, diverged_at=None) -> History:
    h = History()
    for i, value in enumerate(loss, start=1):
        h.record(i, value, lr, 1.0)
    for j, value in enumerate(val, start=1):
        h.record_validation(j * every, value)
    h.diverged_at = diverged_at
    return h


def _falling(n, start=4.0, end=1.0):
    return [start * (end / start) ** (i / (n - 1)) for i in range(n)]


# --- synthetic histories: one per symptom ------------------------------------------------------


def test_a_nan_loss_is_diagnosed_as_diverged_with_its_step():
    found = diagnose(_history([4.0, 3.5, 3.2, float("nan")], diverged_at=4, lr=0.5))
    assert found.symptom == "diverged" and found.evidence["step"] == 4
    assert "step 4" in found.message and "65,504" in found.message


def test_an_infinite_validation_loss_is_diverged_too():
    found = diagnose(_history(_falling(40), val=[3.0, 2.0, math.inf], every=10))
    assert found.symptom == "diverged" and found.evidence["step"] == 30


def test_an_early_jump_then_a_stall_is_unstable():
    loss = [3.8, 4.2, 4.0] + [3.2] * 97  # up in the first steps, then stuck 16% below the start
    found = diagnose(_history(loss, lr=0.03))
    assert found.symptom == "unstable" and "warmup" in found.message
    assert found.evidence["early_rise"] == pytest.approx(4.2 / 3.8 - 1)


def test_a_late_spike_is_unstable():
    loss = _falling(100, 4.0, 1.0) + [3.0] * 20  # fell well, then blew up
    found = diagnose(_history(loss))
    assert found.symptom == "unstable" and found.evidence["spike"] > 1.0


def test_a_loss_that_hardly_moves_is_a_plateau_naming_the_learning_rate():
    found = diagnose(_history(_falling(100, 3.8, 3.7), lr=1e-6))
    assert found.symptom == "plateau" and "1e-06" in found.message


def test_validation_rising_while_training_falls_is_overfitting():
    h = _history(_falling(200, 4.0, 0.2), val=[3.0, 2.5, 2.3, 2.6, 2.9, 3.3], every=30)
    found = diagnose(h)
    assert found.symptom == "overfitting" and found.evidence["best_step"] == 90
    assert overfitting_start(h) == 90


def test_a_falling_loss_with_falling_validation_is_healthy():
    found = diagnose(_history(_falling(200), val=[3.0, 2.0, 1.5, 1.4], every=50))
    assert found.symptom == "healthy" and "did not turn up" in found.message


def test_the_order_of_the_rules_puts_divergence_first():
    loss = [3.8, 4.2] + [3.2] * 20 + [float("inf")]
    assert diagnose(_history(loss)).symptom == "diverged"


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="at least 10"):
        diagnose(_history([3.0, 2.0]))
    with pytest.raises(TypeError, match="History"):
        diagnose([1.0, 2.0])
    with pytest.raises(ValueError, match="not a training history"):
        diagnose({"loss": [1.0], "oops": 1})


def test_smooth_is_a_trailing_mean():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


# --- real short runs of a tiny model ---------------------------------------------------------


@pytest.fixture(scope="module")
def reversal():
    tok = tfx.data.tokenizer_for("reversal")
    batches = lambda n, seed, size: tfx.data.make_batches(  # noqa: E731
        tfx.data.make_pairs("reversal", n, seed=seed, max_len=6), tok, tok, size, seed=0
    )
    return tok, batches(1024, 0, 32), batches(128, 1, 128), batches(64, 0, 16)


def _model(tok, norm_first=True):
    torch.manual_seed(0)
    config = tfx.model.ModelConfig(tok.vocab_size, tok.vocab_size, d_model=16, n_heads=2,
                                   n_encoder_layers=2, n_decoder_layers=2, d_ff=32, dropout=0.0,
                                   max_len=16, norm_first=norm_first)  # fmt: skip
    return tfx.model.Transformer(config)


BASE = TrainConfig(lr=1e-2, max_steps=60, warmup_steps=10, schedule="cosine",
                   label_smoothing=0.0, weight_decay=0.0, clip_norm=None)  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "symptom"),
    [({}, "healthy"), ({"lr": 0.3, "warmup_steps": 0}, "unstable"), ({"lr": 1e-6}, "plateau")],
    ids=["healthy", "unstable", "plateau"],
)
def test_real_runs_show_their_symptom(one_thread, reversal, changes, symptom):
    tok, train, _, _ = reversal
    history = fit(_model(tok), train, dataclasses.replace(BASE, **changes), progress=False)
    assert diagnose(history).symptom == symptom


def test_a_real_run_on_a_tiny_subset_overfits(one_thread, reversal):
    tok, _, val, tiny = reversal
    config = dataclasses.replace(BASE, max_steps=120, eval_every=10)
    history = fit(_model(tok), tiny, config, val, progress=False)
    assert diagnose(history).symptom == "overfitting"


def test_a_real_float16_run_diverges(one_thread, reversal):
    tok, train, _, _ = reversal
    history = fit(
        _model(tok).half(), train, dataclasses.replace(BASE, max_steps=20), progress=False
    )
    found = diagnose(history)
    assert history.diverged_at is not None and found.symptom == "diverged"


# --- the probes and the command ----------------------------------------------------------------


def test_padding_probe_tells_a_masked_model_from_a_broken_one(one_thread, reversal):
    tok, train, _, _ = reversal
    model = _model(tok)
    batch = train[0]
    assert padding_changes_output(model, batch.src, batch.tgt_in) < 1e-5
    broken = tfx.model.Transformer(dataclasses.replace(model.config, pad_id=3))  # masks <unk>
    broken.load_state_dict(model.state_dict())
    assert padding_changes_output(broken, batch.src, batch.tgt_in) > 1e-3


def test_tokenizer_probe_counts_texts_encoded_differently():
    texts = ["ein Hund", "zwei Katzen", "ein Hund läuft"]
    a = tfx.data.train_subword_tokenizer(texts * 3, 40)
    b = tfx.data.train_subword_tokenizer(["zwei Katzen laufen"] * 5, 40)
    assert tfx.diagnosis.tokenizer_mismatch(a, a, texts) == 0.0
    assert tfx.diagnosis.tokenizer_mismatch(a, b, texts) > 0.5
    with pytest.raises(ValueError, match="at least one text"):
        tfx.diagnosis.tokenizer_mismatch(a, b, [])


def test_the_diagnose_command_prints_the_symptom_and_sets_the_exit_code(tmp_path, capsys):
    healthy, plateau = tmp_path / "healthy.json", tmp_path / "plateau.json"
    healthy.write_text(json.dumps(_history(_falling(50)).to_dict()))
    plateau.write_text(json.dumps(_history(_falling(50, 3.8, 3.75), lr=1e-6).to_dict()))
    assert main(["diagnose", str(healthy)]) == 0
    assert capsys.readouterr().out.startswith("healthy: ")
    assert main(["diagnose", str(plateau)]) == 1
    assert capsys.readouterr().out.startswith("plateau: ")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["diagnose", str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err
    assert main(["diagnose", str(tmp_path / "missing.json")]) == 2
