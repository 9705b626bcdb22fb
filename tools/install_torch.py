"""Install the lock's torch into this Python: the CPU build where CUDA could not be used.

    python tools/install_torch.py             # what `make setup` runs, with the venv's Python
    python tools/install_torch.py --dry-run   # say which build it would install, install nothing
    python tools/install_torch.py --build cpu # force a build (auto, cpu or default)

On Linux, PyPI's torch wheel is the CUDA build, which pulls several GB of NVIDIA libraries. On a
Linux machine without an NVIDIA GPU (no `nvidia-smi`, no /proc/driver/nvidia) the CPU build is
taken from PyTorch's CPU index, given to pip as an extra index next to PyPI (the CPU build is
`torch==X+cpu`, which pip prefers to PyPI's `X`; every other package keeps coming from PyPI with
the lock's pins). Where that index cannot be reached within a few seconds (a network that lets
only PyPI through), the default index is used. On macOS (Apple's GPU through MPS) and Windows,
PyPI's wheel is the one to use, and on Linux with an NVIDIA GPU, PyPI's CUDA build. Afterwards it
prints which build was installed; `tfx-course doctor` shows it too (`2.13.0+cpu` is the CPU
build, `+cuNNN` a CUDA build, no suffix PyPI's build).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_TIMEOUT = 5.0  # seconds to wait for the CPU index before falling back
BUILDS = ("auto", "cpu", "default")


class Choice(NamedTuple):
    """Which torch build to install: ``"cpu"`` (PyTorch's CPU index) or ``"default"``."""

    build: str
    reason: str

    @property
    def pip_options(self) -> list[str]:
        return ["--extra-index-url", CPU_INDEX] if self.build == "cpu" else []


def torch_pin(lock: Path = LOCK) -> str:
    """Return the lock's ``torch==X`` line."""
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("torch=="):
            return line.strip()
    raise SystemExit(f"{lock} has no torch==X line: run `make lock`")


def has_nvidia_gpu(
    which: Callable[[str], str | None] = shutil.which, driver: Path = Path("/proc/driver/nvidia")
) -> bool:
    """Return whether this machine shows an NVIDIA driver (``nvidia-smi`` or /proc/driver/nvidia)."""
    return which("nvidia-smi") is not None or driver.exists()


def index_reachable(url: str = CPU_INDEX, timeout: float = PROBE_TIMEOUT) -> bool:
    """Return whether ``url``'s torch page answers within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(f"{url}/torch/", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def choose(
    system: str, gpu: Callable[[], bool], reachable: Callable[[], bool], build: str = "auto"
) -> Choice:
    """Decide which torch build to install; ``gpu`` and ``reachable`` are asked only if needed."""
    if build == "default":
        return Choice("default", "the default index, as asked (--build default)")
    if build == "cpu":
        return Choice("cpu", f"the CPU build from {CPU_INDEX}, as asked (--build cpu)")
    if system != "Linux":
        name = {"Darwin": "macOS (the build with Apple's MPS)", "Windows": "Windows"}.get(
            system, system
        )
        return Choice("default", f"{name}: PyPI's build, which has no CUDA libraries here")
    if gpu():
        return Choice("default", "Linux with an NVIDIA GPU: the CUDA build from the default index")
    if not reachable():
        return Choice(
            "default",
            f"Linux without an NVIDIA GPU, but {CPU_INDEX} is unreachable: the default index "
            "(a local CPU wheel in pip's find-links, else PyPI's CUDA build)",
        )
    return Choice("cpu", f"Linux without an NVIDIA GPU: the CPU build from {CPU_INDEX}")


def pip_command(python: str, pin: str, choice: Choice, extra: Sequence[str] = ()) -> list[str]:
    """Return the pip command that installs ``pin`` as ``choice`` says, within the lock."""
    quiet = ["--quiet", "--disable-pip-version-check"]
    return [python, "-m", "pip", "install", *quiet, pin, "-c", str(LOCK), *choice.pip_options, *extra]  # fmt: skip


def installed_build(python: str) -> str:
    """Return e.g. ``torch 2.13.0+cpu (CPU build)`` for the torch that ``python`` imports."""
    code = "import torch; print(torch.__version__); print(torch.version.cuda or '')"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        return "torch does not import: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    version, cuda = (done.stdout.splitlines() + ["", ""])[:2]
    if cuda:
        return f"torch {version} (CUDA {cuda} build)"
    kind = "CPU build" if version.endswith("+cpu") else "no CUDA libraries"
    return f"torch {version} ({kind})"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", choices=BUILDS, default="auto", help="auto (default), cpu or default")
    p.add_argument("--dry-run", action="store_true", help="say what would be installed, and stop")
    args, pip_extra = p.parse_known_args(argv)  # the rest goes to pip (e.g. --no-index)
    if "--no-index" in pip_extra:  # offline: the build is the wheel in the given folder
        choice = Choice("default", "offline, from the wheels given to pip (--no-index)")
    else:
        choice = choose(platform.system(), has_nvidia_gpu, index_reachable, args.build)
    pin = torch_pin()
    print(f"torch: {pin}, {choice.reason}", flush=True)
    if args.dry_run:
        return 0
    command = pip_command(sys.executable, pin, choice, pip_extra)
    done = subprocess.run(command)
    if done.returncode != 0 and choice.build == "cpu" and args.build == "auto":
        print(f"torch: installing from {CPU_INDEX} failed; trying the default index", flush=True)
        done = subprocess.run(pip_command(sys.executable, pin, Choice("default", ""), pip_extra))
    if done.returncode != 0:
        return done.returncode
    print(f"torch: installed {installed_build(sys.executable)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
