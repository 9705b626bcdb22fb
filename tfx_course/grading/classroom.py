"""Running a room: a fresh exercise notebook, the lessons reached so far, a student template.

``reset_exercise`` gives a learner a fresh copy of one exercise notebook from the package
(it needs no solutions) and keeps the old one beside it as ``NN_topic.bak-K.ipynb``, a name
the grader and ``tfx-course check`` skip. ``read_lessons`` reads the small file that says which
lessons a fork's grading workflow grades (``exercises/LESSONS_REACHED``). ``make_template``
copies the course without ``exercises/solutions/``, for a class's template repository.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tfx_course.files import atomic_write_text
from tfx_course.grading.exercises import LESSONS, ExerciseError, student_notebook_path

__all__ = [
    "LESSONS_FILE",
    "is_backup",
    "backup_path",
    "reset_exercise",
    "read_lessons",
    "parse_lessons",
    "make_template",
    "course_files",
]

LESSONS_FILE = Path("exercises") / "LESSONS_REACHED"  # in a course checkout or a fork
_BACKUP = re.compile(r"\.bak-([0-9]+)\.ipynb$")
# Never part of a template: solutions, environments, caches and build outputs.
_NOT_COPIED = {".git", ".venv", "build", "node_modules", "__pycache__", ".ipynb_checkpoints",
               ".pytest_cache", ".ruff_cache", "runs", "dist"}  # fmt: skip


def is_backup(path: Path | str) -> bool:
    """Return whether ``path`` is an old notebook kept by ``reset_exercise``."""
    return _BACKUP.search(Path(path).name) is not None


def backup_path(notebook: Path) -> Path:
    """Return the first free ``NN_topic.bak-K.ipynb`` beside ``notebook``."""
    number = 1
    while (candidate := notebook.with_name(f"{notebook.stem}.bak-{number}.ipynb")).exists():
        number += 1
    return candidate


def reset_exercise(lesson: str, folder: Path) -> tuple[Path, Path | None]:
    """Put a fresh student notebook of ``lesson`` in ``folder``; keep the old one as a backup.

    Returns the fresh notebook and the backup (None when there was no notebook).
    """
    lesson = _lesson_number(lesson)
    source = student_notebook_path(lesson)
    if not folder.is_dir():
        raise ExerciseError(f"no folder {folder}: run this in the course folder (or give --folder)")
    target = folder / source.name
    backup = None
    if target.exists():
        backup = backup_path(target)
        target.rename(backup)
    atomic_write_text(target, source.read_text(encoding="utf-8"))
    return target, backup


def _lesson_number(text: str) -> str:
    if not text.isdigit():
        raise ExerciseError(f"give a lesson number such as 01, got {text!r}")
    lesson = f"{int(text):02d}"
    if lesson not in LESSONS:
        raise ExerciseError(f"lesson {lesson} has no exercises; lessons: {', '.join(LESSONS)}")
    return lesson


def read_lessons(path: Path) -> list[str]:
    """Return the lessons a lessons file lists (see ``parse_lessons``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ExerciseError(f"cannot read the lessons file {path}: {err.strerror}") from None
    return parse_lessons(text, str(path))


def parse_lessons(text: str, source: str = "the lessons") -> list[str]:
    """Return the lessons ``text`` lists: numbers (01 or 1) or ``all``; ``#`` starts a comment."""
    lessons: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        for word in line.split("#", 1)[0].replace(",", " ").split():
            if word.lower() == "all":
                lessons += list(LESSONS)
                continue
            try:
                lessons.append(_lesson_number(word))
            except ExerciseError as err:
                raise ExerciseError(f"{source}, line {number}: {err}") from None
    if not lessons:
        raise ExerciseError(
            f"{source} lists no lesson: write lesson numbers such as 01, one a line"
        )
    return sorted(set(lessons))


def course_files(root: Path) -> list[Path]:
    """Return the course's files under ``root``: git's list in a clone, else a walk."""
    try:
        done = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
        listed = [root / name for name in done.stdout.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):  # not a clone, or no git
        listed = [p for p in root.rglob("*") if not _NOT_COPIED & set(p.relative_to(root).parts)]
    return sorted(p for p in listed if p.is_file() and not p.name.endswith(".egg-info"))


def make_template(root: Path, dest: Path, lessons: list[str] | None = None) -> list[Path]:
    """Copy the course at ``root`` into ``dest`` without ``exercises/solutions/``.

    ``lessons`` (e.g. ["01"]) goes into the template's lessons file, which its grading
    workflow reads. Returns the files written.
    """
    if not (root / "exercises").is_dir() or not (root / "pyproject.toml").is_file():
        raise ExerciseError(f"{root} is not the course folder (no exercises/, pyproject.toml)")
    if dest.exists() and any(dest.iterdir()):
        raise ExerciseError(f"{dest} exists and is not empty: give a new folder")
    written = []
    for path in course_files(root):
        relative = path.relative_to(root)
        if relative.parts[:2] == ("exercises", "solutions") or is_backup(path):
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        written.append(target)
    if lessons is not None:
        text = "# Lessons whose exercises the grading workflow grades, one a line.\n"
        atomic_write_text(dest / LESSONS_FILE, text + "\n".join(lessons) + "\n")
        written.append(dest / LESSONS_FILE)
    return written
