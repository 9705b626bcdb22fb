"""The instructor's tool: run exercise notebooks, report the verdicts, generate student notebooks.

``run`` grades notebooks (each in a fresh kernel), ``report`` writes the results as a table,
JUnit XML, CSV or Markdown, ``exercises`` knows which lesson has which exercise and builds the
student notebooks from the solutions, and ``cli`` adds ``tfx-course grade``, ``check`` and
``exercises`` to the command line.
"""

from tfx_course.grading.exercises import LESSONS
from tfx_course.grading.run import (
    DEFAULT_KERNEL,
    ExerciseResult,
    NotebookReport,
    find_notebooks,
    grade,
    grade_notebook,
)

__all__ = [
    "DEFAULT_KERNEL",
    "LESSONS",
    "ExerciseResult",
    "NotebookReport",
    "find_notebooks",
    "grade",
    "grade_notebook",
]
