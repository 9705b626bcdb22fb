"""The exercises under nbgrader itself: lay out a course, generate, autograde, compare verdicts.

The guide promises that instructors can use nbgrader unchanged. This runs nbgrader's own
commands on lesson 01 for three students and checks that nbgrader's points agree, exercise by
exercise, with the course's grader on the same submissions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbgrader.api import Gradebook

from tfx_course.cli import main
from tfx_course.grading.exercises import BEGIN, LESSONS, exercise_cells
from tfx_course.grading.run import grade

ASSIGNMENT = "01_self_attention"
NAME = f"{ASSIGNMENT}.ipynb"
CORRECT = "q @ k.transpose(-2, -1) / math.sqrt(d_k)"  # the source's attention_scores answer
UNSCALED = "q @ k.transpose(-2, -1)"  # carol forgets 1 / sqrt(d_k)


def _nbgrader(course: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TFX_COURSE_RAISE_ON_FAIL"}
    # nbgrader runs `alembic` from PATH, as in an activated venv.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args, "--force"],
        cwd=course,
        env=env,  # the course's nbgrader_config.py must switch the checks to raising by itself
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _submit(course: Path) -> None:
    source = course / "source" / ASSIGNMENT / NAME
    release = course / "release" / ASSIGNMENT / NAME
    carol = nbformat.read(source, as_version=4)
    cell = carol.cells[exercise_cells(carol, "solution")["attention_scores"]]
    assert CORRECT in cell.source
    cell.source = cell.source.replace(CORRECT, UNSCALED)
    for student, nb in (
        ("alice", nbformat.read(source, as_version=4)),  # every answer right
        ("bob", nbformat.read(release, as_version=4)),  # hands in the release untouched
        ("carol", carol),  # one answer wrong
    ):
        folder = course / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / NAME)


def test_nbgrader_grades_the_exercises_like_the_course_grader(tmp_path):
    course = tmp_path / "course"
    assert main(["exercises", "nbgrader", str(course), "01"]) == 0
    assert (course / "nbgrader_config.py").is_file()
    _nbgrader(course, "generate_assignment", ASSIGNMENT)
    released = nbformat.read(course / "release" / ASSIGNMENT / NAME, as_version=4)
    assert not any(BEGIN in c.source or CORRECT in c.source for c in released.cells)

    _submit(course)
    _nbgrader(course, "autograde", ASSIGNMENT)
    points: dict[tuple[str, str], float] = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for student in ("alice", "bob", "carol"):
            submission = gradebook.find_submission(ASSIGNMENT, student)
            for notebook in submission.notebooks:
                for g in notebook.grades:
                    points[(student, g.name.removesuffix("_check"))] = g.score
    exercises = LESSONS["01"]
    assert set(points) == {(s, e) for s in ("alice", "bob", "carol") for e in exercises}

    expected = {(s, e): s == "alice" or (s == "carol" and e != "attention_scores")
                for s, e in points}  # fmt: skip
    assert {key: score == 1.0 for key, score in points.items()} == expected

    reports = grade([course / "submitted" / s / ASSIGNMENT / NAME for s in ("alice", "bob", "carol")], jobs=3)  # fmt: skip
    ours = {(r.path.parent.parent.name, x.exercise): x.passed for r in reports for x in r.results}
    assert ours == expected

    graded = nbformat.read(course / "autograded" / "carol" / ASSIGNMENT / NAME, as_version=4)
    check = graded.cells[exercise_cells(graded, "check")["attention_scores"]]
    feedback = "".join(o.get("evalue", "") + o.get("text", "") for o in check.outputs)
    assert "CheckFailed" in [o.get("ename") for o in check.outputs]
    assert "missing scaling" in feedback


def test_nbgrader_layout_keeps_an_existing_config_and_rejects_unknown_lessons(tmp_path, capsys):
    course = tmp_path / "course"
    course.mkdir()
    (course / "nbgrader_config.py").write_text("c = get_config()\n")
    assert main(["exercises", "nbgrader", str(course)]) == 0
    assert (course / "nbgrader_config.py").read_text() == "c = get_config()\n"
    out = capsys.readouterr().out
    assert "kept" in out and "TFX_COURSE_RAISE_ON_FAIL=1" in out
    copied = sorted(p.parent.name for p in (course / "source").glob("*/*.ipynb"))
    assert [name[:2] for name in copied] == sorted(LESSONS)
    for path in (course / "source").glob("*/*.ipynb"):  # answers kept, outputs cleared
        nb = nbformat.read(path, as_version=4)
        assert any(BEGIN in c.source for c in nb.cells)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert main(["exercises", "nbgrader", str(tmp_path / "other"), "01", "42"]) == 1
    assert "no solution notebook for lesson(s) 42" in capsys.readouterr().err
