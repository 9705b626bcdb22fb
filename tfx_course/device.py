"""Pick the device the course runs on and describe what it supports."""

from __future__ import annotations

import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """Return ``prefer`` if given, else CUDA, then Apple MPS, then the CPU."""
    if prefer is not None:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {prefer!r} was asked for but CUDA is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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
