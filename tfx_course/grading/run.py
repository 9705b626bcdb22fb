"""Grade exercise notebooks: run each in a fresh kernel and collect one result per exercise.

Every check reports its verdict twice: the ``PASS [id] ...`` line the learner sees, and a
JSON line in the file named by ``$TFX_COURSE_RESULTS``, which the grader sets for each
kernel (the printed lines are the fallback for a kernel that does not write the file).
A notebook that cannot start, a cell that runs past the time limit or a kernel that dies
fails the exercises it did not reach, with the reason; the other notebooks carry on.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode

from tfx_course.checks.core import (
    NOT_ATTEMPTED,
    RAISE_ENV,
    RESULTS_ENV,
    TIMEOUT_ENV,
    VERDICT_LINE,
    verdict,
)
from tfx_course.grading.classroom import is_backup
from tfx_course.grading.exercises import (
    LESSONS,
    ExerciseError,
    exercise_cells,
    lesson_of,
    student_notebook_path,
)

__all__ = ["ExerciseResult", "NotebookReport", "find_notebooks", "grade", "grade_notebook"]

DEFAULT_KERNEL = "python3"  # jupyter_client starts it with the running interpreter
SETUP_TIMEOUT = 120.0  # seconds the first code cell (the imports) may always take


@dataclass(frozen=True)
class ExerciseResult:
    """One row of the grade table."""

    student: str
    notebook: str
    exercise: str
    passed: bool
    message: str

    @property
    def attempted(self) -> bool:
        return self.passed or not self.message.startswith(NOT_ATTEMPTED)


@dataclass
class NotebookReport:
    """Everything the grader learned from one notebook."""

    student: str
    notebook: str
    path: Path
    results: list[ExerciseResult] = field(default_factory=list)
    error: str | None = None  # why the notebook stopped early, if it did
    seconds: float = 0.0


def find_notebooks(paths: Iterable[Path | str]) -> list[tuple[str, Path]]:
    """Return ``(student, notebook)`` pairs for files and folders of submissions.

    A file belongs to the student named by its folder. In a folder, each subfolder is a
    student (``class/alice/01_self_attention.ipynb`` is alice's); notebooks directly in
    the folder belong to the student named by the folder itself. A course checkout (a folder
    with ``exercises/``: a learner's fork, or a folder of cloned forks, one per student)
    contributes only its ``exercises/NN_topic.ipynb``. Backups that ``tfx-course exercises
    reset`` kept (``NN_topic.bak-K.ipynb``) and hidden folders are skipped.
    """
    found: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            found.append((path.resolve().parent.name, path))
        elif _is_checkout(path):
            found += _checkout_notebooks(path.resolve().name, path)
        else:
            found += _folder_notebooks(path)
    return found


def _is_checkout(folder: Path) -> bool:
    return (folder / "exercises").is_dir()


def _checkout_notebooks(student: str, checkout: Path) -> list[tuple[str, Path]]:
    notebooks = sorted((checkout / "exercises").glob("[0-9][0-9]_*.ipynb"))
    return [(student, nb_path) for nb_path in notebooks if not is_backup(nb_path)]


def _folder_notebooks(folder: Path) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    checkouts = {child.name for child in folder.iterdir() if child.is_dir() and _is_checkout(child)}
    for name in sorted(checkouts):
        found += _checkout_notebooks(name, folder / name)
    for nb_path in sorted(folder.rglob("*.ipynb")):
        relative = nb_path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or is_backup(nb_path):
            continue  # .ipynb_checkpoints and other hidden copies, kept old notebooks
        if relative.parts[0] in checkouts:
            continue
        student = relative.parts[0] if len(relative.parts) > 1 else folder.resolve().name
        found.append((student, nb_path))
    return found


def _not_submitted(
    found: Sequence[tuple[str, Path]], students: set[str], lessons: Sequence[str] | None
) -> list[NotebookReport]:
    """Fail every exercise of a lesson a student has no notebook for.

    The lessons expected are ``lessons``, or else every lesson someone in the room handed in.
    """
    have = {(student, lesson_of(path)) for student, path in found}
    expected = lessons if lessons is not None else sorted({n for _, n in have if n in LESSONS})
    reports = []
    for student in sorted(students):
        for lesson in expected:
            if (student, lesson) in have:
                continue
            try:
                name = student_notebook_path(lesson).name
            except ExerciseError:
                name = f"{lesson}_exercises.ipynb"
            report = NotebookReport(student, name, Path(name))
            reports.append(_fail_all(report, f"not submitted: {student} has no {name}"))
    return reports


def _cell_error(cell: NotebookNode) -> str | None:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".strip()
    return None


def _printed_results(nb: NotebookNode) -> list[dict]:
    """Read verdicts from the ``PASS/FAIL [id]`` lines that checks print."""
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                for word, name, message in VERDICT_LINE.findall(output.get("text", "")):
                    found.append(
                        {"name": name, "passed": word == verdict(True), "message": message}
                    )
    return found


def _missing_reason(nb: NotebookNode, exercise: str, stopped: str | None) -> str:
    """Say why an exercise has no result."""
    if stopped:
        return f"not reached: {stopped}"
    checks, solutions = exercise_cells(nb, "check"), exercise_cells(nb, "solution")
    if exercise not in checks:  # no metadata: look for the call itself
        calls = [i for i, c in enumerate(nb.cells) if f"check_{exercise}(" in c.source]
        checks = {exercise: calls[0]} if calls else {}
    if exercise not in checks:
        return f"no result: the notebook has no cell calling check_{exercise} (deleted?)"
    error = _cell_error(nb.cells[checks[exercise]])
    if error is None:
        return "no result: its check cell did not report (was it run?)"
    message = f"the check did not run: cell {checks[exercise] + 1} raised {error}"
    if exercise in solutions and (solution_error := _cell_error(nb.cells[solutions[exercise]])):
        message += (
            f" (the cell defining it, cell {solutions[exercise] + 1}, raised {solution_error})"
        )
    return message


def _collect(report: NotebookReport, nb: NotebookNode, verdicts: list[dict]) -> None:
    lesson = lesson_of(report.path, nb)
    expected = list(LESSONS.get(lesson or "", ())) or list(exercise_cells(nb, "check"))
    latest = {}
    for found in verdicts:  # a check run twice counts with its last verdict
        latest[str(found.get("name"))] = found
    names = expected + [name for name in latest if name not in expected]
    for name in names:
        if name in latest:
            passed, message = bool(latest[name].get("passed")), str(latest[name].get("message"))
        else:
            passed, message = False, _missing_reason(nb, name, report.error)
        report.results.append(
            ExerciseResult(report.student, report.notebook, name, passed, message)
        )
    if not names:
        message = report.error or "no exercise checks found in this notebook"
        report.results.append(ExerciseResult(report.student, report.notebook, "-", False, message))


def _fail_all(report: NotebookReport, reason: str) -> NotebookReport:
    report.error = reason
    lesson = lesson_of(report.path)
    for name in LESSONS.get(lesson or "", ()) or ("-",):
        report.results.append(ExerciseResult(report.student, report.notebook, name, False, reason))
    return report


def _quiet_arguments(kernel: str) -> list[str]:
    """Keep an IPython kernel's start-up warnings out of the grade report."""
    try:
        argv = KernelSpecManager().get_kernel_spec(kernel).argv
    except Exception:  # an unknown kernel fails later, with nbclient's own message
        return []
    return ["--IPKernelApp.log_level=ERROR"] if any("ipykernel" in a for a in argv) else []


async def _execute(
    nb: NotebookNode, cwd: Path, timeout: float, kernel: str, env: dict[str, str]
) -> str | None:
    """Run every cell; return why the run stopped early, or None."""
    started: list[int] = []
    first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), None)

    def cell_timeout(cell: NotebookNode) -> float:
        # The first code cell imports torch, which can take long on a cold or busy machine.
        is_first = first is not None and cell is nb.cells[first]
        return max(timeout, SETUP_TIMEOUT) if is_first else timeout

    client = NotebookClient(
        nb,
        timeout=timeout,
        timeout_func=cell_timeout,
        kernel_name=kernel,
        allow_errors=True,
        record_timing=False,
        shutdown_kernel="immediate",  # a kernel stuck in a loop would delay a graceful one
        resources={"metadata": {"path": str(cwd)}},
        on_cell_start=lambda cell, cell_index: started.append(cell_index),
        extra_arguments=_quiet_arguments(kernel),
    )

    def cell() -> str:
        return str(started[-1] + 1) if started else "?"

    try:
        await client.async_execute(env=env)
    except CellTimeoutError:
        return f"cell {cell()} did not finish within {timeout:g} s (an endless loop?)"
    except DeadKernelError:
        return f"the kernel died while running cell {cell()} (out of memory, or a crash)"
    except Exception as exc:  # the notebook could not start, or the kernel failed
        return f"the notebook could not run: {type(exc).__name__}: {str(exc).strip()[:300]}"
    return None


async def _grade_one(
    student: str,
    path: Path,
    label: str,
    timeout: float,
    kernel: str,
    check_timeout: float | None,
) -> NotebookReport:
    report = NotebookReport(student, label, path)
    start = time.perf_counter()
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # not JSON, not a notebook, unreadable
        detail = str(exc).split(": '", 1)[0].strip()[:200]  # without the quoted file contents
        return _fail_all(report, f"the notebook could not be read: {type(exc).__name__}: {detail}")
    with tempfile.TemporaryDirectory(prefix="tfx-grade-") as tmp:
        results_file = Path(tmp) / "results.jsonl"
        env = {k: v for k, v in os.environ.items() if k != RAISE_ENV}
        env[RESULTS_ENV] = str(results_file)
        if check_timeout is not None:
            env[TIMEOUT_ENV] = str(check_timeout)
        report.error = await _execute(nb, path.resolve().parent, timeout, kernel, env)
        if results_file.exists():
            lines = results_file.read_text(encoding="utf-8").splitlines()
            verdicts = [json.loads(line) for line in lines if line.strip()]
        else:
            verdicts = _printed_results(nb)
    _collect(report, nb, verdicts)
    report.seconds = time.perf_counter() - start
    return report


async def _grade_all(
    found: Sequence[tuple[str, Path]], jobs: int, **options: object
) -> list[NotebookReport]:
    gate = asyncio.Semaphore(max(1, jobs))

    async def one(student: str, path: Path) -> NotebookReport:
        async with gate:
            return await _grade_one(student, path, path.name, **options)  # type: ignore[arg-type]

    return list(await asyncio.gather(*(one(student, path) for student, path in found)))


def grade(
    paths: Iterable[Path | str],
    timeout: float = 60.0,
    kernel: str = DEFAULT_KERNEL,
    jobs: int = 1,
    check_timeout: float | None = None,
    lessons: Sequence[str] | None = None,
    student: str | None = None,
) -> list[NotebookReport]:
    """Grade notebooks and folders of submissions; return one report per notebook.

    ``timeout`` limits each cell (seconds), ``check_timeout`` each call a check makes into
    learner code, ``jobs`` how many notebooks run at once, ``kernel`` the kernel name.
    ``lessons`` (e.g. ["01", "02"]) grades only those lessons' notebooks; a student without
    one of them gets its exercises as failed rows, as does a student who lacks a notebook that
    others in the room handed in. ``student`` names the owner of every notebook found.
    """
    found = find_notebooks(paths)
    if student is not None:
        found = [(student, path) for _, path in found]
    if lessons is not None:
        found = [(name, path) for name, path in found if lesson_of(path) in lessons]
    students = {name for name, _ in found} | ({student} if student is not None else set())
    options = {"timeout": timeout, "kernel": kernel, "check_timeout": check_timeout}
    reports = asyncio.run(_grade_all(found, jobs, **options))
    return reports + _not_submitted(found, students, lessons)


def grade_notebook(
    path: Path | str,
    student: str | None = None,
    timeout: float = 60.0,
    kernel: str = DEFAULT_KERNEL,
    check_timeout: float | None = None,
) -> NotebookReport:
    """Grade one notebook (options as in ``grade``); the student defaults to its folder's name."""
    path = Path(path)
    student = student or path.resolve().parent.name
    return asyncio.run(_grade_one(student, path, path.name, timeout, kernel, check_timeout))
