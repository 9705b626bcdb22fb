"""The environment doctor: versions, device, threads and course data, with advice.

In a notebook: ``tfx.doctor.run()``; in a terminal: ``tfx-course doctor``, the check to run
before a workshop. Besides Python and torch it checks what the course needs to open and run:
JupyterLab, the ``tfx-course`` kernel the notebooks ask for, the course checkpoint (package
data) and free disk space. A finding marked as not needed (the course data, which lesson 08
downloads) is advice only; ``tfx-course doctor`` exits with 1 when a needed one fails.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tfx_course.data.multi30k import data_home, multi30k_folder, multi30k_status
from tfx_course.device import fused_attention_kernels, pick_device, supports_bf16
from tfx_course.pretrained import load_course_model

MIN_PYTHON = (3, 11)
MIN_TORCH = (2, 11)
KERNEL = "tfx-course"  # the kernel every notebook of the course asks for
KERNEL_DISPLAY = "Python (tfx_course)"
MIN_FREE_GB = 1.0  # the lessons write little (data 1.3 MB, a smoke-run checkpoint); keep room


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's report; ``advice`` is empty when all is well.

    ``needed``: the course cannot run without it (``tfx-course doctor`` then exits with 1).
    """

    name: str
    value: str
    advice: str = ""
    needed: bool = True

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

    @property
    def blocking(self) -> list[Finding]:
        """The problems the course cannot run with."""
        return [f for f in self.problems if f.needed]

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
        return "\n".join(lines + [f"Verdict: {self.verdict()}"])

    def verdict(self) -> str:
        """Say whether the course is ready: all good, or how many problems, and which needed."""
        if not self.problems:
            return "all good"
        needed = len(self.blocking)
        ready = "the course cannot run yet" if needed else "the course can run"
        return f"{ready}; {len(self.problems)} problem(s) to fix ({needed} needed)"

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
    return [
        Finding("python", py, py_advice),
        Finding("torch", torch.__version__, torch_advice),
        Finding("numpy", np.__version__),
        _jupyterlab(),
        _kernel(),
        Finding("device", _describe(device)),  # the CPU tier reaches every lesson
        Finding("bf16 autocast", "yes" if supports_bf16(device) else "no (float32 is used)"),
        Finding("fused attention", ", ".join(fused_attention_kernels(device))),
        Finding("threads", f"{torch.get_num_threads()} torch threads"),
        _course_checkpoint(),
        _disk_space([Path.cwd(), data_home()]),
        _course_data(),
    ]


def _course_data() -> Finding:
    states = multi30k_status()
    missing = [name for name, state in states.items() if state != "ok"]
    if not missing:
        return Finding("course data", "Multi30k found", needed=False)
    advice = (
        f"Multi30k is not in {multi30k_folder()} yet ({len(missing)} of {len(states)} files "
        "missing or corrupt). Lesson 08 downloads it; before a workshop, run `tfx-course data "
        "download`; offline, copy the six .gz files there or set TFX_COURSE_DATA to a folder "
        "that holds multi30k/. Lessons 00-07 do not need it."
    )
    return Finding("course data", "Multi30k missing", advice, needed=False)


def _jupyterlab() -> Finding:
    try:
        return Finding("jupyterlab", importlib.metadata.version("jupyterlab"))
    except importlib.metadata.PackageNotFoundError:
        advice = (
            "JupyterLab opens the lessons: run `make setup` in the course folder (conda: "
            "`conda env create -f environment.yml`)"
        )
        return Finding("jupyterlab", "missing", advice)


def _kernel() -> Finding:
    command = (
        f'python -m ipykernel install --user --name {KERNEL} --display-name "{KERNEL_DISPLAY}"'
    )
    fix = f"run `make setup`, or in the course's environment `{command}`"
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError:
        return Finding("kernel", "jupyter_client missing", f"the notebooks need Jupyter: {fix}")
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        advice = f"the notebooks run in the kernel {KERNEL!r}, which is not registered: {fix}"
        return Finding("kernel", f"{KERNEL} missing", advice)
    python = shutil.which(spec.argv[0]) if spec.argv else None
    if python is None:
        advice = f"the kernel {KERNEL!r} starts a Python that no longer exists: {fix}"
        return Finding("kernel", f"{KERNEL} broken", advice)
    if Path(python).absolute() == Path(sys.executable).absolute():
        return Finding("kernel", f"{KERNEL} (this Python)")
    if not _imports_the_course(python):
        advice = f"the kernel {KERNEL!r} starts a Python without the course installed: {fix}"
        return Finding("kernel", f"{KERNEL} (another Python, without tfx_course)", advice)
    return Finding("kernel", f"{KERNEL} (another Python, with tfx_course)")


def _imports_the_course(python: str) -> bool:
    """Return whether ``python`` can find the tfx_course package (without importing torch)."""
    import subprocess

    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('tfx_course') is None)"
    try:
        return subprocess.run([python, "-c", code], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _course_checkpoint() -> Finding:
    try:
        model, _ = load_course_model()
    except Exception as exc:  # reported with advice, whatever went wrong
        advice = (
            f"{type(exc).__name__}: {exc}. It ships inside the package "
            "(tfx_course/course_checkpoint/): reinstall the course with `make setup`"
        )
        return Finding("course checkpoint", "does not load", advice)
    count = sum(p.numel() for p in model.parameters())
    return Finding("course checkpoint", f"loads ({count / 1e6:.1f}M parameters)")


def _disk_space(places: list[Path]) -> Finding:
    """Report the free space where the course writes (the least of ``places``)."""
    free = min(shutil.disk_usage(_existing(place)).free for place in places) / 1e9
    if free >= MIN_FREE_GB:
        return Finding("disk space", f"{free:.1f} GB free")
    advice = (
        f"the course and its data need about {MIN_FREE_GB:g} GB free in the course folder and "
        f"in {data_home()}; free some space"
    )
    return Finding("disk space", f"{free:.2f} GB free", advice)


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


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
