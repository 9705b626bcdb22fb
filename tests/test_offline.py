"""The offline path (tools/offline.py, `make offline-bundle` / `make offline-install`), tested
with fake wheels and pip's --no-index: nothing here touches the network."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tfx_course.data.multi30k import MULTI30K_FILES, multi30k_status
from tfx_course.data.tatoeba import TATOEBA_FILES, tatoeba_status

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def offline(load_script):
    return load_script("tools/offline.py")


def _wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """Write a minimal pure-Python wheel whose module says its own name and version."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",  # fmt: skip
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for member, text in files.items():
            whl.writestr(member, text)
    return path


@pytest.fixture
def isolated_pip(monkeypatch):
    """pip sees no configured index or find-links: only what a command names."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)


def _make_setup_pip_options(folder: Path) -> list[list[str]]:
    """The pip options of each install line `make setup OFFLINE=folder` runs (make -n)."""
    done = subprocess.run(
        ["make", "-n", "-B", "setup", f"OFFLINE={folder}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if "install_torch.py" in line or " -e " in line]  # fmt: skip
    return [shlex.split(line.split("2>&1")[0].split(";", 1)[1]) for line in lines]


def test_make_setup_offline_installs_torch_and_the_course_from_the_folder_only(tmp_path):
    commands = _make_setup_pip_options(tmp_path)
    assert len(commands) == 2, "the torch line and the package line"
    for command in commands:
        at = command.index("--no-index")
        assert command[at : at + 3] == ["--no-index", "--find-links", str(tmp_path / "wheels")]


def test_pip_with_those_options_installs_from_a_folder_and_fetches_nothing(tmp_path, isolated_pip):
    wheels = tmp_path / "wheels"
    _wheel(wheels, "fakecourse", "1.0", ("fakedep==2.0",))
    _wheel(wheels, "fakedep", "2.0")
    options = ["--no-index", "--find-links", str(wheels)]
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    done = subprocess.run([*install, *options, "--target", str(site), "fakecourse"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (site / "fakedep" / "__init__.py").read_text() == "VERSION = '2.0'\n"
    # A wheel missing from the folder is an error, not a download.
    (wheels / "fakedep-2.0-py3-none-any.whl").unlink()
    done = subprocess.run([*install, *options, "--target", str(tmp_path / "site2"), "fakecourse"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "No matching distribution found for fakedep" in done.stderr


def test_install_torch_offline_takes_the_wheel_in_the_folder(load_script, tmp_path, isolated_pip, capsys):  # fmt: skip
    tool = load_script("tools/install_torch.py")
    version = tool.torch_pin().split("==")[1]
    wheels = tmp_path / "wheels"
    _wheel(wheels, "torch", version)
    site = tmp_path / "site"
    argv = ["--no-index", "--find-links", str(wheels), "--target", str(site)]
    assert tool.main(argv) == 0
    assert "offline" in capsys.readouterr().out
    assert (site / "torch" / "__init__.py").read_text() == f"VERSION = {version!r}\n"


def test_fill_downloads_every_pin_of_the_lock_and_the_build_backend(offline, load_script, tmp_path):  # fmt: skip
    install_torch = load_script("tools/install_torch.py")
    lock = [line for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines() if re.match(r"^[A-Za-z0-9_.-]+==", line)]  # fmt: skip
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(offline.requirements_text())
    listed = requirements.read_text().splitlines()
    torch_pin = next(pin for pin in lock if pin.startswith("torch=="))
    assert sorted([*listed, torch_pin]) == sorted(lock + ["setuptools>=77", "wheel"])
    cpu = install_torch.Choice("cpu", "")
    torch, rest = offline.download_commands("py", tmp_path / "wheels", requirements, cpu)
    for command in (torch, rest):
        assert command[:4] == ["py", "-m", "pip", "download"]
        assert command[command.index("--only-binary") + 1] == ":all:"
        assert command[command.index("--dest") + 1] == str(tmp_path / "wheels")
    assert torch_pin in torch and "--no-deps" in torch
    assert torch[torch.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert rest[rest.index("-r") + 1] == str(requirements) and "-c" in rest


def test_the_data_goes_to_the_stick_and_into_the_cache_checked(offline, data_root, tatoeba_root, tmp_path):  # fmt: skip
    assert data_root == tatoeba_root  # one data root holds both, as in the cache
    bundle = tmp_path / "bundle"
    multi30k, tatoeba = offline.copy_data(data_root, bundle)
    assert sorted(p.name for p in multi30k.iterdir()) == sorted(MULTI30K_FILES)
    assert sorted(p.name for p in tatoeba.iterdir()) == sorted(TATOEBA_FILES)
    cache = tmp_path / "cache"
    offline.install_data(bundle, cache)
    assert set(multi30k_status(cache).values()) == {"ok"}
    assert set(tatoeba_status(cache).values()) == {"ok"}
    offline.install_data(bundle, cache)  # again: nothing to do, still fine
    (tatoeba / next(iter(TATOEBA_FILES))).write_bytes(b"not the file")
    with pytest.raises(SystemExit, match="missing or corrupt"):
        offline.install_data(bundle, tmp_path / "other")
    with pytest.raises(SystemExit, match="Multi30k is not complete.*tfx-course data download"):
        offline.copy_data(tmp_path / "empty", tmp_path / "bundle2")


def test_the_course_goes_on_the_stick_as_git_tracks_it(offline, tmp_path):
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    expected = sorted(n for n in tracked.stdout.splitlines() if (ROOT / n).is_file())
    assert offline.copy_course(ROOT, tmp_path / "course") == len(expected)
    got = sorted(p.relative_to(tmp_path / "course").as_posix() for p in (tmp_path / "course").rglob("*") if p.is_file())  # fmt: skip
    assert got == expected


def test_offline_install_needs_the_folder(tmp_path):
    done = subprocess.run(["make", "-s", "offline-install", f"OFFLINE={tmp_path}"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "the folder that make offline-bundle filled" in done.stderr
