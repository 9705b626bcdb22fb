"""Tests for tfx_course.training: config, loss, schedules, optimizer, fit, checkpoints."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from stand_in import StandIn, StandInConfig
from torch import nn

from tfx_course import training
from tfx_course.data.batching import make_batches
from tfx_course.data.synthetic import make_pairs, tokenizer_for
from tfx_course.model import ModelConfig, Transformer
from tfx_course.repro import seed_everything
from tfx_course.training import (
    History,
    TrainConfig,
    evaluate,
    fit,
    grad_norms_by_layer,
    label_smoothed_cross_entropy,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    noam_peak_lr,
    save_checkpoint,
    warmup_schedule,
)

TOK = tokenizer_for("reversal")


def _batches(n=64, batch_size=16, seed=0):
    return make_batches(
        make_pairs("reversal", n, seed=seed, max_len=5), TOK, TOK, batch_size, seed=seed
    )


def _stand_in(seed=0, dropout=0.0):
    seed_everything(seed)
    return StandIn(StandInConfig(TOK.vocab_size, dropout=dropout))


def _tiny_transformer(seed=0, **changes):
    seed_everything(seed)
    config = ModelConfig.tiny(TOK.vocab_size, TOK.vocab_size)
    changes = {"d_model": 16, "d_ff": 32, "max_len": 16, **changes}
    return Transformer(dataclasses.replace(config, **changes))


QUIET = dict(progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")  # from conftest.py


# ---------------------------------------------------------------- config


def test_train_config_validates_with_clear_messages():
    with pytest.raises(ValueError, match=r"lr=0 must be positive"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match=r"warmup_steps=-1 must be a non-negative integer"):
        TrainConfig(warmup_steps=-1)
    with pytest.raises(ValueError, match=r"schedule='step' is not one of"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match=r"label_smoothing=1.0.*; clip_norm=0"):
        TrainConfig(label_smoothing=1.0, clip_norm=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0


def test_presets_and_dict_round_trip():
    toy, paper = TrainConfig.toy(), TrainConfig.paper()
    assert TrainConfig.toy(max_steps=7).max_steps == 7
    assert paper.lr == pytest.approx(512**-0.5 * 4000**-0.5) and paper.schedule == "noam"
    for config in (toy, paper):
        assert TrainConfig.from_dict(config.to_dict()) == config
    as_list = {**toy.to_dict(), "betas": [0.9, 0.99]}  # what a json file would hand back
    assert TrainConfig.from_dict(as_list).betas == (0.9, 0.99)
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"learning_rate": 1.0})


# ---------------------------------------------------------------- loss


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_equals_torch_cross_entropy(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, requires_grad=True)
    targets = torch.randint(1, 7, (3, 5))
    targets[0, 3:] = 0
    targets[2, 1:] = 0
    ours = label_smoothed_cross_entropy(logits, targets, smoothing, pad_id=0)
    ref = F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), label_smoothing=smoothing, ignore_index=0)  # fmt: skip
    torch.testing.assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref)
    total = label_smoothed_cross_entropy(logits, targets, smoothing, pad_id=0, reduction="sum")
    torch.testing.assert_close(total, ref * (targets != 0).sum())


def test_label_smoothing_edge_cases():
    logits, targets = torch.randn(4, 6), torch.tensor([5, 2, 3, 3])
    ref = F.cross_entropy(logits, targets, label_smoothing=0.2, ignore_index=3)
    torch.testing.assert_close(label_smoothed_cross_entropy(logits, targets, 0.2, pad_id=3), ref)
    all_pad = label_smoothed_cross_entropy(logits, torch.zeros(4, dtype=torch.long), 0.1, pad_id=0)
    assert all_pad.item() == 0.0
    with pytest.raises(ValueError, match="plus a vocabulary axis"):
        label_smoothed_cross_entropy(logits, targets[:3])
    with pytest.raises(ValueError, match="smoothing=1.5"):
        label_smoothed_cross_entropy(logits, targets, 1.5)


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("kind", ["noam", "cosine", "linear", "constant"])
def test_schedules_peak_at_warmup_and_are_monotone(kind):
    warmup, total = 10, 50
    values = [warmup_schedule(kind, warmup, total, min_ratio=0.1)(k) for k in range(total)]
    peak = values.index(max(values))
    assert peak == warmup - 1 and values[peak] == 1.0
    assert all(a < b for a, b in zip(values[:warmup], values[1:warmup], strict=False))
    assert all(a >= b for a, b in zip(values[warmup - 1 :], values[warmup:], strict=False))
    if kind in ("cosine", "linear"):
        assert values[-1] == pytest.approx(0.1)
        assert values[warmup] < 1.0
    if kind == "constant":
        assert set(values[warmup - 1 :]) == {1.0}


def test_noam_is_the_papers_formula_scaled_to_its_peak():
    d_model, warmup = 64, 20
    schedule = warmup_schedule("noam", warmup, 200)
    for k in range(200):
        s = k + 1
        paper = d_model**-0.5 * min(s**-0.5, s * warmup**-1.5)
        assert noam_peak_lr(d_model, warmup) * schedule(k) == pytest.approx(paper)


def test_scheduler_drives_the_optimizer_lr():
    config = TrainConfig(lr=0.5, max_steps=30, warmup_steps=5, schedule="cosine")
    optimizer = make_optimizer(nn.Linear(2, 2), config)
    scheduler = make_scheduler(optimizer, config)
    seen = []
    for _ in range(30):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    schedule = warmup_schedule("cosine", 5, 30)
    assert seen == pytest.approx([0.5 * schedule(k) for k in range(30)])


# ---------------------------------------------------------------- optimizer


def test_weight_decay_only_on_matrices():
    model = _tiny_transformer()
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.05))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(names[id(p)].endswith(("bias", "norm1.weight", "norm2.weight", "norm3.weight", "norm.weight"))
               for p in no_decay["params"])  # fmt: skip
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == set(names)


# ---------------------------------------------------------------- fit


def test_fit_overfits_one_batch_with_the_stand_in():
    model, batch = _stand_in(), _batches(n=16)[:1]
    config = TrainConfig(
        lr=1e-2, max_steps=60, warmup_steps=5, schedule="constant", label_smoothing=0.0
    )
    history = fit(model, batch, config, **QUIET)
    assert len(history.loss) == len(history.lr) == len(history.grad_norm) == 60
    assert history.step == list(range(1, 61))
    assert history.loss[-1] < 0.2 * history.loss[0]
    assert evaluate(model, batch)["token_accuracy"] == 1.0


def test_fit_overfits_one_batch_with_the_transformer():
    model, batch = _tiny_transformer(dropout=0.0), _batches(n=16)[:1]
    config = TrainConfig(
        lr=1e-2, max_steps=60, warmup_steps=5, schedule="constant", label_smoothing=0.0
    )
    history = fit(model, batch, config, **QUIET)
    assert history.loss[-1] < 0.1 * history.loss[0]
    assert evaluate(model, batch)["token_accuracy"] == 1.0


def test_fit_records_lr_validation_and_clipping():
    model, batches = _stand_in(), _batches()
    config = TrainConfig(lr=1e-3, max_steps=10, warmup_steps=4, schedule="linear", clip_norm=1e-3, eval_every=4)  # fmt: skip
    history = fit(model, batches, config, val_batches=batches[:1], **QUIET)
    schedule = warmup_schedule("linear", 4, 10)
    assert history.lr == pytest.approx([1e-3 * schedule(k) for k in range(10)])
    assert history.val_step == [4, 8, 10] and len(history.val_loss) == 3
    assert all(n > 1e-3 for n in history.grad_norm)  # the norm before clipping is recorded
    assert history.val_loss[-1] == pytest.approx(evaluate(model, batches[:1])["loss"])


def test_progress_bar_is_optional_and_stable(capsys):
    config = TrainConfig(max_steps=3, warmup_steps=1, log_every=1)
    fit(_stand_in(), _batches(), config, progress=False)
    assert capsys.readouterr().err == ""
    fit(_stand_in(), _batches(), config, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "loss=" in err and "lr=" in err
    assert "it/s" not in err.split("loss=")[-1]  # no rate in the postfix


def test_fit_stops_on_a_non_finite_loss():
    model = _stand_in()
    with torch.no_grad():
        model.lm_head.bias.fill_(float("nan"))
    history = fit(model, _batches(), TrainConfig(max_steps=5, warmup_steps=1), **QUIET)
    assert history.diverged_at == 1 and len(history.loss) == 1 and math.isnan(history.loss[0])
    assert "diverged_at=1" in repr(history)


def test_fit_rejects_unusable_input():
    with pytest.raises(ValueError, match="non-empty list of Seq2SeqBatch"):
        fit(_stand_in(), [], TrainConfig(), **QUIET)
    with pytest.raises(TypeError, match="needs a TrainableModel.*no attribute 'config'"):
        fit(nn.Linear(2, 2), _batches(), TrainConfig(), **QUIET)


# ---------------------------------------------------------------- evaluation helpers


def test_evaluate_is_token_weighted_cross_entropy_and_restores_mode():
    model, batches = _stand_in(dropout=0.1), _batches(n=40, batch_size=16)
    model.train()
    result = evaluate(model, batches)
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(b.src, b.tgt_in).flatten(0, 1) for b in batches])
    targets = torch.cat([b.tgt_out.flatten() for b in batches])
    ref = F.cross_entropy(logits, targets, ignore_index=0)
    assert result["loss"] == pytest.approx(ref.item(), rel=1e-5)
    assert result["tokens"] == int((targets != 0).sum())
    assert result["perplexity"] == pytest.approx(math.exp(ref.item()), rel=1e-5)


def test_grad_norms_by_layer_groups_parameters_and_add_up():
    model, batch = _tiny_transformer(), _batches()[0]
    label_smoothed_cross_entropy(model(batch.src, batch.tgt_in), batch.tgt_out).backward()
    norms = grad_norms_by_layer(model)
    assert "encoder.layers.0" in norms and "decoder.layers.1" in norms and "lm_head" in norms
    assert list(norms).index("encoder.layers.0") < list(norms).index("encoder.layers.1")
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
    assert math.sqrt(sum(v**2 for v in norms.values())) == pytest.approx(total.item(), rel=1e-5)


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    model, batches = _tiny_transformer(), _batches()
    config = TrainConfig(max_steps=4, warmup_steps=2)
    history = fit(model, batches, config, **QUIET)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    optimizer.step()  # uses the gradients fit left behind
    scheduler.step()
    path = save_checkpoint(tmp_path / "run" / "ckpt.pt", model, optimizer, scheduler, step=4,
                           train_config=config, history=history, extra={"vocab": list(TOK.chars)})  # fmt: skip
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]
    payload = torch.load(path, weights_only=True)  # plain data only
    assert payload["step"] == 4
    other = _tiny_transformer(seed=1)
    other_scheduler = make_scheduler(make_optimizer(other, config), config)
    checkpoint = load_checkpoint(path, other, None, other_scheduler)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True))  # fmt: skip
    assert other_scheduler.last_epoch == 1
    assert ModelConfig(**checkpoint.model_config) == model.config
    assert TrainConfig.from_dict(checkpoint.train_config) == config
    assert History.from_dict(checkpoint.history).loss == history.loss
    assert checkpoint.extra == {"vocab": list(TOK.chars)}


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model = _stand_in()
    path = save_checkpoint(tmp_path / "ckpt.pt", model, step=1)
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(training.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, step=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path):
    batches = _batches(n=48, batch_size=16)  # 3 batches: the run crosses epochs
    config = TrainConfig(lr=3e-3, max_steps=10, warmup_steps=3, schedule="cosine", eval_every=5)
    straight = _tiny_transformer(dropout=0.1)  # dropout: the random state must be restored too
    full = fit(straight, batches, config, val_batches=batches[:1], **QUIET)

    path = tmp_path / "ckpt.pt"
    first = _tiny_transformer(dropout=0.1)
    part = fit(first, batches, config, val_batches=batches[:1], checkpoint_path=path, stop_after=4, **QUIET)  # fmt: skip
    assert part.step == [1, 2, 3, 4] and load_checkpoint(path).step == 4
    torch.manual_seed(123)  # disturb the global random state between the two calls
    resumed = _tiny_transformer(seed=99, dropout=0.1)  # different start: the checkpoint must win
    rest = fit(resumed, batches, config, val_batches=batches[:1], checkpoint_path=path, resume=True, **QUIET)  # fmt: skip

    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert rest.step == full.step and rest.loss == full.loss and rest.lr == full.lr
    assert rest.val_step == full.val_step == [5, 10]
    assert load_checkpoint(path).step == 10


def test_resume_refuses_a_different_config(tmp_path):
    path, batches = tmp_path / "ckpt.pt", _batches()
    config = TrainConfig(max_steps=4, warmup_steps=1)
    fit(_stand_in(), batches, config, checkpoint_path=path, stop_after=2, **QUIET)
    with pytest.raises(ValueError, match="lr: saved 0.001, now 0.002"):
        fit(_stand_in(), batches, dataclasses.replace(config, lr=2e-3), checkpoint_path=path, resume=True, **QUIET)  # fmt: skip
    changed_reporting = dataclasses.replace(config, log_every=1, checkpoint_every=1)
    history = fit(
        _stand_in(), batches, changed_reporting, checkpoint_path=path, resume=True, **QUIET
    )
    assert history.step == [1, 2, 3, 4]


@pytest.mark.parametrize(("max_steps", "expected"), [(5, [2, 4, 5]), (4, [2, 4])])
def test_checkpoints_every_n_steps_and_once_at_the_end(tmp_path, monkeypatch, max_steps, expected):
    steps = []
    original = training.save_checkpoint

    def recording(path, model, optimizer, scheduler, step, **kw):
        steps.append(step)
        return original(path, model, optimizer, scheduler, step, **kw)

    monkeypatch.setattr(training, "save_checkpoint", recording)
    config = TrainConfig(max_steps=max_steps, warmup_steps=1, checkpoint_every=2)
    fit(_stand_in(), _batches(), config, checkpoint_path=tmp_path / "c.pt", **QUIET)
    assert steps == expected and load_checkpoint(tmp_path / "c.pt").step == max_steps


def test_checkpoint_of_a_wrapped_model_loads_into_the_plain_model(tmp_path):
    model = _stand_in()
    path = save_checkpoint(tmp_path / "c.pt", nn.DataParallel(model), step=3)  # as DDP wraps
    assert not any(k.startswith("module.") for k in load_checkpoint(path).model_state)
    other = _stand_in(seed=5)
    load_checkpoint(path, other)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters(), strict=True)
    )


# ---------------------------------------------------------------- extras used by long runs


def test_on_validate_metrics_are_recorded_shown_and_saved(tmp_path, capsys):
    calls = []

    def on_validate(model, step):
        calls.append((step, model.training))
        return {"bleu": float(step)}

    config = TrainConfig(max_steps=4, warmup_steps=1, eval_every=2, log_every=1)
    path = tmp_path / "c.pt"
    history = fit(_stand_in(), _batches(), config, _batches()[:1], checkpoint_path=path, on_validate=on_validate, show_speed=True)  # fmt: skip
    assert calls == [(2, False), (4, False)]  # after each validation loss, in eval mode
    assert history.val_metrics == {"bleu": [2.0, 4.0]}
    err = capsys.readouterr().err
    assert "val_bleu=4.00" in err and "tok/s=" in err
    assert History.from_dict(load_checkpoint(path).history).val_metrics == {"bleu": [2.0, 4.0]}


def test_fit_counts_target_tokens_and_stops_on_a_time_limit(tmp_path):
    batches = _batches()
    history = fit(_stand_in(), batches, TrainConfig(max_steps=2, warmup_steps=1), **QUIET)
    first_two = training._batch_stream(batches, 0, 2, TrainConfig())
    expected = sum(int((batch.tgt_out != 0).sum()) for batch in first_two)
    assert history.train_tokens == expected and history.tokens_per_second > 0
    path = tmp_path / "c.pt"
    config = TrainConfig(max_steps=50, warmup_steps=1)
    stopped = fit(_stand_in(), batches, config, checkpoint_path=path, max_seconds=0.0, **QUIET)
    assert stopped.step == [1] and load_checkpoint(path).step == 1  # saved where it stopped


def test_bf16_precision_is_validated_and_a_no_op_on_the_cpu():
    with pytest.raises(ValueError, match="precision='fp16' is not one of"):
        TrainConfig(precision="fp16")
    config = TrainConfig(max_steps=3, warmup_steps=1)
    plain = fit(_stand_in(), _batches(), config, **QUIET)
    bf16 = fit(_stand_in(), _batches(), dataclasses.replace(config, precision="bf16"), **QUIET)
    assert bf16.loss == plain.loss  # autocast is only enabled on CUDA
