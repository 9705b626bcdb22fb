"""Running a room: a fresh exercise notebook, the lessons reached, a template for students' forks."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import nbformat
import pytest
import yaml

from tfx_course.cli import main
from tfx_course.grading.classroom import (
    LESSONS_FILE,
    backup_path,
    is_backup,
    make_template,
    parse_lessons,
    read_lessons,
    reset_exercise,
)
from tfx_course.grading.cli import _find_exercise
from tfx_course.grading.exercises import (
    BEGIN,
    LESSONS,
    STUDENT_NOTEBOOKS,
    ExerciseError,
    build,
    student_notebook_path,
)
from tfx_course.grading.run import find_notebooks

ROOT = Path(__file__).resolve().parents[1]
NAME = "03_positional_encoding.ipynb"


# --- the packaged student notebooks -------------------------------------------------------


def test_the_package_carries_every_student_notebook_up_to_date_and_without_answers():
    results = build(ROOT / "exercises" / "solutions", ROOT / "exercises", True, STUDENT_NOTEBOOKS)
    packaged = [r for r in results if r.target.parent == STUDENT_NOTEBOOKS]
    assert len(packaged) == len(LESSONS)
    assert not [r.target.name for r in packaged if r.stale], "run `tfx-course exercises build`"
    for lesson in LESSONS:
        path = student_notebook_path(lesson)
        assert path.read_bytes() == next(ROOT.glob(f"exercises/{lesson}_*.ipynb")).read_bytes()
        assert BEGIN not in path.read_text()


# --- tfx-course exercises reset NN ---------------------------------------------------------


def _edited(folder: Path, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / NAME
    nb = nbformat.read(STUDENT_NOTEBOOKS / NAME, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(text))
    nbformat.write(nb, path)
    return path


def test_reset_gives_a_fresh_notebook_and_keeps_each_old_one(tmp_path):
    folder = tmp_path / "exercises"
    _edited(folder, "my first try")
    fresh, backup = reset_exercise("03", folder)
    assert fresh == folder / NAME and backup == folder / "03_positional_encoding.bak-1.ipynb"
    assert fresh.read_bytes() == (ROOT / "exercises" / NAME).read_bytes()
    assert "my first try" in backup.read_text()
    _edited(folder, "my second try")
    fresh, backup = reset_exercise("3", folder)  # "3" is lesson 03
    assert backup.name == "03_positional_encoding.bak-2.ipynb"
    assert "my second try" in backup.read_text() and "my first try" not in backup.read_text()
    assert sorted(p.name for p in folder.iterdir()) == [
        "03_positional_encoding.bak-1.ipynb",
        "03_positional_encoding.bak-2.ipynb",
        NAME,
    ]


def test_reset_of_a_notebook_that_is_gone_keeps_nothing(tmp_path):
    fresh, backup = reset_exercise("01", tmp_path)
    assert backup is None and fresh.name == "01_self_attention.ipynb" and fresh.is_file()


@pytest.mark.parametrize(
    ("lesson", "fragment"),
    [("00", "lesson 00 has no exercises"), ("99", "lesson 99 has no exercises"), ("x", "got 'x'")],
)
def test_reset_refuses_a_lesson_without_exercises(tmp_path, lesson, fragment, capsys):
    with pytest.raises(ExerciseError, match=fragment):
        reset_exercise(lesson, tmp_path)
    assert main(["exercises", "reset", lesson, "--folder", str(tmp_path)]) == 2
    assert fragment in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_reset_command_names_both_files(tmp_path, capsys):
    _edited(tmp_path, "work")
    assert main(["exercises", "reset", "03", "--folder", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"kept        {tmp_path / '03_positional_encoding.bak-1.ipynb'}" in out
    assert f"fresh       {tmp_path / NAME}" in out
    assert main(["exercises", "reset", "03", "--folder", str(tmp_path / "nowhere")]) == 2


def test_backups_are_neither_checked_nor_graded(tmp_path):
    _edited(tmp_path, "work")
    reset_exercise("03", tmp_path)
    assert is_backup(tmp_path / "03_positional_encoding.bak-1.ipynb") and not is_backup(NAME)
    assert _find_exercise("03", tmp_path) == tmp_path / NAME
    assert [p.name for _, p in find_notebooks([tmp_path])] == [NAME]
    assert backup_path(tmp_path / NAME).name == "03_positional_encoding.bak-2.ipynb"


# --- the lessons reached so far --------------------------------------------------------


def test_the_lessons_file_is_read_with_comments_ranges_of_forms_and_all(tmp_path):
    assert parse_lessons("# reached so far\n01\n2, 03  # three\n\n") == ["01", "02", "03"]
    assert parse_lessons("all") == list(LESSONS)
    with pytest.raises(ExerciseError, match=r"LESSONS, line 2: lesson 99 has no exercises"):
        parse_lessons("01\n99", "LESSONS")
    with pytest.raises(ExerciseError, match="lists no lesson"):
        parse_lessons("# nothing yet\n")
    with pytest.raises(ExerciseError, match="cannot read the lessons file"):
        read_lessons(tmp_path / "missing")


def test_the_committed_lessons_file_is_the_one_the_workflow_reads():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "grade.yml").read_text())
    assert workflow["env"]["LESSONS_FILE"] == LESSONS_FILE.as_posix()
    assert read_lessons(ROOT / LESSONS_FILE) == ["01"]
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert '.venv/bin/tfx-course grade . --lessons-from "$LESSONS_FILE"' in runs
    assert '--student "$STUDENT"' in runs


def test_a_checkout_contributes_only_its_exercise_notebooks(tmp_path):
    for fork in ("alice", "bob"):
        for name in ("exercises/01_self_attention.ipynb", "exercises/solutions/01_x.ipynb",
                     "notebooks/01_self_attention.ipynb", "exercises/02_m.bak-1.ipynb"):  # fmt: skip
            (tmp_path / fork / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / fork / name).write_text("{}")
    (tmp_path / "carol").mkdir()
    (tmp_path / "carol" / "01_self_attention.ipynb").write_text("{}")
    found = [(s, p.relative_to(tmp_path).as_posix()) for s, p in find_notebooks([tmp_path])]
    assert found == [
        ("alice", "alice/exercises/01_self_attention.ipynb"),
        ("bob", "bob/exercises/01_self_attention.ipynb"),
        ("carol", "carol/01_self_attention.ipynb"),
    ]
    assert find_notebooks([tmp_path / "alice"]) == [("alice", tmp_path / found[0][1])]


# --- a template for students' repositories -------------------------------------------------


def test_the_template_is_the_course_without_solutions(tmp_path):
    dest = tmp_path / "template"
    written = make_template(ROOT, dest, ["01", "02"])
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    expected = {
        name
        for name in tracked.stdout.splitlines()
        if not name.startswith("exercises/solutions/") and (ROOT / name).is_file()
    }
    got = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert got == expected and len(set(written)) == len(got)
    assert not (dest / "exercises" / "solutions").exists()
    for notebook in dest.rglob("*.ipynb"):
        assert BEGIN not in notebook.read_text(), notebook
    assert read_lessons(dest / LESSONS_FILE) == ["01", "02"]
    for lesson in LESSONS:  # every student notebook is there to work on
        assert len(list((dest / "exercises").glob(f"{lesson}_*.ipynb"))) == 1
    with pytest.raises(ExerciseError, match="not empty"):
        make_template(ROOT, dest)
    with pytest.raises(ExerciseError, match="not the course folder"):
        make_template(tmp_path, tmp_path / "other")


def test_a_template_is_graded_by_the_lessons_it_lists_as_its_workflow_does(tmp_path, capsys):
    dest = tmp_path / "alice-fork"
    assert main(["exercises", "template", str(dest), "--lessons", "01", "02", "--source", str(ROOT)]) == 0  # fmt: skip
    assert "without exercises/solutions/" in capsys.readouterr().out
    (dest / "exercises" / "02_multi_head_attention.ipynb").unlink()  # never handed in
    table = tmp_path / "grade.csv"
    argv = ["grade", str(dest), "--lessons-from", str(dest / LESSONS_FILE)]
    assert main([*argv, "--student", "alice", "--csv", str(table)]) == 1
    with open(table, newline="") as f:
        rows = [(r["student"], r["exercise"], r["message"]) for r in csv.DictReader(f)]
    assert [(s, e) for s, e, _ in rows] == [
        ("alice", e) for e in LESSONS["01"] + LESSONS["02"]
    ]  # lesson 03 onwards not graded
    messages = [m for _, _, m in rows]
    assert all(m.startswith("not attempted yet") for m in messages[:5])
    assert all(m == "not submitted: alice has no 02_multi_head_attention.ipynb" for m in messages[5:])  # fmt: skip
