"""Sweeps, the range test, transfer of the course decoder and low-resource runs (lesson 14)."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest
import torch

import tfx_course as tfx
from tfx_course.lowresource import encode_pairs, prepare_pairs, train_and_score
from tfx_course.model import ModelConfig, Transformer
from tfx_course.training import TrainConfig
from tfx_course.transfer import transfer_parts
from tfx_course.tuning import configs_for, grid, lr_range_test, range_test_step, run_trial, suggest

TINY = ModelConfig(30, 30, d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1,
                   d_ff=32, dropout=0.0, max_len=16)  # fmt: skip
TRAIN = TrainConfig(lr=1e-2, max_steps=8, warmup_steps=2, label_smoothing=0.0)


@pytest.fixture(scope="module")
def batches():
    tok = tfx.data.tokenizer_for("reversal")
    pairs = tfx.data.make_pairs("reversal", 128, seed=0, max_len=6)
    return tfx.data.make_batches(pairs, tok, tok, 32, seed=0)


def test_grid_lists_every_combination_last_knob_fastest():
    assert grid(lr=[1, 2], warmup_steps=[0, 5, 9]) == [
        {"lr": 1, "warmup_steps": 0}, {"lr": 1, "warmup_steps": 5}, {"lr": 1, "warmup_steps": 9},
        {"lr": 2, "warmup_steps": 0}, {"lr": 2, "warmup_steps": 5}, {"lr": 2, "warmup_steps": 9},
    ]  # fmt: skip
    with pytest.raises(ValueError, match="dropout"):
        grid(lr=[1], dropout=[])


def test_each_knob_goes_to_the_config_that_has_it():
    model, train = configs_for({"lr": 0.5, "dropout": 0.2, "n_layers": 3, "d_model": 32}, TINY, TRAIN)  # fmt: skip
    assert train.lr == 0.5 and model.dropout == 0.2
    assert (model.n_encoder_layers, model.n_decoder_layers, model.d_model, model.d_ff) == (3, 3, 32, 128)  # fmt: skip
    with pytest.raises(ValueError, match="unknown knob 'learning_rate'"):
        configs_for({"learning_rate": 1e-3}, TINY, TRAIN)


def test_a_trial_is_seeded_and_reports_its_final_validation_loss(one_thread, batches):
    first = run_trial({"lr": 3e-3}, TINY, TRAIN, batches, batches[:1])
    again = run_trial({"lr": 3e-3}, TINY, TRAIN, batches, batches[:1])
    assert first.val_loss == again.val_loss == first.history.val_loss[-1]
    assert len(first.history.loss) == TRAIN.max_steps and first.params == {"lr": 3e-3}
    assert run_trial({"lr": 3e-2}, TINY, TRAIN, batches, batches[:1]).val_loss != first.val_loss


def test_suggest_asks_optuna_for_each_kind_of_knob():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = {"lr": ("log", 1e-4, 1e-2), "dropout": ("float", 0.0, 0.3),
             "warmup_steps": ("int", 0, 50), "n_layers": ("choice", [1, 2])}  # fmt: skip
    params = suggest(study.ask(), space)
    assert 1e-4 <= params["lr"] <= 1e-2 and 0 <= params["dropout"] <= 0.3
    assert isinstance(params["warmup_steps"], int) and params["n_layers"] in (1, 2)
    with pytest.raises(ValueError, match="kind 'uniform'"):
        suggest(study.ask(), {"lr": ("uniform", 0, 1)})


def test_the_range_test_stops_at_divergence_and_suggests_a_tenth(one_thread, batches):
    calls = []

    def bowl(lr):  # lowest at 1e-2, explodes above it
        calls.append(lr)
        return 1.0 + (math.log10(lr) + 2) ** 2 if lr < 1e-2 else 1.0 + 1e4 * (lr - 1e-2)

    lrs, smoothed, suggested = lr_range_test(bowl, 1e-5, 10.0, 61, beta=0.0)  # no smoothing
    assert lrs == calls and lrs[0] == 1e-5 and len(lrs) < 61  # stopped early
    assert suggested == pytest.approx(1e-3) and smoothed[-1] > 4 * min(smoothed)
    full, _, _ = lr_range_test(lambda lr: 1.0, 1e-5, 10.0, 61)
    assert full[-1] == pytest.approx(10.0) and len(full) == 61  # reaches end_lr
    model = Transformer(TINY)
    before = [p.clone() for p in model.parameters()]
    lrs, smoothed, suggested = lr_range_test(range_test_step(model, batches), 1e-5, 1.0, 20)
    assert 1e-6 <= suggested <= 0.1 and all(math.isfinite(x) for x in smoothed[:-1])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_transfer_copies_the_decoder_and_output_layer_only(one_thread):
    torch.manual_seed(1)
    trained = Transformer(dataclasses.replace(TINY, tie_embeddings=True))
    model, copied = transfer_parts(trained, src_vocab_size=50)
    old, new = trained.state_dict(), model.state_dict()
    assert model.config.src_vocab_size == 50 and model.config.tgt_vocab_size == 30
    assert copied and all(name.startswith(("decoder.", "lm_head.")) for name in copied)
    assert set(copied) == {n for n in new if n.startswith(("decoder.", "lm_head."))}
    assert all(torch.equal(new[n], old[n]) for n in copied)
    assert not torch.equal(new["encoder.layers.0.ff.linear1.weight"], old["encoder.layers.0.ff.linear1.weight"])  # fmt: skip
    assert model.lm_head.weight is model.decoder.embed.embedding.weight  # still tied
    both, copied_both = transfer_parts(trained, 50, ("decoder", "encoder_layers"))
    assert "encoder.layers.0.ff.linear1.weight" in copied_both
    assert not any(n.startswith("encoder.embed") for n in copied_both)
    with pytest.raises(ValueError, match="unknown part 'encoder'"):
        transfer_parts(trained, 50, ("encoder",))


PAIRS = [("le chat dort", "the cat sleeps"), ("le chien court", "the dog runs"),
         ("un chat court", "a cat runs"), ("un chien dort", "a dog sleeps")] * 8  # fmt: skip


def test_prepare_pairs_shares_or_separates_the_vocabularies():
    shared = prepare_pairs(PAIRS, PAIRS[:4], vocab_size=40, max_tokens=64)
    assert shared.src_tokenizer is shared.tgt_tokenizer and shared.n_train_pairs == len(PAIRS)
    english = tfx.data.train_subword_tokenizer([t for _, t in PAIRS], 40)
    apart = prepare_pairs(PAIRS, PAIRS[:4], vocab_size=40, tgt_tokenizer=english, max_tokens=64)
    assert apart.tgt_tokenizer is english and apart.src_tokenizer is not english
    assert apart.src_tokenizer.decode(apart.train_batches[0].src[0].tolist()) in {s for s, _ in PAIRS}  # fmt: skip
    assert encode_pairs(english, english, [("a " * 40, "a")], max_len=10) == []  # too long: dropped
    with pytest.raises(ValueError, match="vocab_size"):
        prepare_pairs(PAIRS, PAIRS)


def test_train_and_score_reports_bleu_with_its_signature(one_thread):
    data = prepare_pairs(PAIRS, PAIRS[:4], vocab_size=40, max_tokens=64)
    config = dataclasses.replace(TINY, src_vocab_size=data.src_tokenizer.vocab_size,
                                 tgt_vocab_size=data.tgt_tokenizer.vocab_size)  # fmt: skip
    torch.manual_seed(0)
    result = train_and_score(Transformer(config), data, TRAIN, PAIRS[:4], decode_max_len=8)
    assert 0.0 <= result["bleu"] <= 100.0 and result["signature"].startswith("nrefs:1")
    assert len(result["history"].loss) == TRAIN.max_steps and math.isfinite(result["val_loss"])
