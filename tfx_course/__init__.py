"""tfx_course: the helper library of a course that builds the Transformer from first principles.

Shape legend, used in every docstring and shape comment:

    B  batch size              T  target / query length     S  source / key length
    C  d_model                 H  number of heads           D  d_head = C // H
    V  vocabulary size

Everything is batch-first. Masks are boolean with True = "may attend" and broadcast to
(B, H, T, S).

Usage in the notebooks: ``import tfx_course as tfx`` and qualified names, e.g.
``tfx.attention.MultiHeadAttention`` or ``tfx.doctor.run()``.
"""

from tfx_course import (
    attention,
    baselines,
    checkpoint,
    checks,
    data,
    decoding,
    device,
    diagnosis,
    doctor,
    evaluation,
    families,
    interpret,
    layers,
    lowresource,
    model,
    modern,
    pretrained,
    repro,
    training,
    transfer,
    translation,
    tuning,
)
from tfx_course.repro import seed_everything, setup_notebook

__version__ = "0.1.0"
_ON_FIRST_USE = ("viz", "quantize", "export", "hf", "serve")


def __getattr__(name: str):  # noqa: ANN202 - PEP 562 module attribute hook
    # viz needs matplotlib, which a bare GPU machine may lack, and the deployment modules
    # need torchao, onnx, ExecuTorch, transformers or starlette: import them on first use only,
    # so ``import tfx_course`` works with torch, tokenizers and sacrebleu alone.
    if name in _ON_FIRST_USE:
        import importlib

        return importlib.import_module(f"tfx_course.{name}")
    raise AttributeError(f"module 'tfx_course' has no attribute {name!r}")


__all__ = [
    "__version__",
    "attention",
    "baselines",
    "checkpoint",
    "checks",
    "data",
    "decoding",
    "device",
    "diagnosis",
    "doctor",
    "evaluation",
    "export",
    "families",
    "hf",
    "interpret",
    "layers",
    "lowresource",
    "model",
    "modern",
    "pretrained",
    "quantize",
    "repro",
    "seed_everything",
    "serve",
    "setup_notebook",
    "training",
    "transfer",
    "translation",
    "tuning",
    "viz",
]
