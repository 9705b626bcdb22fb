"""The exercises: which lesson has which, and the generator of the student notebooks.

The sources live in ``exercises/solutions/NN_topic.ipynb``. Each answer sits between
nbgrader's ``### BEGIN SOLUTION`` and ``### END SOLUTION`` markers, in a cell whose
metadata names its exercise (``{"tfx_course": {"exercise": ID, "role": "solution"}}``);
the exercise's check cell carries ``"role": "check"`` and calls ``check_ID``. The student
notebook ``exercises/NN_topic.ipynb`` is the same notebook with every answer replaced by
``raise NotImplementedError(...)`` and every output cleared. A copy of each student notebook
ships inside the package (``tfx_course/student_notebooks/``), so that a learner can get a
fresh one without the solutions (``tfx-course exercises reset NN``).
"""

from __future__ import annotations

import copy
import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat import NotebookNode

__all__ = [
    "LESSONS",
    "BEGIN",
    "END",
    "ExerciseError",
    "BuildResult",
    "lesson_of",
    "exercise_cells",
    "strip_solutions",
    "student_notebook",
    "build",
    "STUDENT_NOTEBOOKS",
    "student_notebook_path",
    "NBGRADER_CONFIG",
    "nbgrader_course",
]

# The exercises of each lesson, in notebook order. The grader expects exactly these
# results from a lesson's notebook; a test keeps them in step with the solutions.
LESSONS: dict[str, tuple[str, ...]] = {
    "01": ("attention_scores", "padding_mask", "causal_mask", "masked_softmax", "attention"),
    "02": ("split_heads", "merge_heads", "multi_head_attention", "multi_query_attention"),
    "03": ("sinusoidal_encoding", "embed_tokens", "alibi_bias"),
    "04": ("layer_norm", "pre_ln_residual", "post_ln_residual", "rezero_residual"),
    "05": ("feed_forward", "encoder_layer", "parallel_block"),
    "06": ("target_mask", "decoder_layer", "cross_attention_cache"),
    "07": ("greedy_decode", "sample_decode"),
    "08": ("pair_counts", "merge_pair", "byte_fallback"),
    "09": (
        "label_smoothing",
        "warmup_schedule",
        "clip_grad_norm",
        "adamw_step",
        "cosine_lr",
        "ema_update",
    ),
    "10": ("length_penalty", "beam_step", "ngram_matches", "top_p_filter"),
    "11": ("mask_head", "attention_rollout", "integrated_gradients"),
    "12": ("blockwise_attention", "accumulation_step", "stream_batches"),
    "13": ("rnn_attention_step", "gradient_reach"),
    "14": ("lr_range_test", "overfitting_step", "nested_subsets"),
    "15": ("int8_quantize", "take_batch", "max_difference"),
    "16": ("apply_rope", "rms_norm", "sliding_window_mask"),
}

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
# The student notebooks as package data: `exercises build` writes them beside exercises/.
STUDENT_NOTEBOOKS = Path(str(importlib.resources.files("tfx_course").joinpath("student_notebooks")))
META = "tfx_course"  # the key of the course's cell and notebook metadata
_LESSON_NAME = re.compile(r"(?<![0-9])([0-9]{2})_[A-Za-z0-9_]+\.ipynb$")


class ExerciseError(ValueError):
    """A solution notebook breaks the conventions the generator and grader rely on."""


@dataclass(frozen=True)
class BuildResult:
    """One student notebook: where it goes and whether the committed file was stale."""

    source: Path
    target: Path
    stale: bool


def lesson_of(path: Path | str, nb: NotebookNode | None = None) -> str | None:
    """Return the lesson number ``"NN"`` of a notebook, from its metadata or its file name."""
    if nb is not None:
        lesson = nb.metadata.get(META, {}).get("lesson")
        if isinstance(lesson, str) and lesson:
            return lesson
    match = _LESSON_NAME.search(Path(path).name)
    return match.group(1) if match else None


def exercise_cells(nb: NotebookNode, role: str) -> dict[str, int]:
    """Map each exercise to the index of its cell with the given role (solution or check)."""
    found: dict[str, int] = {}
    for index, cell in enumerate(nb.cells):
        meta = cell.metadata.get(META, {})
        if meta.get("role") == role and "exercise" in meta:
            found.setdefault(meta["exercise"], index)
    return found


def strip_solutions(source: str, exercise: str, markdown: bool = False) -> str:
    """Replace every BEGIN/END SOLUTION region of a cell with a placeholder."""
    lines, out, inside = source.split("\n"), [], False
    for number, line in enumerate(lines, start=1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ExerciseError(f"{exercise}: nested {BEGIN} at line {number}")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            if markdown:
                out.append(f"{indent}_Your answer here._")
            else:
                message = f"exercise {exercise!r}: write your code here"
                out += [
                    f"{indent}# YOUR CODE HERE",
                    f"{indent}raise NotImplementedError({message!r})",
                ]
        elif marker == END:
            if not inside:
                raise ExerciseError(f"{exercise}: {END} without {BEGIN} at line {number}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ExerciseError(f"{exercise}: {BEGIN} is never closed by {END}")
    return "\n".join(out)


def _validate(nb: NotebookNode, name: str) -> None:
    solutions, checks = exercise_cells(nb, "solution"), exercise_cells(nb, "check")
    for index, cell in enumerate(nb.cells):
        if BEGIN in cell.source and cell.metadata.get(META, {}).get("role") != "solution":
            raise ExerciseError(
                f"{name}, cell {index + 1}: has {BEGIN} but its metadata does not mark it "
                f'as a solution ({{"{META}": {{"exercise": ..., "role": "solution"}}}})'
            )
    for exercise, index in solutions.items():
        if BEGIN not in nb.cells[index].source:
            raise ExerciseError(f"{name}: the solution cell of {exercise} has no {BEGIN}")
        if exercise not in checks:
            raise ExerciseError(f"{name}: exercise {exercise} has no check cell")
        if f"check_{exercise}(" not in nb.cells[checks[exercise]].source:
            raise ExerciseError(
                f"{name}: the check cell of {exercise} does not call check_{exercise}"
            )


def student_notebook(solution: NotebookNode, name: str = "notebook") -> NotebookNode:
    """Return the student version of a solution notebook: answers removed, outputs cleared."""
    _validate(solution, name)
    nb = copy.deepcopy(solution)
    for cell in nb.cells:
        exercise = cell.metadata.get(META, {}).get("exercise", "?")
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
        if BEGIN in cell.source:
            cell.source = strip_solutions(cell.source, exercise, cell.cell_type == "markdown")
    return nb


def _text(nb: NotebookNode) -> str:
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def build(
    solutions: Path, out: Path, check: bool = False, copy_to: Path | None = None
) -> list[BuildResult]:
    """Write the student notebook of every ``solutions/NN_*.ipynb`` into ``out``.

    ``copy_to`` (the package's ``student_notebooks/`` for the course itself) gets the same
    files. With ``check=True`` nothing is written; the results say which files are stale.
    """
    results = []
    for source in sorted(solutions.glob("[0-9][0-9]_*.ipynb")):
        text = _text(student_notebook(nbformat.read(source, as_version=4), source.name))
        for folder in [out] if copy_to is None else [out, copy_to]:
            target = folder / source.name
            stale = not target.exists() or target.read_text(encoding="utf-8") != text
            if stale and not check:
                folder.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
            results.append(BuildResult(source, target, stale))
    if not results:
        raise ExerciseError(f"no solution notebooks (NN_topic.ipynb) found in {solutions}")
    return results


def student_notebook_path(lesson: str, folder: Path = STUDENT_NOTEBOOKS) -> Path:
    """Return the packaged student notebook of ``lesson`` ("01"), or raise ``ExerciseError``."""
    found = sorted(folder.glob(f"{lesson}_*.ipynb"))
    if lesson not in LESSONS or not found:
        known = ", ".join(LESSONS)
        raise ExerciseError(f"lesson {lesson!r} has no exercise notebook; lessons: {known}")
    return found[0]


NBGRADER_CONFIG = """\
# nbgrader configuration for the tfx_course exercises (written by `tfx-course exercises nbgrader`).
import os

c = get_config()  # noqa: F821 - nbgrader provides get_config
c.CourseDirectory.course_id = "tfx_course"
# nbgrader counts a test cell as failed only when it raises. The course's checks print FAIL and
# carry on unless this variable is set; the kernels nbgrader starts inherit it from here.
os.environ["TFX_COURSE_RAISE_ON_FAIL"] = "1"
# Seconds a cell may run before nbgrader stops it (a hanging answer).
c.Execute.timeout = 120
"""


def nbgrader_course(dest: Path, solutions: Path, lessons: list[str] | None = None) -> list[Path]:
    """Lay out an nbgrader course in ``dest``: one assignment per lesson, plus its config.

    Copies ``solutions/NN_topic.ipynb`` to ``dest/source/NN_topic/NN_topic.ipynb`` (outputs
    cleared) for every lesson in ``lessons`` (all if None) and writes
    ``dest/nbgrader_config.py`` unless one exists. Returns the source notebooks written.
    """
    sources = sorted(solutions.glob("[0-9][0-9]_*.ipynb"))
    if lessons is not None:
        unknown = sorted(set(lessons) - {lesson_of(p) for p in sources})
        if unknown:
            raise ExerciseError(f"no solution notebook for lesson(s) {', '.join(unknown)} in {solutions}")  # fmt: skip
        sources = [p for p in sources if lesson_of(p) in lessons]
    if not sources:
        raise ExerciseError(f"no solution notebooks (NN_topic.ipynb) found in {solutions}")
    written = []
    for source in sources:
        nb = nbformat.read(source, as_version=4)
        _validate(nb, source.name)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        target = dest / "source" / source.stem / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_text(nb), encoding="utf-8")
        written.append(target)
    config = dest / "nbgrader_config.py"
    if not config.exists():
        config.write_text(NBGRADER_CONFIG, encoding="utf-8")
    return written
