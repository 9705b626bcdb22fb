"""Check that requirements/lock.txt installs on every supported Python and platform.

For each Python version that pyproject.toml supports and each platform below, uv resolves the
whole lock file for that Python and platform, wheels only, without installing anything
(`uv pip compile requirements/lock.txt --python-version X --python-platform Y --only-binary
:all:`). Unlike `pip --platform`, uv evaluates dependency markers for the target, so a package
that only that platform needs (pywinpty on Windows, say) shows up too; such packages are listed,
not pinned. The Python just below the supported range is tried as well and must fail, so that
the stated range is the real one. `make check-lock` runs this; it needs the package index.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
# uv's target triples; torch's macOS wheels need macOS 14 (MACOSX_DEPLOYMENT_TARGET below).
PLATFORMS = {
    "Linux x86-64": "x86_64-manylinux_2_28",
    "Linux aarch64": "aarch64-manylinux_2_28",
    "macOS arm64": "aarch64-apple-darwin",
    "Windows x86-64": "x86_64-pc-windows-msvc",
}
MACOS = "14.0"
# Pure-Python packages published as source archives only (hydra-core and omegaconf, which
# ExecuTorch needs, pin this one): building them needs no compiler, so they may be built.
SOURCE_ONLY = ("antlr4-python3-runtime",)


def supported_pythons(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """Return the oldest release of each Python pyproject.toml supports, e.g. ["3.11.5", "3.12"].

    The versions are the classifiers' 3.N; the first one starts at requires-python's patch
    release when that names one (a pin may need e.g. 3.11.5, not 3.11.0).
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    found = [
        m.group(1)
        for c in project.get("classifiers", [])
        if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))
    ]
    if not found:
        raise SystemExit(f"{pyproject} names no 'Programming Language :: Python :: 3.N' classifier")
    found.sort(key=lambda v: int(v.split(".")[1]))
    lowest = re.fullmatch(r">=\s*(3\.\d+(\.\d+)?)", project.get("requires-python", "").strip())
    if not lowest or lowest.group(1).split(".")[:2] != found[0].split("."):
        raise SystemExit(f"requires-python should be '>={found[0]}[.P]', like the first classifier")
    return [lowest.group(1), *found[1:]]


def previous(version: str) -> str:
    """Return the Python minor version just below ``version`` ("3.11.5" -> "3.10")."""
    major, minor = version.split(".")[:2]
    return f"{major}.{int(minor) - 1}"


def pins(text: str) -> dict[str, str]:
    """Return {normalised name: version} of the ``name==version`` lines of a requirements text."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if m:
            found[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return found


def resolve(python: str, platform: str, lock: Path = LOCK) -> tuple[bool, str, dict[str, str]]:
    """Resolve ``lock`` for ``python`` on ``platform``: (ok, last error line, resolved pins)."""
    uv = Path(sysconfig.get_path("scripts")) / ("uv.exe" if os.name == "nt" else "uv")
    env = {**os.environ, "MACOSX_DEPLOYMENT_TARGET": MACOS}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "resolved.txt"
        done = subprocess.run(
            [str(uv), "pip", "compile", str(lock), "--python-version", python,
             "--python-platform", platform, "--only-binary", ":all:",
             *(arg for name in SOURCE_ONLY for arg in ("--no-binary", name)), "--no-header",
             "--quiet", "--output-file", str(out)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        resolved = pins(out.read_text()) if out.exists() else {}
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    because = next((line for line in lines if "only supports" in line or "no wheels" in line), "")
    return done.returncode == 0, because or (lines[-1] if lines else ""), resolved


def conditional(text: str) -> set[str]:
    """Return the normalised names the lock pins with an environment marker (``name==v ; ...``)."""
    found = set()
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==[^\s;#]+\s*;", line.strip())
        if m:
            found.add(re.sub(r"[-_.]+", "-", m.group(1)).lower())
    return found


def verdict(
    ok: bool, error: str, resolved: dict[str, str], locked: dict[str, str],
    only_some: set[str] = frozenset(),
) -> str:  # fmt: skip
    """Say in one line what resolving gave, against the lock's pins.

    A package in ``only_some`` (pinned with a marker) may be left out where its marker is false.
    """
    if not ok:
        return f"cannot install ({error})"
    moved = sorted(
        n
        for n in locked
        if resolved.get(n) != locked[n] and not (n in only_some and n not in resolved)
    )
    if moved:
        return f"resolves other versions than the lock: {', '.join(moved)}"
    extra = sorted(set(resolved) - set(locked) - {"pip", "setuptools", "wheel"})
    cuda = [n for n in extra if n.startswith(("nvidia-", "cuda-", "triton"))]
    named = [n for n in extra if n not in cuda] + ([f"{len(cuda)} CUDA packages"] if cuda else [])
    return "installs" + (f" (adds, unpinned: {', '.join(named)})" if named else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="resolutions at once")
    args = parser.parse_args(argv)
    pythons = supported_pythons()
    below = previous(pythons[0])
    jobs = [(below, "Linux x86-64")] + [(py, name) for py in pythons for name in PLATFORMS]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: resolve(job[0], PLATFORMS[job[1]]), jobs))
    locked, failed = pins(LOCK.read_text()), 0
    only_some = conditional(LOCK.read_text())
    for (py, name), (ok, error, resolved) in zip(jobs, results, strict=True):
        line = verdict(ok, error, resolved, locked, only_some)
        if line.startswith("installs") != (py != below):
            failed += 1
            line += "  <- unexpected"
        print(f"Python {py:<7} {name:<15} {line}")
    print(f"supported: Python {pythons[0]} to {pythons[-1]} on {', '.join(PLATFORMS)}")
    if failed:
        print(f"{failed} unexpected result(s): fix the pins or the supported versions")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
