"""Post-training int8 quantization: the arithmetic from scratch, and torchao for whole models.

An int8 tensor stores each value as one byte ``q`` in [-128, 127] and a float ``scale`` (and
an integer ``zero_point``) shared by a group of values, here a row of a weight matrix:

    q = clamp(round(x / scale) + zero_point, -128, 127),    x ≈ (q - zero_point) * scale.

Symmetric quantization (weights) sets zero_point = 0 and scale = max|x| / 127.5; asymmetric
(affine) quantization maps [min(x, 0), max(x, 0)] onto [-128, 127], so that 0 is exact. The
functions below use torchao's conventions (``choose_qparams_affine``, ``quantize_affine``:
multiply by 1 / scale, round half to even), so their integers equal torchao's exactly.

``quantize_model`` applies torchao's maintained post-training configurations
(``torch.ao.quantization`` is deprecated) to a copy of a model:

- ``"int8-weight-only"``: every ``nn.Linear`` weight in int8, one scale per output row; the
  matrix products dequantize and run in float;
- ``"int8-dynamic"``: the same weights, and each linear layer's input quantized to int8 per
  token at run time, so the product runs in integers.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = [
    "INT8_MIN",
    "INT8_MAX",
    "SCHEMES",
    "symmetric_scale",
    "affine_qparams",
    "quantize",
    "dequantize",
    "quantize_model",
    "saved_bytes",
    "quiet_imports",
]

INT8_MIN, INT8_MAX = -128, 127
SCHEMES = ("int8-weight-only", "int8-dynamic")
# The dynamo ONNX exporter logs every torchvision operator it skips (torchvision is absent).
_ONNX_REGISTRY = "torch.onnx._internal.exporter._registration"
_EPS = torch.finfo(torch.float32).eps  # the smallest scale, as torchao uses for int8


def symmetric_scale(x: Tensor, per_row: bool = True) -> Tensor:
    """Return the symmetric int8 scale max|x| / 127.5 of each row (``per_row``) or of all of ``x``.

    Shapes: x (N, K) -> (N, 1) per row, or () for the whole tensor.
    """
    amax = x.detach().abs().amax(dim=-1, keepdim=True) if per_row else x.detach().abs().amax()
    return (amax / ((INT8_MAX - INT8_MIN) / 2)).clamp(min=_EPS).float()


def affine_qparams(x: Tensor) -> tuple[Tensor, Tensor]:
    """Return the asymmetric (affine) per-tensor int8 ``scale`` and ``zero_point`` of ``x``.

    The range [min(x, 0), max(x, 0)] maps onto [-128, 127]; 0 maps to the integer zero_point.
    """
    low = x.detach().min().clamp(max=0).float()
    high = x.detach().max().clamp(min=0).float()
    scale = ((high - low) / (INT8_MAX - INT8_MIN)).clamp(min=_EPS)
    zero_point = (INT8_MIN - torch.round(low / scale)).clamp(INT8_MIN, INT8_MAX)
    return scale, zero_point.to(torch.int32)


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor | int = 0) -> Tensor:
    """Return the int8 codes clamp(round(x / scale) + zero_point, -128, 127) of ``x``.

    ``scale`` and ``zero_point`` broadcast against ``x`` (one per row: shape (N, 1)).
    """
    # x * (1 / scale), not x / scale: torchao computes it so, and the two can round apart.
    q = torch.round(x.float() * (1.0 / scale)) + zero_point
    return q.clamp(INT8_MIN, INT8_MAX).to(torch.int8)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor | int = 0) -> Tensor:
    """Return the float values (q - zero_point) * scale that int8 codes stand for."""
    return (q.to(torch.int32) - zero_point).float() * scale


@contextlib.contextmanager
def quiet_imports() -> Iterator[None]:
    """Silence the notices torchao and ExecuTorch print on first import on a CPU-only machine.

    torchao tries to load its CUDA kernels and logs each failure, PyTorch logs a note on an
    enum torchao registers, and the ONNX exporter one line per torchvision operator it skips:
    none of it matters here.
    """
    loggers = [
        logging.getLogger(name) for name in ("torchao", "torch.utils._pytree", _ONNX_REGISTRY)
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _torchao_config(scheme: str):  # noqa: ANN202 - a torchao config object
    with quiet_imports():  # torchao logs its CUDA-only kernels failing to load on a CPU
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
        )
    if scheme == "int8-weight-only":
        return Int8WeightOnlyConfig()
    return Int8DynamicActivationInt8WeightConfig()


def quantize_model(model: nn.Module, scheme: str) -> nn.Module:
    """Return a quantized copy of ``model`` (eval mode); ``model`` itself is left as it was.

    ``scheme`` is one of ``SCHEMES``. Every ``nn.Linear`` is quantized, the output layer
    included; a weight the output layer shares with an embedding (tied) gets its own int8
    copy, while the embedding stays float.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    config = _torchao_config(scheme)
    from torchao.quantization import quantize_

    quantized = copy.deepcopy(model).eval()
    quantize_(quantized, config)
    return quantized


def saved_bytes(model: nn.Module) -> int:
    """Return the size of ``model``'s state dict as ``torch.save`` writes it (shared tensors once)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()
