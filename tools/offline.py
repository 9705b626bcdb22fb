"""Fill a folder to carry the course on a USB stick, and install from it with no network.

    make offline-bundle DEST=FOLDER        # with internet, on the kind of laptop the room has
    cd FOLDER/tfx_course && make offline-install OFFLINE=..    # in the room, no network

`fill` writes into FOLDER:
  wheels/       every pin of requirements/lock.txt and the build backend (pyproject.toml's
                build-system), as wheels for this platform and this Python; torch is the build
                `make setup` would pick here (the CPU build on Linux without an NVIDIA GPU)
  data/         the six Multi30k files (multi30k/) and Tatoeba's zip (tatoeba-fra-eng/), each
                checked against its sha256, from the data cache (or $TFX_COURSE_DATA;
                `tfx-course data download` fills it)
  tfx_course/   the course's files as git tracks them (lessons, exercises, Makefile, ...)
  README.txt    what the folder holds, for which platform, and the two commands
The course checkpoint and the student notebooks are package data: they come with tfx_course/.
`install-data` copies data/ into the data cache, checking every file.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path

from tfx_course.data.datasets import DATASETS
from tfx_course.data.download import sha256_file
from tfx_course.files import atomic_open, atomic_write_text
from tfx_course.grading.classroom import course_files

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import install_torch  # noqa: E402 - tools/install_torch.py, beside this script
from check_lock import SOURCE_ONLY  # noqa: E402 - pure-Python pins published as sources only

README = """\
tfx_course for a room without network: {platform}, Python {python}, torch {torch}.

  wheels/          every package the course installs, for this platform and Python only
  data/            the course data (Multi30k, Tatoeba), sha256-checked
  tfx_course/      the course

On each laptop of this kind, after copying this whole folder from the stick:

  cd tfx_course
  make offline-install OFFLINE=..
  make lab

`make offline-install` builds .venv from wheels/ with pip's --no-index (nothing is downloaded),
registers the Jupyter kernel and copies the data into the data cache. Then run
`.venv/bin/tfx-course doctor`: it must end with "Verdict: all good".
"""


def lock_pins(lock: Path = LOCK) -> list[str]:
    """Return every ``name==version`` line of the lock."""
    lines = (line.strip() for line in lock.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def build_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """Return what pip needs to build the course's own package (its build backend)."""
    return tomllib.loads(pyproject.read_text(encoding="utf-8"))["build-system"]["requires"]


def requirements_text(lock: Path = LOCK, pyproject: Path = ROOT / "pyproject.toml") -> str:
    """Return what `fill` downloads besides torch: every other pin, the build backends."""
    pins = [pin for pin in lock_pins(lock) if not pin.lower().startswith("torch==")]
    # pip builds a source-only package (no pyproject.toml) with setuptools and wheel.
    legacy_build = ["wheel"] if SOURCE_ONLY else []
    return "\n".join(pins + build_requirements(pyproject) + legacy_build) + "\n"


def download_commands(
    python: str, wheels: Path, requirements: Path, choice: install_torch.Choice
) -> list[list[str]]:
    """Return the pip commands that fill ``wheels``: torch, then everything else in the lock."""
    download = [python, "-m", "pip", "download", "--disable-pip-version-check"]
    download += ["--only-binary", ":all:", "--dest", str(wheels)]
    torch = [*download, "--no-deps", install_torch.torch_pin(LOCK), *choice.pip_options]
    sources = [arg for name in SOURCE_ONLY for arg in ("--no-binary", name)]
    rest = [*download, *sources, "-r", str(requirements), "-c", str(LOCK)]
    return [torch, rest]


def copy_data(source_root: Path | None, dest: Path) -> list[Path]:
    """Copy every data set's files, all verified, into ``dest/data/<its folder>``."""
    targets = []
    for data in DATASETS.values():
        folder = data.folder(source_root)
        bad = [file for file, state in data.status(source_root).items() if state != "ok"]
        if bad:
            raise SystemExit(
                f"{data.name} is not complete in {folder} ({', '.join(bad)}): run `tfx-course data "
                f"download` first (or set TFX_COURSE_DATA to the folder that holds {folder.name}/)"
            )
        target = dest / "data" / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for file in data.files:
            shutil.copyfile(folder / file, target / file)
        targets.append(target)
    return targets


def install_data(bundle: Path, root: Path | None = None) -> list[Path]:
    """Copy ``bundle/data/`` into the data cache (or ``root``), checking every sha256."""
    targets = []
    for data in DATASETS.values():
        target = data.folder(root)
        source = bundle / "data" / target.name
        for file, digest in data.files.items():
            path = source / file
            if not path.is_file() or sha256_file(path) != digest:
                raise SystemExit(
                    f"{path} is missing or corrupt: copy the folder from the stick again"
                )
            if (target / file).is_file() and sha256_file(target / file) == digest:
                continue
            with atomic_open(target / file, "wb") as out, open(path, "rb") as f:
                shutil.copyfileobj(f, out)
        targets.append(target)
    return targets


def copy_course(root: Path, dest: Path) -> int:
    """Copy the course's files (as git tracks them) into ``dest``; return how many."""
    files = course_files(root)
    for path in files:
        target = dest / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return len(files)


def fill(dest: Path, data_root: Path | None = None) -> None:
    """Fill ``dest`` with the wheels, the data and the course (see the module's docstring)."""
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest} exists and is not empty: give a new folder")
    choice = install_torch.choose(
        platform.system(), install_torch.has_nvidia_gpu, install_torch.index_reachable
    )
    print(f"torch: {choice.reason}", flush=True)
    wheels = dest / "wheels"
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(requirements_text(), encoding="utf-8")
        for command in download_commands(sys.executable, wheels, requirements, choice):
            subprocess.run(command, check=True)
    print(f"data:  {', '.join(str(t) for t in copy_data(data_root, dest))}", flush=True)
    print(f"course: {copy_course(ROOT, dest / 'tfx_course')} files", flush=True)
    torch_wheel = next(wheels.glob("torch-*.whl")).name.split("-")[1]
    text = README.format(platform=platform.platform(), python=platform.python_version(), torch=torch_wheel)  # fmt: skip
    atomic_write_text(dest / "README.txt", text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fill", help="fill a folder with wheels, data and the course")
    f.add_argument("dest", type=Path)
    f.add_argument("--data-root", type=Path, help="folder holding the data (default: the cache)")
    i = sub.add_parser("install-data", help="copy a folder's data into the data cache")
    i.add_argument("bundle", type=Path, help="the folder `fill` wrote")
    args = p.parse_args(argv)
    if args.command == "fill":
        fill(args.dest, args.data_root)
        size = sum(p.stat().st_size for p in args.dest.rglob("*") if p.is_file())
        print(f"{args.dest}: {size / 1e6:.0f} MB; see {args.dest / 'README.txt'}")
    else:
        for target in install_data(args.bundle):
            print(f"data: every file checked and in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
