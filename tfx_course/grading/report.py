"""Write grade results as a text table, JUnit XML, CSV or a Markdown table."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from tfx_course.checks.core import verdict
from tfx_course.grading.exercises import LESSONS
from tfx_course.grading.run import ExerciseResult, NotebookReport

__all__ = [
    "rows",
    "format_table",
    "summary",
    "pass_rates",
    "format_pass_rates",
    "write_junit",
    "write_csv",
    "write_markdown",
]

HEADER = ("student", "notebook", "exercise", "result", "message")


def rows(reports: Sequence[NotebookReport]) -> list[ExerciseResult]:
    """Return every exercise result, ordered by student, then notebook, then notebook order."""
    ordered = sorted(reports, key=lambda r: (r.student, r.notebook))
    return [result for report in ordered for result in report.results]


def _cells(result: ExerciseResult) -> tuple[str, ...]:
    return (
        result.student,
        result.notebook,
        result.exercise,
        verdict(result.passed),
        result.message,
    )


def format_table(reports: Sequence[NotebookReport]) -> str:
    """Return a plain-text table, one line per student and exercise."""
    table = [HEADER] + [_cells(r) for r in rows(reports)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER) - 1)]
    lines = []
    for number, line in enumerate(table):
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) + "  " + line[-1]
        )
        if number == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * len(HEADER[-1]))
    return "\n".join(line.rstrip() for line in lines)


def summary(reports: Sequence[NotebookReport]) -> str:
    """Return one line: how many exercises passed, for how many students and notebooks."""
    results = rows(reports)
    passed = sum(r.passed for r in results)
    students = len({r.student for r in reports})
    return (
        f"{passed} of {len(results)} exercises passed "
        f"({students} student{'s' * (students != 1)}, {len(reports)} notebook{'s' * (len(reports) != 1)})"
    )


def pass_rates(reports: Sequence[NotebookReport]) -> list[tuple[str, str, int, int]]:
    """Return ``(lesson, exercise, passed, graded)`` per exercise, in the course's order."""
    lesson_of = {name: lesson for lesson, names in LESSONS.items() for name in names}
    order = list(lesson_of)
    counts: dict[str, list[int]] = {}
    for r in rows(reports):
        if r.exercise != "-":  # a notebook without any check
            count = counts.setdefault(r.exercise, [0, 0])
            count[0] += r.passed
            count[1] += 1
    ranked = sorted(counts, key=lambda e: (order.index(e) if e in order else len(order), e))
    return [(lesson_of.get(e, "?"), e, *counts[e]) for e in ranked]


def format_pass_rates(reports: Sequence[NotebookReport]) -> str:
    """Return a table of how many students passed each exercise (a room's progress)."""
    rates = pass_rates(reports)
    if not rates:
        return "Pass rate per exercise: no exercises graded"
    width = max(len(exercise) for _, exercise, _, _ in rates)
    students = len({r.student for r in reports})
    lines = [f"Pass rate per exercise ({students} student{'s' * (students != 1)}):"]
    for lesson, exercise, passed, graded in rates:
        bar = "#" * round(10 * passed / graded)
        lines.append(
            f"  {lesson}  {exercise:<{width}}  {passed:>3} of {graded:<3} {passed / graded:>4.0%}  {bar}"
        )
    return "\n".join(lines)


def write_junit(reports: Sequence[NotebookReport], path: Path | str) -> None:
    """Write JUnit XML: one test suite per student and notebook, one test case per exercise."""
    results = rows(reports)
    failures = sum(not r.passed for r in results)
    root = ET.Element(
        "testsuites", name="tfx-course grade", tests=str(len(results)), failures=str(failures)
    )
    for report in sorted(reports, key=lambda r: (r.student, r.notebook)):
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"{report.student}/{report.notebook}",
            tests=str(len(report.results)),
            failures=str(sum(not r.passed for r in report.results)),
            errors="0",
            time=f"{report.seconds:.3f}",
        )
        classname = f"{report.student}.{Path(report.notebook).stem}"
        for result in report.results:
            case = ET.SubElement(suite, "testcase", classname=classname, name=result.exercise)
            if not result.passed:
                failure = ET.SubElement(case, "failure", message=result.message)
                failure.text = result.message
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def write_csv(reports: Sequence[NotebookReport], path: Path | str) -> None:
    """Write a CSV file with the columns student, notebook, exercise, passed, message."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("student", "notebook", "exercise", "passed", "message"))
        for r in rows(reports):
            writer.writerow((r.student, r.notebook, r.exercise, int(r.passed), r.message))


def write_markdown(reports: Sequence[NotebookReport], path: Path | str) -> None:
    """Write a Markdown table (for a CI job summary) followed by the summary line."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows(reports):
        cells = [c.replace("|", "\\|") for c in _cells(r)]
        cells[3] = (":white_check_mark: " if r.passed else ":x: ") + verdict(r.passed)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", summary(reports), ""]
    Path(path).write_text("\n".join(lines), encoding="utf-8")
