"""Tests for the fast training path (tfx_course.fast_training): same update as the reference step."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tfx_course.data.batching import Seq2SeqBatch
from tfx_course.data.bucketing import make_fixed_shape_batches
from tfx_course.data.synthetic import make_pairs, tokenizer_for
from tfx_course.fast_training import (
    FastRun,
    FastTrainer,
    check_token_ids,
    fit_fast,
    scale_recipe,
)
from tfx_course.model import ModelConfig, Transformer
from tfx_course.repro import seed_everything
from tfx_course.training import History, TrainConfig, make_optimizer, make_scheduler, train_step

pytestmark = pytest.mark.usefixtures("one_thread")  # from conftest.py

TOK = tokenizer_for("reversal")
CONFIG = TrainConfig(lr=1e-2, max_steps=20, warmup_steps=2, schedule="cosine", log_every=5)


def _model(seed: int = 0, dropout: float = 0.0) -> Transformer:
    """A tiny model (compiling it takes seconds, not minutes), without dropout by default."""
    seed_everything(seed)
    config = ModelConfig(TOK.vocab_size, TOK.vocab_size, d_model=16, n_heads=2,
                         n_encoder_layers=1, n_decoder_layers=1, d_ff=32, dropout=dropout,
                         max_len=16, tie_embeddings=True, fused_attention=True)  # fmt: skip
    return Transformer(config)


def _batches(n: int = 96, seed: int = 0) -> list[Seq2SeqBatch]:
    """Fixed-shape reversal batches: every batch (16, 8), the last one with padding rows."""
    pairs = make_pairs("reversal", n, seed=seed, max_len=5)
    ids = [(TOK.encode(src, add_special=True), TOK.encode(tgt, add_special=True)) for src, tgt in pairs]  # fmt: skip
    return make_fixed_shape_batches(ids, (8,), 128, seed=seed)


def test_scale_recipe_keeps_the_epochs_and_scales_lr_by_the_square_root():
    base = TrainConfig(lr=8e-4, max_steps=4000, warmup_steps=800, log_every=20, min_lr_ratio=0.05)
    scaled = scale_recipe(base, 4)
    assert scaled.lr == pytest.approx(1.6e-3) and scaled.max_steps == 1000
    assert scaled.warmup_steps == 200 and scaled.log_every == 5
    assert scaled.warmup_steps / scaled.max_steps == base.warmup_steps / base.max_steps
    assert dataclasses.replace(scaled, lr=base.lr, max_steps=4000, warmup_steps=800, log_every=20) == base  # fmt: skip
    assert scale_recipe(base, 1) == base
    with pytest.raises(ValueError, match="factor=0 must be positive"):
        scale_recipe(base, 0)


def _reference_steps(batches: list[Seq2SeqBatch], model: Transformer) -> list[float]:
    optimizer, scheduler = make_optimizer(model, CONFIG), make_scheduler(make_optimizer(model, CONFIG), CONFIG)  # fmt: skip
    scheduler = make_scheduler(optimizer, CONFIG)
    return [train_step(model, b, optimizer, scheduler, CONFIG, 0)[0] for b in batches]


def test_an_eager_fast_step_is_the_reference_train_step():
    batches = _batches()[:3]
    reference, fast = _model(), _model()
    expected = _reference_steps(batches, reference)
    trainer = FastTrainer(fast, CONFIG, compile=False)
    losses = []
    for batch in batches:
        trainer.step(batch)
        losses.append(trainer.read()[0])
    assert losses == pytest.approx(expected, abs=1e-6)
    for (name, p), q in zip(reference.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6, msg=name)


def test_read_returns_the_token_weighted_mean_loss_since_the_last_read():
    batches = _batches()[:3]
    one_by_one = FastTrainer(_model(), CONFIG, compile=False)
    per_step = []
    for batch in batches:
        one_by_one.step(batch)
        per_step.append(one_by_one.read()[0])
    tokens = [b.num_tokens(0) for b in batches]
    together = FastTrainer(_model(), CONFIG, compile=False)
    for batch in batches:
        together.step(batch)
    expected = sum(loss * n for loss, n in zip(per_step, tokens, strict=True)) / sum(tokens)
    assert together.read()[0] == pytest.approx(expected, rel=1e-6)
    assert float(together.token_sum) == 0.0  # read starts the next interval


def test_compiled_steps_agree_with_eager_steps():
    batches = _batches()[:3]  # one shape: a single compilation
    eager, compiled = _model(), _model()
    eager_trainer = FastTrainer(eager, CONFIG, compile=False)
    compiled_trainer = FastTrainer(compiled, CONFIG, compile=True)
    for batch in batches:
        eager_trainer.step(batch)
        compiled_trainer.step(batch)
        loss, grad_norm = eager_trainer.read()
        compiled_loss, compiled_norm = compiled_trainer.read()
        assert compiled_loss == pytest.approx(loss, abs=1e-5)
        assert compiled_norm == pytest.approx(grad_norm, rel=1e-4)
    # A key bias adds the same number to every score of a query, which softmax ignores: its
    # gradient is zero but for rounding, and Adam (eps 1e-9) turns any rounding into a full
    # step. So those three vectors differ by design; every other parameter must agree.
    named = list(zip(eager.named_parameters(), compiled.parameters(), strict=True))
    for (name, p), q in named:
        if name.endswith("k_proj.bias"):
            assert float(p.grad.abs().max()) < 1e-6 and float(q.grad.abs().max()) < 1e-6, name
    difference = max(
        float((p - q).detach().abs().max()) for (name, p), q in named if not name.endswith("k_proj.bias")
    )  # fmt: skip
    assert difference < 1e-5, difference
    moved = max(float((p - q).detach().abs().max()) for p, q in zip(_model().parameters(), eager.parameters(), strict=True))  # fmt: skip
    assert moved > 1e-3  # the steps did change the parameters: the agreement means something


def test_fit_fast_learns_and_reads_only_every_log_every_steps():
    batches = _batches(n=256)
    config = dataclasses.replace(CONFIG, max_steps=100, log_every=25)
    logged = []
    run = fit_fast(
        _model(), batches, config, compile=False, on_log=lambda s, loss: logged.append(s)
    )
    assert isinstance(run, FastRun) and isinstance(run.history, History)
    assert run.history.step == logged == [25, 50, 75, 100]
    assert run.history.loss[-1] < 0.8 * run.history.loss[0]  # mean over steps 76-100 vs 1-25
    seconds = [mark["seconds"] for mark in run.timeline]
    assert seconds == sorted(seconds) and run.first_step_seconds <= seconds[0]
    epochs = 100 // len(batches)  # every batch once per epoch, then part of another epoch
    assert len(batches) * epochs < 100 < len(batches) * (epochs + 1)
    tokens = sum(b.num_tokens(0) for b in batches)
    assert epochs * tokens < run.history.train_tokens < (epochs + 1) * tokens
    assert run.timeline[-1]["tokens"] == run.history.train_tokens
    assert run.tokens_per_second() > 0 and run.tokens_per_second(after_step=10) > 0


def test_fit_fast_stops_on_a_non_finite_loss_and_on_time():
    batches = _batches()
    diverging = fit_fast(_model(), batches, dataclasses.replace(CONFIG, lr=1e6, clip_norm=None), compile=False)  # fmt: skip
    assert diverging.history.diverged_at is not None
    assert not math.isfinite(diverging.history.loss[-1])
    stopped = fit_fast(_model(), batches, CONFIG, compile=False, max_seconds=0.0)
    assert stopped.history.step == [1]  # stopped after the first step, and it was recorded


def test_token_ids_are_checked_once_before_training():
    batches = _batches()
    check_token_ids(batches, TOK.vocab_size)
    with pytest.raises(ValueError, match=r"batch 0: src holds ids from 0 to \d+, outside"):
        check_token_ids(batches, 3)
    with pytest.raises(ValueError, match="non-empty"):
        fit_fast(_model(), [], CONFIG, compile=False)
