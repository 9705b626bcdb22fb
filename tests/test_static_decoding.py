"""Tests for decoding with a preallocated cache (tfx_course.static_decoding, static_decode_step)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tfx_course.data.tokenizers import BOS_ID, EOS_ID, PAD_ID, CharTokenizer
from tfx_course.decoding import beam_search, greedy_decode, translate
from tfx_course.model import ModelConfig, Transformer
from tfx_course.repro import seed_everything
from tfx_course.static_decoding import (
    StaticDecoder,
    beam_search_static,
    greedy_decode_static,
)

VOCAB = 24


def _model(**changes) -> Transformer:
    seed_everything(0)
    config = ModelConfig(VOCAB, VOCAB, d_model=16, n_heads=4, n_encoder_layers=2,
                         n_decoder_layers=2, d_ff=32, dropout=0.1, max_len=16)  # fmt: skip
    model = Transformer(dataclasses.replace(config, **changes))
    with torch.no_grad():  # no PAD or BOS outputs; rows end at different steps (EOS bias)
        model.lm_head.bias[PAD_ID] = model.lm_head.bias[BOS_ID] = -1e4
        model.lm_head.bias[EOS_ID] += 0.5
    return model.eval()


def _sources(seed: int = 1, rows: int = 6) -> torch.Tensor:
    """Padded sources of different lengths (BOS ... EOS)."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (rows, 9), generator=gen)
    lengths = torch.randint(3, 10, (rows,), generator=gen)
    lengths[0] = 9
    src[:, 0] = BOS_ID
    for row, length in enumerate(lengths.tolist()):
        src[row, length - 1], src[row, length:] = EOS_ID, PAD_ID
    return src


def _targets() -> torch.Tensor:
    tgt = torch.randint(4, VOCAB, (6, 8), generator=torch.Generator().manual_seed(2))
    tgt[:, 0], tgt[1, 4], tgt[1, 5:] = BOS_ID, EOS_ID, PAD_ID
    return tgt


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("fused_attention", [False, True])
def test_static_step_logits_equal_the_dynamic_cache_and_the_full_forward(norm_first, fused_attention):  # fmt: skip
    model, src, tgt = _model(norm_first=norm_first, fused_attention=fused_attention), _sources(), _targets()  # fmt: skip
    with torch.no_grad():
        memory = model.encode(src)
        static = model.start_static_cache(memory, src, length=12)
        dynamic = model.start_cache(memory, src)
        for t in range(tgt.shape[1]):
            written = model.static_decode_step(tgt[:, t : t + 1], static)  # (B, 1, V)
            grown, dynamic = model.decode_step(tgt[:, t : t + 1], dynamic)
            torch.testing.assert_close(written, grown, rtol=0, atol=1e-5)
            assert int(static.position) == t + 1
        full = model(src, tgt)
    torch.testing.assert_close(written[:, 0], full[:, -1], rtol=0, atol=1e-5)
    # the buffers hold the same keys as the grown cache, and zeros where nothing was written
    for s, d in zip(static.layers, dynamic.layers, strict=True):
        assert s.self_k.shape == (6, 4, 12, 4)
        torch.testing.assert_close(s.self_k[:, :, :8], d.self_k, rtol=0, atol=1e-6)
        assert not s.self_k[:, :, 8:].any()
    assert torch.equal(static.keep[:, :8], tgt != PAD_ID) and not static.keep[:, 8:].any()


@pytest.mark.parametrize("positional", ["learned", "none"])
def test_static_step_follows_every_positional_kind(positional):
    model, src, tgt = _model(positional=positional), _sources(), _targets()
    with torch.no_grad():
        cache = model.start_static_cache(model.encode(src), src, length=8)
        steps = [model.static_decode_step(tgt[:, t : t + 1], cache) for t in range(8)]
        torch.testing.assert_close(torch.cat(steps, dim=1), model(src, tgt), rtol=0, atol=1e-5)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("pad_to", [1, 8])
def test_static_greedy_gives_the_tokens_of_the_cached_and_uncached_decoders(norm_first, pad_to):
    model, src = _model(norm_first=norm_first), _sources()
    cached = greedy_decode(model, src, max_len=14, use_cache=True)
    uncached = greedy_decode(model, src, max_len=14, use_cache=False)
    static = StaticDecoder(model, pad_to=pad_to).greedy(src, max_len=14)
    assert torch.equal(cached, uncached) and torch.equal(static, cached)
    lengths = [row.index(EOS_ID) + 1 if EOS_ID in row else 14 for row in cached.tolist()]
    assert len(set(lengths)) > 1  # rows end at different steps: padding after EOS is exercised
    assert torch.equal(greedy_decode_static(model, src, max_len=14), cached)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_static_beam_search_gives_the_tokens_of_the_existing_beam_search(beam_size):
    model, src = _model(), _sources()
    expected = beam_search(model, src, beam_size=beam_size, max_len=14)
    uncached = beam_search(model, src, beam_size=beam_size, max_len=14, use_cache=False)
    static = beam_search_static(model, src, beam_size=beam_size, max_len=14)
    assert torch.equal(expected, uncached) and torch.equal(static, expected)
    if beam_size > 1:  # the beams find something greedy does not, so reordering is exercised
        assert not torch.equal(static, greedy_decode(model, src, max_len=14)[:, : static.shape[1]])


def test_one_decoder_reuses_its_buffers_for_batches_of_one_shape():
    model = _model()
    decoder = StaticDecoder(model)
    first, second = _sources(1), _sources(2)
    assert torch.equal(decoder.greedy(first, max_len=10), greedy_decode(model, first, max_len=10))
    assert torch.equal(decoder.greedy(second, max_len=10), greedy_decode(model, second, max_len=10))
    assert decoder.captures == 1  # same shape: the same buffers, restarted
    beams = decoder.beam(second, beam_size=2, max_len=10)
    assert torch.equal(beams, beam_search(model, second, beam_size=2, max_len=10))
    assert decoder.captures == 2


def test_static_translate_equals_translate():
    texts = ["abc", "cab ba", "a", "bbc acb"]
    tokenizer = CharTokenizer.from_texts(texts)
    seed_everything(0)
    config = ModelConfig(tokenizer.vocab_size, tokenizer.vocab_size, d_model=16, n_heads=4,
                         n_encoder_layers=1, n_decoder_layers=1, d_ff=32, max_len=12)  # fmt: skip
    model = Transformer(config).eval()
    decoder = StaticDecoder(model)
    for beam_size in (None, 2):
        args = (texts, tokenizer, tokenizer, 10, 3, beam_size)
        assert decoder.translate(model, *args) == translate(model, *args)
    with pytest.raises(ValueError, match="the model it was built for"):
        decoder.translate(_model(), texts, tokenizer, tokenizer)


def test_static_decoding_checks_its_arguments():
    model, src = _model(), _sources()
    with pytest.raises(ValueError, match="CUDA graphs need the model on a CUDA device"):
        StaticDecoder(model, graphs=True)
    with pytest.raises(
        ValueError, match="max_len=20 must lie between 1 and the model's max_len=16"
    ):
        StaticDecoder(model).greedy(src, max_len=20)
    with pytest.raises(ValueError, match="src must be a"):
        StaticDecoder(model).greedy(src.float())
    with pytest.raises(ValueError, match="length_penalty"):
        StaticDecoder(model).beam(src, length_penalty=-1.0)
    with pytest.raises(ValueError, match="length"):
        model.start_static_cache(model.encode(src), src, length=0)
