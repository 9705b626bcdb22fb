"""Pick the device the course runs on and describe what it supports."""

from __future__ import annotations

import os

import torch

# Set to "cpu", "cuda", "cuda:1" or "mps" to override the automatic choice. `make test` sets
# it to "cpu": the stored lesson outputs are CPU outputs, so a GPU machine compares those.
DEVICE_ENV = "TFX_COURSE_DEVICE"


def pick_device(prefer: str | None = None) -> torch.device:
    """Return ``prefer``, else ``$TFX_COURSE_DEVICE``, else CUDA, then Apple MPS, then the CPU."""
    source = "asked for"
    if prefer is None and os.environ.get(DEVICE_ENV, "").strip():
        prefer, source = os.environ[DEVICE_ENV].strip(), f"set by {DEVICE_ENV}"
    if prefer is not None:
        return _checked(prefer, source)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def _checked(name: str, source: str) -> torch.device:
    """Return ``torch.device(name)`` if this machine has it, else raise saying what to do."""
    fix = f"pick one this machine has, or unset {DEVICE_ENV} to let the course choose"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device {name!r} ({source}) is not a device name: {err}; {fix}") from err
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": _mps_available()}
    if not available.get(device.type, False):
        raise RuntimeError(f"device {name!r} ({source}) is not available here; {fix}")
    return device


def supports_bf16(device: torch.device) -> bool:
    """Return whether bfloat16 autocast is worth using on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return False


def fused_attention_kernels(device: torch.device) -> list[str]:
    """Name the fused attention kernels ``F.scaled_dot_product_attention`` may use."""
    if device.type != "cuda":
        return ["math (CPU flash kernel for float inputs)"] if device.type == "cpu" else ["math"]
    kernels = []
    if torch.backends.cuda.flash_sdp_enabled():
        kernels.append("flash")
    if torch.backends.cuda.mem_efficient_sdp_enabled():
        kernels.append("memory-efficient")
    if torch.backends.cuda.cudnn_sdp_enabled():
        kernels.append("cudnn")
    return kernels or ["math"]
