"""Tests for cached decoding: MultiHeadAttention.attend, DecoderLayer.step, Transformer.decode_step."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tfx_course.attention import MultiHeadAttention, padding_mask
from tfx_course.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from tfx_course.decoding import greedy_decode
from tfx_course.model import ModelConfig, Transformer
from tfx_course.repro import seed_everything

VOCAB = 20


def _model(**changes) -> Transformer:
    seed_everything(0)
    config = ModelConfig(VOCAB, VOCAB, d_model=16, n_heads=4, n_encoder_layers=2,
                         n_decoder_layers=2, d_ff=32, dropout=0.1, max_len=16)  # fmt: skip
    model = Transformer(dataclasses.replace(config, **changes))
    with torch.no_grad():  # no PAD or BOS outputs; rows end at different steps (EOS bias)
        model.lm_head.bias[PAD_ID] = model.lm_head.bias[BOS_ID] = -1e4
        model.lm_head.bias[EOS_ID] -= 0.4
    return model.eval()


def _sources() -> torch.Tensor:
    """Four padded sources of lengths 7, 5, 3 and 7."""
    src = torch.randint(4, VOCAB, (4, 7), generator=torch.Generator().manual_seed(1))
    src[:, 0], src[1, 5:], src[2, 3:] = BOS_ID, PAD_ID, PAD_ID
    return src


def _targets() -> torch.Tensor:
    """Teacher-forced targets; the second row ended early and continues with padding."""
    tgt = torch.randint(4, VOCAB, (4, 8), generator=torch.Generator().manual_seed(2))
    tgt[:, 0], tgt[1, 4], tgt[1, 5:] = BOS_ID, EOS_ID, PAD_ID
    return tgt


def _stepwise(model: Transformer, src: torch.Tensor, tgt: torch.Tensor, chunks: list[int]):
    """Feed tgt to decode_step in pieces of the given lengths; return the logits of all positions."""
    cache = model.start_cache(model.encode(src), src)
    logits, start = [], 0
    for size in chunks:
        out, cache = model.decode_step(tgt[:, start : start + size], cache)
        logits.append(out)
        start += size
    assert cache.length == tgt.shape[1]
    return torch.cat(logits, dim=1)  # (B, T, V)


def test_attend_on_projected_keys_and_values_equals_forward():
    seed_everything(0)
    mha = MultiHeadAttention(16, 4).eval()
    query, memory = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    mask = padding_mask(torch.tensor([[True] * 5, [True] * 3 + [False] * 2]))
    for need_weights in (True, False):
        expected, weights = mha(query, memory, memory, mask, need_weights=need_weights)
        k, v = mha.project_kv(memory, memory)
        assert k.shape == v.shape == (2, 4, 5, 4)
        out, again = mha.attend(query, k, v, mask, need_weights=need_weights)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
        assert (again is None) == (weights is None)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("fused_attention", [False, True])
def test_cached_logits_at_every_step_equal_the_full_forward(norm_first, fused_attention):
    model, src, tgt = _model(norm_first=norm_first, fused_attention=fused_attention), _sources(), _targets()  # fmt: skip
    with torch.no_grad():
        full = model(src, tgt)  # (B, T, V)
        one_at_a_time = _stepwise(model, src, tgt, [1] * tgt.shape[1])
        in_pieces = _stepwise(model, src, tgt, [3, 1, 4])  # several new tokens per step work too
    torch.testing.assert_close(one_at_a_time, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(in_pieces, full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("positional", ["learned", "none"])
def test_cache_follows_the_positions_of_every_positional_kind(positional):
    model, src, tgt = _model(positional=positional), _sources(), _targets()
    with torch.no_grad():
        torch.testing.assert_close(_stepwise(model, src, tgt, [1] * 8), model(src, tgt), rtol=0, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("norm_first", [True, False])
def test_cached_greedy_decoding_gives_the_same_tokens(norm_first):
    model, src = _model(norm_first=norm_first), _sources()
    cached = greedy_decode(model, src, max_len=12, use_cache=True)
    uncached = greedy_decode(model, src, max_len=12, use_cache=False)
    assert torch.equal(cached, uncached)
    lengths = [row.index(EOS_ID) + 1 if EOS_ID in row else 12 for row in cached.tolist()]
    assert len(set(lengths)) > 1  # some rows end earlier than others, so padding is exercised


def test_decode_step_returns_a_new_cache_and_leaves_the_old_one_alone():
    model, src, tgt = _model(), _sources(), _targets()
    attributes = {name: dict(vars(module)) for name, module in model.named_modules()}
    with torch.no_grad():
        start = model.start_cache(model.encode(src), src)
        first, after_one = model.decode_step(tgt[:, :1], start)
        again, _ = model.decode_step(tgt[:, :1], start)  # the same cache can be reused
        assert start.length == 0 and after_one.length == 1
        assert all(layer.self_k.shape[2] == 0 for layer in start.layers)
        torch.testing.assert_close(again, first, rtol=0, atol=0)
    after = {name: dict(vars(module)) for name, module in model.named_modules()}
    assert after.keys() == attributes.keys()
    for name, values in after.items():  # nothing was stored on any module
        assert values.keys() == attributes[name].keys(), name
        assert all(values[k] is attributes[name][k] for k in values if k != "training"), name


def test_reordered_cache_equals_decoding_the_reordered_batch():
    model, src, tgt = _model(), _sources(), _targets()
    order = torch.tensor([2, 0, 0, 3])
    with torch.no_grad():
        cache = model.start_cache(model.encode(src), src)
        _, cache = model.decode_step(tgt[:, :3], cache)
        logits, _ = model.decode_step(tgt[order, 3:5], cache.reorder(order))
        expected = model(src[order], tgt[order, :5])[:, 3:5]
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="memory=False keeps the memory's 4 rows"):
        cache.reorder(torch.tensor([0, 1]), memory=False)


def test_decoding_past_max_len_is_a_clear_error():
    model, src = _model(max_len=4), _sources()[:, :4]
    cache = model.start_cache(model.encode(src), src)
    tgt = torch.full((4, 1), BOS_ID)
    with torch.no_grad():
        for _ in range(4):
            _, cache = model.decode_step(tgt, cache)
        with pytest.raises(ValueError, match="position 4 exceeds max_len=4"):
            model.decode_step(tgt, cache)
    with pytest.raises(ValueError, match="tgt holds 2 sequences but the cache 4"):
        model.decode_step(tgt[:2], cache)
