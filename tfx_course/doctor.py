"""The environment doctor: versions, device, threads and course data, with advice.

In a notebook: ``tfx.doctor.run()``; in a terminal: ``tfx-course doctor``.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from tfx_course.data.multi30k import multi30k_folder, multi30k_status
from tfx_course.device import fused_attention_kernels, pick_device, supports_bf16

MIN_PYTHON = (3, 11)
MIN_TORCH = (2, 11)


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's report; ``advice`` is empty when all is well."""

    name: str
    value: str
    advice: str = ""

    @property
    def ok(self) -> bool:
        return not self.advice


@dataclass
class DoctorReport:
    """Everything the doctor found; ``problems`` lists the findings that need action."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    def __getitem__(self, name: str) -> Finding:
        for finding in self.findings:
            if finding.name == name:
                return finding
        raise KeyError(f"no finding named {name!r}; have {[f.name for f in self.findings]}")

    def text(self) -> str:
        width = max(len(f.name) for f in self.findings)
        lines = []
        for f in self.findings:
            mark = "ok " if f.ok else "!! "
            lines.append(f"{mark}{f.name:<{width}}  {f.value}")
            if f.advice:
                lines.append(f"   {'':<{width}}  -> {f.advice}")
        verdict = "all good" if not self.problems else f"{len(self.problems)} problem(s) to fix"
        return "\n".join(lines + [f"Verdict: {verdict}"])

    def __repr__(self) -> str:
        return f"DoctorReport({len(self.findings)} findings, {len(self.problems)} problem(s))"


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _findings() -> list[Finding]:
    py = platform.python_version()
    py_advice = (
        "" if sys.version_info[:2] >= MIN_PYTHON else "install Python 3.11 or newer (3.11.5+)"
    )
    torch_advice = ""
    if _version_tuple(torch.__version__) < MIN_TORCH:
        torch_advice = "torch 2.11+ is needed: run `make lab` to build the course's .venv"
    device = pick_device()
    device_advice = ""
    if device.type == "cpu":
        device_advice = ""  # the CPU tier reaches every lesson; not a problem
    states = multi30k_status()
    missing = [name for name, state in states.items() if state != "ok"]
    data_advice = ""
    if missing:
        data_advice = (
            f"Multi30k is not in {multi30k_folder()} yet ({len(missing)} of {len(states)} files "
            "missing or corrupt). Lesson 08 downloads it; offline, copy the six .gz files there "
            "or set TFX_COURSE_DATA to a folder that holds multi30k/. Lessons 00-07 do not need it."
        )
    return [
        Finding("python", py, py_advice),
        Finding("torch", torch.__version__, torch_advice),
        Finding("numpy", np.__version__),
        Finding("device", _describe(device), device_advice),
        Finding("bf16 autocast", "yes" if supports_bf16(device) else "no (float32 is used)"),
        Finding("fused attention", ", ".join(fused_attention_kernels(device))),
        Finding("threads", f"{torch.get_num_threads()} torch threads"),
        Finding(
            "course data", "Multi30k found" if not missing else "Multi30k missing", data_advice
        ),
    ]


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)}) -> GPU tier"
    if device.type == "mps":
        return "mps (Apple GPU) -> laptop GPU tier"
    return (
        "cpu -> CPU tier (every lesson runs; translation quality comes from the course checkpoint)"
    )


def run(verbose: bool = True) -> DoctorReport:
    """Check the environment, print a report with advice, and return it."""
    report = DoctorReport(_findings())
    if verbose:
        print(report.text())
    return report
