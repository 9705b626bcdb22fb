"""Tests for the environment doctor and the `tfx-course doctor` command."""

import subprocess
import sys

import torch

import tfx_course
from tfx_course import doctor as doctor_module
from tfx_course.cli import main
from tfx_course.data.multi30k import MULTI30K_FILES, data_home
from tfx_course.device import pick_device


def test_report_names_versions_and_device(monkeypatch, tmp_path):
    monkeypatch.setenv("TFX_COURSE_DATA", str(tmp_path))
    report = doctor_module.run(verbose=False)
    assert report["torch"].value == torch.__version__
    assert report["python"].ok
    assert report["device"].value.startswith(pick_device().type)
    assert report["threads"].value.startswith(str(torch.get_num_threads()))


def test_missing_data_gives_advice_with_the_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TFX_COURSE_DATA", str(tmp_path))
    report = doctor_module.run(verbose=False)
    data = report["course data"]
    assert not data.ok
    assert str(tmp_path / "multi30k") in data.advice
    assert "6 of 6 files missing or corrupt" in data.advice
    assert data in report.problems


def test_present_data_is_found_and_a_corrupt_file_is_not(monkeypatch, tmp_path, data_root):
    monkeypatch.setenv("TFX_COURSE_DATA", str(data_root))
    assert data_home() == data_root
    assert doctor_module.run(verbose=False)["course data"].ok
    folder = tmp_path / "multi30k"
    folder.mkdir()
    for name in MULTI30K_FILES:
        (folder / name).write_bytes(b"x")  # present, but not the published files
    monkeypatch.setenv("TFX_COURSE_DATA", str(tmp_path))
    assert (
        "6 of 6 files missing or corrupt" in doctor_module.run(verbose=False)["course data"].advice
    )


def test_the_package_attribute_is_the_doctor_module():
    assert tfx_course.doctor is doctor_module and callable(tfx_course.doctor.run)


def test_old_torch_is_flagged(monkeypatch):
    monkeypatch.setattr(doctor_module.torch, "__version__", "2.1.0")
    finding = doctor_module.run(verbose=False)["torch"]
    assert not finding.ok and "2.11" in finding.advice


def test_printed_report_has_a_verdict(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TFX_COURSE_DATA", str(tmp_path))
    doctor_module.run()
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
