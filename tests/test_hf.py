"""Tests for tfx_course.hf: the course model in the transformers conventions."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tfx_course import hf
from tfx_course.data.batching import pad_sequences
from tfx_course.data.tokenizers import BOS_ID
from tfx_course.decoding import greedy_decode
from tfx_course.model import ModelConfig, Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = dataclasses.replace(ModelConfig.tiny(30, 30), tie_embeddings=True)
    return Transformer(config).eval()


def _batch():
    g = torch.Generator().manual_seed(2)
    src = pad_sequences([torch.randint(4, 30, (n,), generator=g).tolist() for n in (6, 3)], 0)
    tgt = torch.cat([torch.full((2, 1), BOS_ID), torch.randint(4, 30, (2, 4), generator=g)], 1)
    return src, tgt


def test_save_and_from_pretrained_give_the_same_logits(model, tmp_path, one_thread):
    folder = hf.save(hf.from_course_model(model), tmp_path / "hf")
    assert {"config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    loaded = hf.load(folder)
    assert loaded.config.to_model_config() == model.config
    src, tgt = _batch()
    with torch.no_grad():
        expected = model(src, tgt)
        got = loaded(input_ids=src, attention_mask=src != 0, decoder_input_ids=tgt).logits
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-5
    tied = loaded.transformer
    assert tied.lm_head.weight.data_ptr() == tied.decoder.embed.embedding.weight.data_ptr()


def test_generate_decodes_like_the_course_greedy_decode(model, one_thread):
    wrapped = hf.from_course_model(model)
    src, _ = _batch()
    for row in range(2):  # one sentence at a time: generate pads finished rows its own way
        one = src[row : row + 1, : int((src[row] != 0).sum())]
        expected = greedy_decode(model, one, max_len=12)
        out = wrapped.generate(input_ids=one, max_new_tokens=12, do_sample=False, num_beams=1)
        assert out[0, 0].item() == BOS_ID
        n = expected.shape[1]
        assert torch.equal(out[:, 1 : n + 1], expected)


def test_from_course_model_copies_instead_of_sharing(model):
    wrapped = hf.from_course_model(model)
    with torch.no_grad():
        wrapped.transformer.lm_head.bias.add_(1.0)
    assert not torch.equal(wrapped.transformer.lm_head.bias, model.lm_head.bias)
    with pytest.raises(TypeError, match="takes a Transformer"):
        hf.from_course_model(torch.nn.Linear(2, 2))
