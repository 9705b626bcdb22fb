"""Tests for tools/check_lock.py and for the Python versions the project states."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check_lock(load_script):
    return load_script("tools/check_lock.py")


def _pyproject(tmp_path: Path, requires: str, versions: list[str]) -> Path:
    classifiers = ", ".join(f'"Programming Language :: Python :: {v}"' for v in versions)
    path = tmp_path / "pyproject.toml"
    path.write_text(
        f'[project]\nname = "x"\nrequires-python = "{requires}"\nclassifiers = [{classifiers}]\n'
    )
    return path


def test_supported_versions_come_from_the_classifiers_and_requires_python(check_lock, tmp_path):
    path = _pyproject(tmp_path, ">=3.11.5", ["3.13", "3.11", "3.12"])
    assert check_lock.supported_pythons(path) == ["3.11.5", "3.12", "3.13"]
    assert check_lock.previous("3.11.5") == "3.10"
    with pytest.raises(SystemExit, match="requires-python"):
        check_lock.supported_pythons(_pyproject(tmp_path, ">=3.10", ["3.11", "3.12"]))


def test_a_resolution_is_judged_against_the_lock(check_lock):
    locked = check_lock.pins("torch==2.13.0\nNumPy==2.4.6  # pinned\n# comment\n")
    assert locked == {"torch": "2.13.0", "numpy": "2.4.6"}
    same = {**locked, "pywinpty": "3.1.2", "setuptools": "80", "nvidia-nccl-cu13": "2.29.7"}
    assert check_lock.verdict(True, "", same, locked) == (
        "installs (adds, unpinned: pywinpty, 1 CUDA packages)"
    )
    moved = {**locked, "numpy": "2.3.0"}
    assert "other versions than the lock: numpy" in check_lock.verdict(True, "", moved, locked)
    assert check_lock.verdict(False, "no wheels", {}, locked) == "cannot install (no wheels)"


def test_readme_and_environment_state_the_versions_pyproject_supports(check_lock):
    pythons = check_lock.supported_pythons()
    lowest, highest = pythons[0], pythons[-1]
    readme = (ROOT / "README.md").read_text()
    assert f"Python {lowest.rsplit('.', 1)[0]} ({lowest} or newer) to {highest}" in readme
    env_text = (ROOT / "environment.yml").read_text()
    assert f"Python {lowest} to {highest}" in env_text
    env = yaml.safe_load(env_text)
    conda_python = next(d for d in env["dependencies"] if str(d).startswith("python="))
    assert conda_python.split("=")[1] in [
        p.rsplit(".", 1)[0] if p.count(".") == 2 else p for p in pythons
    ]


def test_ci_checks_the_lock_beside_the_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M) and re.search(r"^make check-lock$", ci, re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^check-lock: setup\n\t\$\(BIN\)/python tools/check_lock.py$", makefile, re.M)
