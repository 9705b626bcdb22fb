"""The grader: a class folder of simulated students, and the pieces that need no kernel."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

from tfx_course.cli import main
from tfx_course.grading.cli import _unexpected
from tfx_course.grading.exercises import LESSONS, exercise_cells
from tfx_course.grading.report import format_table, summary, write_markdown
from tfx_course.grading.run import ExerciseResult, NotebookReport, _collect, find_notebooks

ROOT = Path(__file__).resolve().parents[1]
NAME = "01_self_attention.ipynb"
SOLUTION = ROOT / "exercises" / "solutions" / NAME
STUDENT = ROOT / "exercises" / NAME
CELL_TIMEOUT = 4  # seconds per cell; the first cell (imports) always gets longer

# bob's answers: one raises, one hangs, one returns NaN, and a stray endless loop at top level.
BOB = {
    "attention_scores": "def attention_scores(q, k):\n    raise ValueError('bad shapes')",
    "causal_mask": "def causal_mask(size):\n    while True:\n        pass",
    "masked_softmax": "def masked_softmax(scores, mask):\n    return scores * float('nan')",
}


def _bob(path: Path) -> None:
    nb = nbformat.read(SOLUTION, as_version=4)
    solutions = exercise_cells(nb, "solution")
    for exercise, source in BOB.items():
        nb.cells[solutions[exercise]].source = source
    stray = nbformat.v4.new_code_cell("while True:  # forgot to stop\n    pass")
    nb.cells.insert(exercise_cells(nb, "check")["attention"], stray)
    nbformat.write(nb, path)


def _eve(path: Path) -> None:
    """A correct notebook whose kernel dies before the fourth check."""
    nb = nbformat.read(SOLUTION, as_version=4)
    crash = nbformat.v4.new_code_cell("import os\n\nos._exit(1)")
    nb.cells.insert(exercise_cells(nb, "check")["masked_softmax"], crash)
    nbformat.write(nb, path)


STUDENTS = ("alice", "bob", "carol", "dave", "eve", "frank")
NAME_02 = "02_multi_head_attention.ipynb"


def _grade_class(folder: Path) -> tuple[int, dict, Path]:
    """Grade alice (correct), bob (partly wrong), carol (broken file), dave (untouched), eve
    (kernel dies), frank (lesson 02 only, untouched, and an old copy of 01 kept by a reset)."""
    for student in STUDENTS:
        (folder / student).mkdir()
    (folder / "alice" / NAME).write_text(SOLUTION.read_text())
    (folder / "frank" / NAME_02).write_text((ROOT / "exercises" / NAME_02).read_text())
    (folder / "frank" / NAME.replace(".ipynb", ".bak-1.ipynb")).write_text(SOLUTION.read_text())
    _bob(folder / "bob" / NAME)
    (folder / "carol" / NAME).write_text(SOLUTION.read_text()[:500])  # truncated upload
    (folder / "dave" / NAME).write_text(STUDENT.read_text())
    _eve(folder / "eve" / NAME)
    junit, table = folder / "report.xml", folder / "report.csv"
    argv = ["grade", str(folder), "--jobs", "5", "--timeout", str(CELL_TIMEOUT)]
    argv += ["--check-timeout", "1", "--junit", str(junit), "--csv", str(table)]
    code = main(argv)
    with open(table, newline="") as f:
        rows = {(r["student"], r["exercise"]): r for r in csv.DictReader(f)}
    return code, rows, junit


def test_grading_a_class_folder(tmp_path, capsys):
    # One kernel run per notebook for every assertion below: kernels are the slow part.
    code, rows, junit = _grade_class(tmp_path)
    assert code == 1, "some exercise failed, so the exit code is 1"
    # A notebook someone else handed in and a student did not counts as failed rows for them.
    assert set(rows) == {(s, e) for s in STUDENTS for e in LESSONS["01"] + LESSONS["02"]}

    def verdict(student, exercise):
        return rows[(student, exercise)]["passed"] == "1", rows[(student, exercise)]["message"]

    for exercise in LESSONS["01"]:
        assert verdict("alice", exercise)[0], verdict("alice", exercise)
        assert not verdict("carol", exercise)[0]
        assert "could not be read" in verdict("carol", exercise)[1]
        assert not verdict("dave", exercise)[0]
        assert verdict("dave", exercise)[1].startswith("not attempted yet")

    assert verdict("bob", "padding_mask")[0]
    assert "raised ValueError: bad shapes" in verdict("bob", "attention_scores")[1]
    assert "did not return within 1 s" in verdict("bob", "causal_mask")[1]
    assert "NaN" in verdict("bob", "masked_softmax")[1]
    passed, message = verdict("bob", "attention")
    assert not passed and message.startswith("not reached: cell")
    assert f"did not finish within {CELL_TIMEOUT} s" in message

    for exercise in LESSONS["01"][:3]:
        assert verdict("eve", exercise)[0]
    for exercise in LESSONS["01"][3:]:
        assert verdict("eve", exercise)[1].startswith("not reached: the kernel died")
    for exercise in LESSONS["01"]:  # frank's old copy (a reset's backup) is not graded
        assert verdict("frank", exercise) == (False, f"not submitted: frank has no {NAME}")
    for student in STUDENTS:
        for exercise in LESSONS["02"]:
            passed, message = verdict(student, exercise)
            assert not passed
            expected = "not attempted yet" if student == "frank" else "not submitted"
            assert message.startswith(expected), (student, message)

    # The room's progress: attention_scores passed for alice and eve, failed for the other four.
    rates = capsys.readouterr().out.split("Pass rate per exercise (6 students):\n")[1]
    lines = {line.split()[1]: line.split() for line in rates.splitlines() if line.strip()}
    assert lines["attention_scores"][:6] == ["01", "attention_scores", "2", "of", "6", "33%"]
    assert lines["split_heads"][:6] == ["02", "split_heads", "0", "of", "6", "0%"]
    assert list(lines) == list(LESSONS["01"] + LESSONS["02"])

    root = ET.parse(junit).getroot()
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == len(rows)
    failed = {
        (c.get("classname").split(".")[0], c.get("name"))
        for c in cases
        if c.find("failure") is not None
    }
    assert failed == {key for key, row in rows.items() if row["passed"] == "0"}
    assert int(root.get("failures")) == len(failed)


# --- pieces that need no kernel ---------------------------------------------------------


def _report(student: str, verdicts: list[tuple[str, bool, str]]) -> NotebookReport:
    report = NotebookReport(student, NAME, Path(NAME))
    report.results = [ExerciseResult(student, NAME, e, p, m) for e, p, m in verdicts]
    return report


def test_expect_not_attempted_accepts_only_untouched_exercises():
    untouched = _report("dave", [("causal_mask", False, "not attempted yet: ...")])
    crashed = _report("eve", [("causal_mask", False, "not reached: the kernel died")])
    passed = _report("fay", [("causal_mask", True, "ok")])
    assert _unexpected([untouched], "not-attempted") == []
    assert len(_unexpected([crashed, passed], "not-attempted")) == 2
    assert len(_unexpected([untouched, passed], "pass")) == 1


def test_missing_results_are_explained():
    nb = nbformat.read(SOLUTION, as_version=4)
    checks = exercise_cells(nb, "check")
    error = {"output_type": "error", "ename": "NameError", "evalue": "name 'x' is not defined"}
    nb.cells[checks["causal_mask"]].outputs = [nbformat.from_dict(error)]
    del nb.cells[checks["attention"]]
    report = NotebookReport("x", NAME, Path(NAME))
    verdicts = [{"name": "attention_scores", "passed": True, "message": "ok"}]
    verdicts += [{"name": "extra_check", "passed": False, "message": "from a lesson"}]
    _collect(report, nb, verdicts)
    by_name = {r.exercise: r for r in report.results}
    assert [r.exercise for r in report.results] == [*LESSONS["01"], "extra_check"]
    assert by_name["attention_scores"].passed
    assert (
        "cell" in by_name["causal_mask"].message and "NameError" in by_name["causal_mask"].message
    )
    assert "no cell calling check_attention" in by_name["attention"].message
    assert "did not report" in by_name["padding_mask"].message


def test_find_notebooks_names_students_by_folder(tmp_path):
    for name in ("alice/01_a.ipynb", "bob/sub/02_b.ipynb", "bob/.ipynb_checkpoints/01_a.ipynb"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    (tmp_path / "03_c.ipynb").write_text("{}")
    found = [(s, p.relative_to(tmp_path).as_posix()) for s, p in find_notebooks([tmp_path])]
    assert found == [
        (tmp_path.name, "03_c.ipynb"),
        ("alice", "alice/01_a.ipynb"),
        ("bob", "bob/sub/02_b.ipynb"),
    ]
    assert find_notebooks([tmp_path / "alice" / "01_a.ipynb"])[0][0] == "alice"


def test_table_summary_and_markdown(tmp_path):
    reports = [
        _report("bob", [("a", False, "bad | thing")]),
        _report("alice", [("a", True, "fine")]),
    ]
    lines = format_table(reports).splitlines()
    assert lines[0].split() == ["student", "notebook", "exercise", "result", "message"]
    assert lines[2].split()[:4] == ["alice", NAME, "a", "PASS"] and lines[3].endswith("bad | thing")
    assert summary(reports) == "1 of 2 exercises passed (2 students, 2 notebooks)"
    write_markdown(reports, tmp_path / "t.md")
    assert "bad \\| thing" in (tmp_path / "t.md").read_text()


@pytest.mark.parametrize(
    "argv", [["check", "xx"], ["check", "01", "--path", "nowhere.ipynb"], ["grade", "nowhere"]]
)
def test_cli_rejects_bad_arguments_with_a_message(argv, capsys):
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err
