"""Tests for beam search: against greedy, against exhaustive search, with scripted models."""

from __future__ import annotations

import itertools
import math
import zlib
from dataclasses import dataclass

import pytest
import torch
from stand_in import PrefixDecoding
from torch import nn

from tfx_course.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from tfx_course.decoding import (
    beam_search,
    beam_step,
    gnmt_length_penalty,
    greedy_decode,
    score_sequences,
)
from tfx_course.model import ModelConfig, Transformer
from tfx_course.repro import seed_everything

A, B = 4, 5  # the two "word" tokens of the scripted models
JUNK = -50.0  # logit of every token a scripted model does not mention


@dataclass(frozen=True)
class ScriptConfig:
    max_len: int
    pad_id: int = PAD_ID


class PrefixScripted(PrefixDecoding, nn.Module):
    """A model whose next-token probabilities are a fixed function of (sentence, prefix).

    ``probs(sentence, prefix)`` returns {token: probability}; sentence is src[b, 0]. Its
    "cache" keeps the prefix and re-decodes it (the real KV cache is tested elsewhere).
    """

    def __init__(self, probs, vocab_size: int = 8, max_len: int = 6) -> None:
        super().__init__()
        self.config = ScriptConfig(max_len)
        self.probs, self.vocab_size = probs, vocab_size

    def encode(self, src):
        return torch.zeros(*src.shape, 1)

    def logits_for(self, sentence: int, prefix: tuple[int, ...]) -> torch.Tensor:
        logits = torch.full((self.vocab_size,), JUNK)
        for token, p in self.probs(sentence, prefix).items():
            logits[token] = math.log(p)
        return logits

    def decode(self, tgt, memory, src):
        rows = [
            torch.stack(
                [self.logits_for(int(s[0]), tuple(t[1 : i + 1].tolist())) for i in range(len(t))]
            )  # fmt: skip
            for s, t in zip(src, tgt, strict=True)
        ]
        return torch.stack(rows)  # (B, T, V)

    def forward(self, src, tgt):
        return self.decode(tgt, self.encode(src), src)


def _table(table: dict[tuple[int, ...], dict[int, float]]):
    return lambda sentence, prefix: table.get(prefix, {EOS_ID: 1.0})


def test_beam_finds_the_likelier_output_that_greedy_misses():
    # Greedy takes A (0.6), then A again (0.55): p(A A EOS) = 0.33.
    # Beam search keeps B (0.4) alive and finds p(B A EOS) = 0.36.
    table = {(): {A: 0.6, B: 0.4}, (A,): {A: 0.55, B: 0.45}, (B,): {A: 0.9, B: 0.1}}
    model, src = PrefixScripted(_table(table)), torch.ones(1, 2, dtype=torch.long)
    assert greedy_decode(model, src).tolist() == [[A, A, EOS_ID]]
    assert beam_search(model, src, beam_size=2, length_penalty=0.0).tolist() == [[B, A, EOS_ID]]
    assert beam_search(model, src, beam_size=1, length_penalty=0.0).tolist() == [[A, A, EOS_ID]]


def test_length_penalty_decides_between_a_short_and_a_long_output():
    # p(EOS) = 0.45 against p(A A A EOS) = 0.55 * 0.9 * 0.9 * 0.95 = 0.423.
    table = {(): {EOS_ID: 0.45, A: 0.55}, (A,): {A: 0.9, EOS_ID: 0.1},
             (A, A): {A: 0.9, EOS_ID: 0.1}, (A, A, A): {EOS_ID: 0.95, A: 0.05}}  # fmt: skip
    model, src = PrefixScripted(_table(table)), torch.ones(1, 2, dtype=torch.long)
    short, long = [EOS_ID], [A, A, A, EOS_ID]
    assert beam_search(model, src, 2, length_penalty=0.0)[0].tolist() == short
    # GNMT with alpha = 1: log(0.45) / 1 = -0.80 loses to log(0.423) / (9 / 6) = -0.57.
    assert beam_search(model, src, 2, length_penalty=1.0)[0].tolist() == long
    expected = [math.log(0.45), math.log(0.55 * 0.9 * 0.9 * 0.95) / 1.5]
    scores = [score_sequences(model, src, torch.tensor([y]), 1.0).item() for y in (short, long)]
    assert scores == pytest.approx(expected, abs=1e-5)


def test_search_goes_on_while_a_longer_output_can_still_win():
    # After one step the finished EOS (0.52) beats A (0.48) even with A's penalty now, but
    # A A A EOS keeps almost all of A's probability and its penalty grows: it wins at alpha 1.
    table = {(): {EOS_ID: 0.52, A: 0.48}, (A,): {A: 0.99, EOS_ID: 0.01},
             (A, A): {A: 0.99, EOS_ID: 0.01}, (A, A, A): {EOS_ID: 0.99, A: 0.01}}  # fmt: skip
    model, src = PrefixScripted(_table(table)), torch.ones(1, 2, dtype=torch.long)
    assert beam_search(model, src, 2, length_penalty=0.0)[0].tolist() == [EOS_ID]
    assert beam_search(model, src, 2, length_penalty=1.0)[0].tolist() == [A, A, A, EOS_ID]


def _random_probs(sentence: int, prefix: tuple[int, ...]) -> dict[int, float]:
    """Seeded random next-token probabilities over A, B and EOS, different for every prefix."""
    seed = zlib.crc32(repr((sentence, prefix)).encode())
    weights = torch.rand(3, generator=torch.Generator().manual_seed(seed)) + 0.05
    return dict(zip((A, B, EOS_ID), (weights / weights.sum()).tolist(), strict=True))


def _exhaustive_best(model: PrefixScripted, sentence: int, max_len: int, alpha: float):
    """Score every output of at most max_len tokens (ended by EOS, or cut at max_len)."""
    outputs = [[*words, EOS_ID] for n in range(max_len) for words in itertools.product((A, B), repeat=n)]  # fmt: skip
    outputs += [list(words) for words in itertools.product((A, B), repeat=max_len)]
    best, best_score = None, -math.inf
    for y in outputs:
        logp = sum(math.log(_random_probs(sentence, tuple(y[:i]))[t]) for i, t in enumerate(y))
        score = logp / ((5 + len(y)) / 6) ** alpha
        if score > best_score:
            best, best_score = y, score
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_a_beam_wide_enough_for_every_prefix_equals_exhaustive_search(alpha):
    # 3 tokens carry all the probability; with max_len = 3 at most 2 * 2 * 3 + 3 = 15
    # hypotheses are ever alive, so 16 beams keep them all and nothing is pruned.
    model, max_len = PrefixScripted(_random_probs, vocab_size=16, max_len=3), 3
    src = torch.tensor([[s, 7] for s in range(6)])
    out = beam_search(model, src, beam_size=16, length_penalty=alpha, max_len=max_len)
    for sentence, row in enumerate(out.tolist()):
        expected = _exhaustive_best(model, sentence, max_len, alpha)
        assert row[: len(expected)] == expected and set(row[len(expected) :]) <= {PAD_ID}


def _transformer(norm_first: bool = True) -> Transformer:
    seed_everything(0)
    config = ModelConfig(24, 24, d_model=16, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
                         d_ff=32, dropout=0.1, max_len=16, norm_first=norm_first)  # fmt: skip
    model = Transformer(config)
    with torch.no_grad():  # no PAD or BOS outputs; rows end at different steps
        model.lm_head.bias[PAD_ID] = model.lm_head.bias[BOS_ID] = -1e4
        model.lm_head.bias[EOS_ID] -= 0.4
    return model


def _sources() -> torch.Tensor:
    """Five sources of lengths 8, 6, 3, 8, 5, padded."""
    src = torch.randint(4, 24, (5, 8), generator=torch.Generator().manual_seed(3))
    src[:, 0] = BOS_ID
    for row, length in ((1, 6), (2, 3), (4, 5)):
        src[row, length:] = PAD_ID
    return src


@pytest.mark.parametrize("norm_first", [True, False])
def test_one_beam_is_greedy_and_more_beams_score_at_least_as_well(norm_first):
    model, src = _transformer(norm_first), _sources()
    greedy = greedy_decode(model, src, max_len=10)
    assert torch.equal(beam_search(model, src, beam_size=1, max_len=10), greedy)
    for alpha in (0.0, 0.6):
        beam = beam_search(model, src, beam_size=4, length_penalty=alpha, max_len=10)
        # Not a theorem (beam search may prune greedy's path), but it holds in practice; the
        # scores are computed independently by a full forward pass.
        gap = score_sequences(model, src, beam, alpha) - score_sequences(model, src, greedy, alpha)
        assert bool((gap >= -1e-5).all()), gap
    assert not torch.equal(beam_search(model, src, 4, 0.6, max_len=10)[:, :3], greedy[:, :3])


def test_batched_beam_search_equals_one_sentence_at_a_time_and_the_uncached_search():
    model, src = _transformer(), _sources()
    batched = beam_search(model, src, beam_size=3, max_len=10)
    assert torch.equal(beam_search(model, src, beam_size=3, max_len=10, use_cache=False), batched)
    for row, out in zip(src, batched, strict=True):
        alone = beam_search(model, row[row != PAD_ID][None], beam_size=3, max_len=10)[0]
        assert out[: len(alone)].tolist() == alone.tolist()
        assert set(out[len(alone) :].tolist()) <= {PAD_ID}


def test_beam_search_checks_its_arguments():
    model, src = _transformer(), _sources()
    model.train()
    beam_search(model, src, beam_size=2, max_len=3)
    assert model.training  # the mode is restored
    with pytest.raises(ValueError, match="beam_size must be a positive integer, got 0"):
        beam_search(model, src, beam_size=0)
    with pytest.raises(ValueError, match="beam_size=30 exceeds the vocabulary size 24"):
        beam_search(model, src, beam_size=30)
    with pytest.raises(ValueError, match="length_penalty=-1 must be >= 0"):
        beam_search(model, src, length_penalty=-1)
    lengths = torch.tensor([1, 4])
    assert gnmt_length_penalty(lengths, 0.0).tolist() == [1.0, 1.0]
    assert gnmt_length_penalty(lengths, 1.0).tolist() == pytest.approx([1.0, 1.5])


def test_beam_step_keeps_the_best_candidates_of_an_exhaustive_search():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, generator=gen)
    log_probs = torch.randn(2, 3, 5, generator=gen).log_softmax(-1)
    new, origin, token = beam_step(scores, log_probs, 4)
    for b in range(2):
        every = sorted(
            (scores[b, i].item() + log_probs[b, i, v].item() for i in range(3) for v in range(5)),
            reverse=True,
        )
        assert new[b].tolist() == pytest.approx(every[:4])
        implied = scores[b, origin[b]] + log_probs[b, origin[b], token[b]]
        assert implied.tolist() == pytest.approx(new[b].tolist())
