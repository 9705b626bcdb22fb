"""Tests for the environment doctor and the `tfx-course doctor` command."""

import importlib
import subprocess
import sys

import torch

from tfx_course.cli import main
from tfx_course.data.cache import MULTI30K_FILES, data_home
from tfx_course.device import pick_device

# `tfx_course.doctor` is both a module and the function it exports; take the module.
doctor_module = importlib.import_module("tfx_course.doctor")


def test_report_names_versions_and_device(monkeypatch, tmp_path):
    monkeypatch.setenv("TFX_COURSE_DATA", str(tmp_path))
    report = doctor_module.doctor(verbose=False)
    assert report["torch"].value == torch.__version__
    assert report["python"].ok
    assert report["device"].value.startswith(pick_device().type)
    assert report["threads"].value.startswith(str(torch.get_num_threads()))


def test_missing_data_gives_advice_with_the_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TFX_COURSE_DATA", str(tmp_path))
    report = doctor_module.doctor(verbose=False)
    data = report["course data"]
    assert not data.ok
    assert str(tmp_path / "multi30k") in data.advice and "6 of 6 files missing" in data.advice
    assert data in report.problems


def test_present_data_is_found(monkeypatch, tmp_path):
    folder = tmp_path / "multi30k"
    folder.mkdir()
    for name in MULTI30K_FILES:
        (folder / name).write_bytes(b"x")
    monkeypatch.setenv("TFX_COURSE_DATA", str(tmp_path))
    assert data_home() == tmp_path
    assert doctor_module.doctor(verbose=False)["course data"].ok


def test_old_torch_is_flagged(monkeypatch):
    monkeypatch.setattr(doctor_module.torch, "__version__", "2.1.0")
    finding = doctor_module.doctor(verbose=False)["torch"]
    assert not finding.ok and "2.11" in finding.advice


def test_printed_report_has_a_verdict(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TFX_COURSE_DATA", str(tmp_path))
    doctor_module.doctor()
    out = capsys.readouterr().out
    assert "!! course data" in out and "-> Multi30k is not in" in out
    assert out.rstrip().endswith("problem(s) to fix")


def test_cli_doctor_strict_exit_code(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TFX_COURSE_DATA", str(tmp_path))
    assert main(["doctor"]) == 0
    assert main(["doctor", "--strict"]) == 1
    assert "Verdict" in capsys.readouterr().out


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "tfx_course.cli", "doctor"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "torch" in result.stdout
