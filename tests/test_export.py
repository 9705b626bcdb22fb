"""Tests for tfx_course.export: the exported programs, ONNX and ExecuTorch give the model's outputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tfx_course import export
from tfx_course.data.batching import pad_sequences
from tfx_course.decoding import greedy_decode
from tfx_course.model import ModelConfig, Transformer
from tfx_course.pretrained import load_course_model

GERMAN = ["Ein Mann mit einem orangefarbenen Hut.", "Zwei Hunde spielen im Schnee.",
          "Eine Frau sitzt auf einer Bank und liest ein Buch."]  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = dataclasses.replace(ModelConfig.tiny(20, 20), fused_attention=True)  # core ATen ops
    model = Transformer(config).eval()
    src = torch.randint(3, 20, (3, 7))
    src[1, 5:] = 0  # padding
    return model, src, export.export_translator(model)


def _step_inputs(model, src, t=4):
    c = model.config
    g = torch.Generator().manual_seed(1)
    cross_k, cross_v = export.eager_runner(export.EncoderProgram(model))(src)
    cache = torch.randn(c.n_decoder_layers, src.shape[0], c.n_heads, t, c.d_head, generator=g)
    token = torch.randint(3, 20, (src.shape[0], 1), generator=g)
    return (token, src, cache, cache.clone(), cross_k, cross_v)


def test_exported_programs_translate_like_greedy_decode(one_thread):
    model, tokenizer = load_course_model()
    src = pad_sequences([tokenizer.encode(t) for t in GERMAN], 0)
    programs = export.export_translator(model)
    c = model.config
    got = export.greedy_translate(
        export.eager_runner(programs.encoder.module()), export.eager_runner(programs.step.module()),
        src, (c.n_decoder_layers, c.n_heads, c.d_head), max_len=40,
    )  # fmt: skip
    assert torch.equal(got, greedy_decode(model, src, max_len=40))
    assert got.shape[1] > 5


def test_the_step_program_grows_the_cache_by_one_position(tiny):
    model, src, programs = tiny
    inputs = _step_inputs(model, src)
    logits, self_k, self_v = export.eager_runner(programs.step.module())(*inputs)
    assert logits.shape == (3, 20) and self_k.shape[3] == self_v.shape[3] == 5
    eager = export.eager_runner(export.DecoderStepProgram(model))
    assert export.max_difference(eager, export.eager_runner(programs.step.module()), [inputs]) < 1e-5  # fmt: skip


def test_onnx_programs_match_pytorch(tiny, tmp_path, one_thread):
    model, src, programs = tiny
    encoder = export.OnnxRunner(export.to_onnx(programs.encoder, tmp_path / "encoder.onnx"))
    step = export.OnnxRunner(export.to_onnx(programs.step, tmp_path / "step.onnx"))
    eager_encoder = export.eager_runner(export.EncoderProgram(model))
    other = torch.randint(3, 20, (2, 11))  # another batch and length: the shapes are dynamic
    assert export.max_difference(eager_encoder, encoder, [(src,), (other,)]) < 1e-4
    eager_step = export.eager_runner(export.DecoderStepProgram(model))
    inputs = [_step_inputs(model, src, t) for t in (0, 1, 6)]
    assert export.max_difference(eager_step, step, inputs) < 1e-4


def test_executorch_program_runs_in_its_runtime(tiny, tmp_path, one_thread):
    model, src, programs = tiny
    path = export.to_executorch(programs.encoder, tmp_path / "encoder.pte", xnnpack=False)
    assert path.stat().st_size > 4 * sum(p.numel() for p in model.encoder.parameters())
    runner = export.ExecuTorchRunner(path)
    eager_encoder = export.eager_runner(export.EncoderProgram(model))
    assert export.max_difference(eager_encoder, runner, [(src,), (src[:1, :4],)]) < 1e-4


def _pair(*outputs):
    return lambda *args: tuple(outputs)


def test_max_difference_compares_every_output_and_says_what_differs():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    assert export.max_difference(_pair(a, a), _pair(a, a), [()]) == 0.0
    assert export.max_difference(_pair(a, a), _pair(a, b), [()]) == 1.0  # the second output
    with pytest.raises(ValueError, match="shape"):
        export.max_difference(_pair(a), _pair(torch.zeros(3)), [()])
    with pytest.raises(ValueError, match="outputs"):
        export.max_difference(_pair(a, a), _pair(a), [()])
    nan = torch.tensor([float("nan"), 0.0])
    assert export.max_difference(_pair(torch.zeros(2)), _pair(nan), [()]) == float("inf")
    assert export.max_difference(_pair(nan), _pair(nan.clone()), [()]) == 0.0


def test_export_translator_rejects_what_is_not_the_course_transformer():
    with pytest.raises(TypeError, match="exports a Transformer"):
        export.export_translator(torch.nn.Linear(2, 2))
