"""Tests for the notebook tools: stored outputs are normalised; timing runs record."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "tools" / "run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_notebooks)


def _cell(*outputs):
    cell = nbformat.v4.new_code_cell("print('x')")
    cell.outputs = list(outputs)
    return cell


def test_stream_chunks_are_merged_and_other_outputs_kept():
    first = nbformat.v4.new_output("stream", name="stdout", text="a\n")
    second = nbformat.v4.new_output("stream", name="stdout", text="b\n")
    error = nbformat.v4.new_output("stream", name="stderr", text="warn\n")
    third = nbformat.v4.new_output("stream", name="stdout", text="c\n")
    nb = nbformat.v4.new_notebook(cells=[_cell(first, second, error, third)])
    nb.cells[0].metadata["execution"] = {"iopub.status.busy": "2026-01-01"}
    run_notebooks.normalise(nb)
    outputs = nb.cells[0].outputs
    assert [(o.name, o.text) for o in outputs] == [
        ("stdout", "a\nb\n"),
        ("stderr", "warn\n"),
        ("stdout", "c\n"),
    ]
    assert "execution" not in nb.cells[0].metadata
    assert nb.metadata["kernelspec"]["name"] == "tfx-course"


def test_time_lessons_records_times_and_failures_without_touching_the_notebooks(
    tmp_path, load_script
):
    time_lessons = load_script("tools/time_lessons.py")
    good, bad = tmp_path / "00_good.ipynb", tmp_path / "01_bad.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1 + 1")]), good)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 / 0")]), bad)
    before = good.read_text(), bad.read_text()
    out = tmp_path / "times.json"
    code = time_lessons.main([str(good), str(bad), "--out", str(out)])
    assert code == 1, "a notebook failed, so the exit code is 1"
    result = json.loads(out.read_text())
    rows = {r["notebook"]: r for r in result["notebooks"]}
    assert rows["00_good.ipynb"]["error"] is None and rows["00_good.ipynb"]["seconds"] > 0
    assert rows["01_bad.ipynb"]["error"].startswith("CellExecutionError")
    assert "ZeroDivisionError" in rows["01_bad.ipynb"]["error"]
    assert result["total_seconds"] == round(sum(r["seconds"] for r in rows.values()), 1)
    assert result["device"] and (good.read_text(), bad.read_text()) == before


def test_time_lessons_keeps_what_it_timed_when_a_run_is_stopped(tmp_path, monkeypatch, load_script):
    time_lessons = load_script("tools/time_lessons.py")
    timed = iter([{"notebook": "00_a.ipynb", "kind": "lesson", "seconds": 1.5, "error": None}])

    def time_notebook(path, kernel, timeout):  # the second notebook hits the run's time limit
        try:
            return next(timed)
        except StopIteration:
            raise KeyboardInterrupt from None

    monkeypatch.setattr(time_lessons, "time_notebook", time_notebook)
    out = tmp_path / "times.json"
    with pytest.raises(KeyboardInterrupt):
        time_lessons.main(["00_a.ipynb", "01_b.ipynb", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [r["notebook"] for r in result["notebooks"]] == ["00_a.ipynb"]
    assert result["total_seconds"] == 1.5 and [p.name for p in tmp_path.iterdir()] == ["times.json"]


def test_gpu_lessons_script_installs_a_kernel_and_times_the_notebooks_it_is_given(tmp_path):
    # Without wheels (none at $WHEELS) it uses the packages at hand; the kernelspec it
    # installs into a temporary prefix must be the one nbclient finds.
    env = {**os.environ, "WHEELS": str(tmp_path / "no-wheels"), "TFX_COURSE_DATA": str(tmp_path)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", "tools/gpu/gpu_lessons.sh", str(out), "notebooks/00_setup.ipynb"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((out / "lesson_times_gpu.json").read_text())
    assert [r["notebook"] for r in result["notebooks"]] == ["00_setup.ipynb"]
    assert result["notebooks"][0]["error"] is None and (out / "lesson_times_gpu.log").is_file()
