"""Tests for tfx_course.decoding: batched greedy decoding and translate."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from stand_in import PrefixDecoding, StandIn, StandInConfig
from torch import nn

from tfx_course.data.batching import make_batches, pad_sequences
from tfx_course.data.synthetic import make_pairs, tokenizer_for
from tfx_course.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from tfx_course.decoding import greedy_decode, translate
from tfx_course.evaluation import exact_match
from tfx_course.model import ModelConfig, Transformer
from tfx_course.repro import seed_everything
from tfx_course.training import TrainConfig, fit

TOK = tokenizer_for("reversal")


pytestmark = pytest.mark.usefixtures("one_thread")  # from conftest.py


class Scripted(PrefixDecoding, nn.Module):
    """Predicts a fixed token sequence per row, so the expected output is known in advance."""

    def __init__(self, script: list[list[int]], vocab_size: int = 12) -> None:
        super().__init__()
        self.config = StandInConfig(vocab_size)
        self.script, self.vocab_size = script, vocab_size
        self.calls = 0

    def encode(self, src):
        return torch.zeros(*src.shape, 4)

    def decode(self, tgt, memory, src):
        self.calls += 1
        B, T = tgt.shape
        logits = torch.zeros(B, T, self.vocab_size)
        for b in range(B):
            logits[b, -1, self.script[b][T - 1]] = 1.0
        return logits


def _sources(n=5, seed=0):
    pairs = make_pairs("reversal", n, seed=seed, min_len=1, max_len=6)
    return pad_sequences([TOK.encode(x) for x, _ in pairs], PAD_ID)


def _reference(model, src, max_len):
    """Full forward on the whole prefix at every step, one sequence at a time, no padding."""
    model.eval()
    rows = []
    with torch.no_grad():
        for row in src:
            one = row[row != PAD_ID][None]  # (1, S_b)
            tokens = torch.tensor([[BOS_ID]])
            for _ in range(max_len):
                next_token = model(one, tokens)[:, -1].argmax(-1)
                tokens = torch.cat([tokens, next_token[:, None]], dim=1)
                if next_token.item() == EOS_ID:
                    break
            rows.append(tokens[0, 1:].tolist())
    return rows


def _rows(out):
    """Cut each output row after its EOS (what follows must be padding)."""
    rows = []
    for row in out.tolist():
        end = row.index(EOS_ID) + 1 if EOS_ID in row else len(row)
        assert all(t == PAD_ID for t in row[end:])
        rows.append(row[:end])
    return rows


def _tiny_transformer(seed=0, **changes):
    seed_everything(seed)
    config = ModelConfig.tiny(TOK.vocab_size, TOK.vocab_size)
    return Transformer(dataclasses.replace(config, **{"d_model": 16, "d_ff": 32, "max_len": 16, **changes}))  # fmt: skip


def _stand_in():
    seed_everything(0)
    model = StandIn(StandInConfig(TOK.vocab_size, dropout=0.1, position_std=1.0))
    with torch.no_grad():
        model.lm_head.bias[EOS_ID] -= 1.5  # so that some rows end early and others run on
    return model


@pytest.mark.parametrize("make_model", [_tiny_transformer, _stand_in])
def test_batched_greedy_equals_the_step_by_step_reference(make_model):
    model, src = make_model(), _sources(n=6)
    model.train()
    out = greedy_decode(model, src, BOS_ID, EOS_ID, max_len=9)
    assert model.training  # the mode is restored
    assert out.dtype == torch.long and out.shape[0] == 6 and out.shape[1] <= 9
    rows = _rows(out)
    assert rows == _reference(model, src, max_len=9)
    assert len({tuple(r) for r in rows}) > 1  # the rows differ, so a mix-up would show


def test_rows_that_end_early_are_padded_while_others_go_on():
    rows = _rows(greedy_decode(_stand_in(), _sources(n=6), BOS_ID, EOS_ID, max_len=9))
    assert {len(r) for r in rows} == {2, 9} and sum(r[-1] == EOS_ID for r in rows) == 2


def test_decoding_stops_once_every_row_has_ended_and_pads_after_eos():
    script = [[5, EOS_ID, 9, 9, 9, 9], [6, 7, 8, EOS_ID, 9, 9], [EOS_ID, 9, 9, 9, 9, 9]]
    model = Scripted(script)
    out = greedy_decode(model, torch.ones(3, 2, dtype=torch.long), BOS_ID, EOS_ID, max_len=6)
    assert out.tolist() == [[5, EOS_ID, 0, 0], [6, 7, 8, EOS_ID], [EOS_ID, 0, 0, 0]]
    assert model.calls == 4  # no step after the last EOS


def test_decoding_stops_at_max_len_without_eos():
    model = Scripted([[5] * 10, [6] * 10])
    out = greedy_decode(model, torch.ones(2, 3, dtype=torch.long), BOS_ID, EOS_ID, max_len=4)
    assert out.tolist() == [[5] * 4, [6] * 4]


def test_greedy_decode_rejects_bad_input():
    model = _tiny_transformer()
    with pytest.raises(ValueError, match="LongTensor"):
        greedy_decode(model, torch.ones(2, 3), BOS_ID, EOS_ID, max_len=4)
    with pytest.raises(ValueError, match="model's max_len=16"):
        greedy_decode(model, _sources(), BOS_ID, EOS_ID, max_len=17)
    assert greedy_decode(model, _sources(n=2)).shape[1] <= 16  # max_len defaults to config.max_len


def test_translate_decodes_texts_in_batches():
    model = Scripted([[TOK.encode("c", add_special=False)[0], EOS_ID]] * 3)
    assert translate(model, ["ab", "b", "abc"], TOK, TOK, max_len=3, batch_size=3) == ["c"] * 3
    with pytest.raises(TypeError, match="list of strings"):
        translate(model, "ab", TOK, TOK)


def test_a_briefly_trained_transformer_reverses_short_strings():
    seed_everything(0)
    config = ModelConfig.tiny(TOK.vocab_size, TOK.vocab_size)
    model = Transformer(dataclasses.replace(config, d_model=32, d_ff=64, dropout=0.0, max_len=16))
    train = make_pairs("reversal", 4000, seed=1, min_len=1, max_len=4)
    train_config = TrainConfig(lr=5e-3, max_steps=300, warmup_steps=30, schedule="cosine", batch_size=32, label_smoothing=0.0)  # fmt: skip
    fit(model, make_batches(train, TOK, TOK, train_config.batch_size), train_config, progress=False)
    test = make_pairs("reversal", 50, seed=2, min_len=1, max_len=4)
    predictions = translate(model, [x for x, _ in test], TOK, TOK, max_len=8)
    assert exact_match(predictions, [y for _, y in test]) >= 0.9
