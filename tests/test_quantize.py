"""Tests for tfx_course.quantize: int8 arithmetic from scratch, equal to torchao's, and whole models."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from tfx_course import quantize
from tfx_course.model import ModelConfig, Transformer


def _weight(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 20, generator=g) * torch.linspace(0.1, 3.0, 12)[:, None]
    w[3] = 0.0  # a row of zeros: the scale must not be 0
    return w


def test_symmetric_codes_round_trip_within_half_a_step():
    w = _weight()
    scale = quantize.symmetric_scale(w)  # (12, 1)
    q = quantize.quantize(w, scale)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (12, 1)
    assert int(q.abs().max()) <= 127 and bool((scale > 0).all())
    error = (quantize.dequantize(q, scale) - w).abs()
    assert bool((error <= scale * 0.5001).all())  # half a step, up to float rounding
    assert torch.equal(q[3], torch.zeros(20, dtype=torch.int8))
    # each row's largest magnitude lands on an end code: +-127.5 rounds to -128 or (clamped) 127
    assert set(q.int().abs().amax(dim=1)[[0, 5, 11]].tolist()) <= {127, 128}


def test_affine_parameters_map_the_range_onto_int8_with_zero_exact():
    x = torch.tensor([-0.5, 0.0, 0.25, 2.0, 3.5])
    scale, zero_point = quantize.affine_qparams(x)
    torch.testing.assert_close(scale, torch.tensor(4.0 / 255))
    q = quantize.quantize(x, scale, zero_point)
    assert int(q.min()) == -128 and int(q.max()) == 127
    assert quantize.dequantize(q[1:2], scale, zero_point).item() == 0.0
    positive = torch.tensor([1.0, 2.0])  # the range is widened to include 0
    assert int(quantize.quantize(positive, *quantize.affine_qparams(positive))[0]) > -128


def test_codes_and_scales_equal_torchao_for_a_linear_layer(one_thread):
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    layer = nn.Linear(20, 12)
    with torch.no_grad():
        layer.weight.copy_(_weight(1))
    ours_q = quantize.quantize(layer.weight, quantize.symmetric_scale(layer.weight))
    quantize_(layer, Int8WeightOnlyConfig())
    theirs = layer.weight
    assert torch.equal(ours_q, theirs.qdata)
    torch.testing.assert_close(quantize.symmetric_scale(_weight(1)).flatten(), theirs.scale.flatten())  # fmt: skip


@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_quantize_model_returns_a_smaller_close_copy(scheme, one_thread):
    torch.manual_seed(0)
    config = dataclasses.replace(ModelConfig.tiny(40, 40), d_model=64, d_ff=256, tie_embeddings=True)  # fmt: skip
    model = Transformer(config).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = quantize.quantize_model(model, scheme)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert type(quantized.encoder.layers[0].ff.linear1.weight).__name__ == "Int8Tensor"
    assert type(model.encoder.layers[0].ff.linear1.weight) is nn.Parameter
    src = torch.randint(3, 40, (2, 7))
    tgt = torch.randint(3, 40, (2, 5))
    with torch.no_grad():
        exact, approx = model(src, tgt), quantized(src, tgt)
    relative = (approx - exact).norm() / exact.norm()
    assert 0 < relative.item() < 0.05
    assert quantize.saved_bytes(quantized) < 0.75 * quantize.saved_bytes(model)


def test_quantize_model_names_the_schemes():
    with pytest.raises(ValueError, match="scheme must be one of"):
        quantize.quantize_model(nn.Linear(2, 2), "int4")
