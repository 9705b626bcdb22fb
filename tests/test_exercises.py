"""The exercise notebooks: conventions of the sources, the generator, and the CI workflow."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml

from tfx_course import checks
from tfx_course.cli import main
from tfx_course.grading.exercises import (
    BEGIN,
    END,
    LESSONS,
    ExerciseError,
    build,
    exercise_cells,
    lesson_of,
    strip_solutions,
    student_notebook,
)

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "exercises" / "solutions"
SOURCES = sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def test_committed_student_notebooks_are_up_to_date():
    package_copy = ROOT / "tfx_course" / "student_notebooks"  # what the wheel ships for reset
    results = build(SOLUTIONS, ROOT / "exercises", check=True, copy_to=package_copy)
    stale = [str(r.target.relative_to(ROOT)) for r in results if r.stale]
    assert not stale, f"stale student notebooks {stale}: run `tfx-course exercises build`"


def test_build_check_command_reports_up_to_date(capsys):
    assert (
        main(
            [
                "exercises",
                "build",
                "--solutions",
                str(SOLUTIONS),
                "--out",
                str(ROOT / "exercises"),
                "--check",
            ]
        )
        == 0
    )
    assert "up to date" in capsys.readouterr().out


def test_every_lesson_has_its_solution_notebook():
    assert sorted(lesson_of(p) for p in SOURCES) == sorted(LESSONS)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_solution_notebook_follows_the_conventions(path):
    nb = _read(path)
    lesson = lesson_of(path, nb)
    assert lesson == lesson_of(path.name)  # metadata and file name agree
    assert list(exercise_cells(nb, "check")) == list(LESSONS[lesson])
    assert list(exercise_cells(nb, "solution")) == list(LESSONS[lesson])
    for exercise, index in exercise_cells(nb, "check").items():
        assert f"tfx.checks.check_{exercise}(" in nb.cells[index].source
        assert callable(getattr(checks, f"check_{exercise}"))
        assert nb.cells[index].metadata["nbgrader"]["grade_id"] == f"{exercise}_check"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                "store sources without outputs"
            )
            compile(cell.source, path.name, "exec")
    lessons = sorted((ROOT / "notebooks").glob(f"{lesson}_*.ipynb"))
    if lessons:  # an exercise is named like its lesson
        assert path.name in [p.name for p in lessons]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_student_notebook_has_no_answers(path):
    nb = _read(ROOT / "exercises" / path.name)
    solutions = exercise_cells(nb, "solution")
    assert list(solutions) == list(LESSONS[lesson_of(path, nb)])
    for exercise, index in solutions.items():
        source = nb.cells[index].source
        assert BEGIN not in source and END not in source
        assert f"raise NotImplementedError(\"exercise '{exercise}'" in source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            compile(cell.source, path.name, "exec")


def test_strip_solutions_keeps_indentation_and_the_rest():
    source = (
        "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n"
    )
    stripped = strip_solutions(source, "f")
    assert stripped == (
        "def f(x):\n    y = 1\n    # YOUR CODE HERE\n"
        "    raise NotImplementedError(\"exercise 'f': write your code here\")\n"
    )


def test_strip_solutions_handles_several_regions_and_markdown():
    source = f"{BEGIN}\na = 1\n{END}\nb = 2\n{BEGIN}\nc = 3\n{END}"
    assert strip_solutions(source, "x").count("raise NotImplementedError") == 2
    assert "b = 2" in strip_solutions(source, "x")
    assert strip_solutions(f"Answer:\n{BEGIN}\nsecret\n{END}", "x", markdown=True) == (
        "Answer:\n_Your answer here._"
    )


@pytest.mark.parametrize(
    "source",
    [f"{BEGIN}\na = 1", f"a = 1\n{END}", f"{BEGIN}\n{BEGIN}\n{END}"],
    ids=["open", "close", "nested"],
)
def test_unbalanced_markers_are_rejected(source):
    with pytest.raises(ExerciseError):
        strip_solutions(source, "x")


def test_a_solution_cell_without_metadata_is_rejected():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"{BEGIN}\nx = 1\n{END}")])
    with pytest.raises(ExerciseError, match="does not mark it as a solution"):
        student_notebook(nb)


def test_build_writes_then_reports_stale(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    first = build(SOLUTIONS, out)
    assert all(r.stale for r in first) and len(first) == len(SOURCES)
    assert not any(r.stale for r in build(SOLUTIONS, out, check=True))
    target = first[0].target
    target.write_text(target.read_text().replace("YOUR CODE HERE", "my answer"))
    assert [r.target for r in build(SOLUTIONS, out, check=True) if r.stale] == [target]


def test_lesson_of_reads_metadata_then_file_name():
    nb = nbformat.v4.new_notebook(metadata={"tfx_course": {"lesson": "05"}})
    assert lesson_of("anything.ipynb", nb) == "05"
    assert lesson_of("alice/03_positional_encoding.ipynb") == "03"
    assert lesson_of("notes.ipynb") is None


def test_grade_workflow_runs_the_grader_on_push():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "grade.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "push" in triggers
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "make setup" in runs
    assert ".venv/bin/tfx-course grade" in runs and "--junit" in runs
    assert workflow["env"]["LESSONS_FILE"].startswith("exercises/")
