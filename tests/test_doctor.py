"""Tests for the environment doctor and the `tfx-course doctor` command."""

import importlib.metadata
import json
import shutil
import subprocess
import sys

import pytest
import torch

import tfx_course
from tfx_course import doctor as doctor_module
from tfx_course.cli import main
from tfx_course.data.multi30k import MULTI30K_FILES, data_home
from tfx_course.device import pick_device
from tfx_course.pretrained import load_course_model


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
    # Lessons 00-07 run without the data: a problem, not one the course needs.
    assert out.rstrip().endswith("Verdict: the course can run; 1 problem(s) to fix (0 needed)")


def test_cli_doctor_strict_exit_code(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TFX_COURSE_DATA", str(tmp_path))
    assert main(["doctor"]) == 0
    assert main(["doctor", "--strict"]) == 1
    assert "Verdict" in capsys.readouterr().out


def _kernel_spec(folder, name: str, python: str) -> None:
    spec = folder / "kernels" / name
    spec.mkdir(parents=True)
    argv = [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name}))


def _script(path, code: int):
    path.write_text(f"#!/bin/sh\nexit {code}\n")
    path.chmod(0o755)
    return str(path)


def test_the_pre_workshop_findings_are_all_there(monkeypatch, data_root):
    monkeypatch.setenv("TFX_COURSE_DATA", str(data_root))
    report = doctor_module.run(verbose=False)
    names = [f.name for f in report.findings]
    for name in ("jupyterlab", "kernel", "course checkpoint", "disk space", "course data"):
        assert name in names
    assert report["jupyterlab"].value == importlib.metadata.version("jupyterlab")
    assert report["kernel"].value == "tfx-course (this Python)"  # make setup registered it
    count = sum(p.numel() for p in load_course_model()[0].parameters())
    assert report["course checkpoint"].value == f"loads ({count / 1e6:.1f}M parameters)"
    assert not report.problems and report.verdict() == "all good"


def _needed_problem(name: str, capsys) -> doctor_module.Finding:
    report = doctor_module.run(verbose=False)
    finding = report[name]
    assert not finding.ok and finding.needed and report.blocking == [finding]
    assert main(["doctor"]) == 1  # what the workshop's pre-check relies on
    assert "Verdict: the course cannot run yet; 1 problem(s) to fix (1 needed)" in capsys.readouterr().out  # fmt: skip
    return finding


@pytest.fixture
def data_present(monkeypatch, data_root):
    monkeypatch.setenv("TFX_COURSE_DATA", str(data_root))


def test_missing_jupyterlab_fails_the_check(monkeypatch, capsys, data_present):
    real = importlib.metadata.version

    def version(name):
        if name == "jupyterlab":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(doctor_module.importlib.metadata, "version", version)
    assert "make setup" in _needed_problem("jupyterlab", capsys).advice


def test_a_missing_kernel_fails_the_check_and_says_how_to_register_it(monkeypatch, capsys, data_present):  # fmt: skip
    monkeypatch.setattr(doctor_module, "KERNEL", "tfx-course-not-registered")
    advice = _needed_problem("kernel", capsys).advice
    assert "python -m ipykernel install --user --name tfx-course-not-registered" in advice


@pytest.mark.parametrize(("python", "value", "ok"), [
    ("gone", "broken", False),
    ("no-course", "(another Python, without tfx_course)", False),
    ("course", "(another Python, with tfx_course)", True),
])  # fmt: skip
def test_a_kernel_of_another_python_must_have_the_course(monkeypatch, tmp_path, python, value, ok):
    executable = {
        "gone": str(tmp_path / "missing-python"),
        "no-course": _script(tmp_path / "python-without", 1),
        "course": _script(tmp_path / "python-with", 0),
    }[python]
    _kernel_spec(tmp_path, "tfx-course-test", executable)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setattr(doctor_module, "KERNEL", "tfx-course-test")
    finding = doctor_module._kernel()
    assert finding.value == f"tfx-course-test {value}" and finding.ok is ok


def test_a_checkpoint_that_does_not_load_fails_the_check(monkeypatch, tmp_path, capsys, data_present):  # fmt: skip
    monkeypatch.setenv("TFX_COURSE_CHECKPOINT", str(tmp_path))  # an empty folder
    advice = _needed_problem("course checkpoint", capsys).advice
    assert "FileNotFoundError" in advice and "model.pt" in advice


def test_too_little_disk_space_fails_the_check(monkeypatch, capsys, data_present):
    monkeypatch.setattr(doctor_module, "MIN_FREE_GB", 1e9)  # more than any disk holds
    finding = _needed_problem("disk space", capsys)
    assert "GB free" in finding.value and "free some space" in finding.advice


def test_disk_space_is_measured_where_the_course_writes(monkeypatch, tmp_path):
    monkeypatch.setenv("TFX_COURSE_DATA", str(tmp_path / "not" / "made" / "yet"))
    free = shutil.disk_usage(tmp_path).free / 1e9
    finding = doctor_module._disk_space([tmp_path, tmp_path / "not" / "made" / "yet"])
    assert finding.value == f"{free:.1f} GB free" and finding.ok


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "tfx_course.cli", "doctor"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "torch" in result.stdout
