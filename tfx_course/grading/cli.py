"""The ``tfx-course grade``, ``check`` and ``exercises`` commands."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tfx_course.grading.run import DEFAULT_KERNEL, NotebookReport

EXPECT = ("pass", "not-attempted")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=60.0, help="seconds each cell may run (60)")
    p.add_argument(
        "--check-timeout",
        type=float,
        default=None,
        help="seconds each call of learner code may take inside a check (10)",
    )
    p.add_argument(
        "--kernel",
        default=DEFAULT_KERNEL,
        help=f"Jupyter kernel to run the notebooks with ({DEFAULT_KERNEL}: this Python)",
    )


def _unexpected(reports: list[NotebookReport], expect: str) -> list[str]:
    bad = []
    for report in reports:
        for r in report.results:
            if expect == "pass" and not r.passed:
                bad.append(f"{r.student}/{r.notebook} {r.exercise}: {r.message}")
            if expect == "not-attempted" and r.attempted:
                verdict = "passed" if r.passed else f"failed otherwise: {r.message}"
                bad.append(f"{r.student}/{r.notebook} {r.exercise} {verdict}")
    return bad


def _report(
    reports: list[NotebookReport], args: argparse.Namespace, seconds: float, room: bool = False
) -> int:
    from tfx_course.grading import report

    print(report.format_table(reports))
    print(f"\n{report.summary(reports)} in {seconds:.1f} s")
    if room:
        print("\n" + report.format_pass_rates(reports))
    for option, write in (
        ("junit", report.write_junit),
        ("csv", report.write_csv),
        ("markdown", report.write_markdown),
    ):
        if getattr(args, option, None):
            write(reports, getattr(args, option))
    bad = _unexpected(reports, args.expect)
    if bad and args.expect != "pass":
        print(f"\nExpected every exercise to be {args.expect}, but:", *bad, sep="\n  ")
    return 1 if bad else 0


def _lessons(args: argparse.Namespace) -> list[str] | None:
    """Return the lessons to grade (--lessons, --lessons-from), or None for every one."""
    from tfx_course.grading.classroom import parse_lessons, read_lessons

    if args.lessons_from is None and not args.lessons:
        return None
    lessons = read_lessons(Path(args.lessons_from)) if args.lessons_from else []
    if args.lessons:
        lessons += parse_lessons(" ".join(args.lessons), "--lessons")
    return sorted(set(lessons))


def _grade(args: argparse.Namespace) -> int:
    from tfx_course.grading.exercises import ExerciseError
    from tfx_course.grading.run import grade

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"error: not found: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    try:
        lessons = _lessons(args)
    except ExerciseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    reports = grade(
        args.paths,
        timeout=args.timeout,
        kernel=args.kernel,
        jobs=args.jobs,
        check_timeout=args.check_timeout,
        lessons=lessons,
        student=args.student,
    )
    if not reports:
        print("error: no notebooks (.ipynb) found in the given paths", file=sys.stderr)
        return 2
    return _report(reports, args, time.perf_counter() - start, room=True)


def _find_exercise(lesson: str, folder: Path) -> Path | None:
    from tfx_course.grading.classroom import is_backup

    for place in (folder, Path(".")):
        found = [p for p in sorted(place.glob(f"{lesson}_*.ipynb")) if not is_backup(p)]
        if found:
            return found[0]
    return None


def _check(args: argparse.Namespace) -> int:
    from tfx_course.grading.run import grade_notebook

    if not args.lesson.isdigit():
        print(f"error: give a lesson number such as 01, got {args.lesson!r}", file=sys.stderr)
        return 2
    lesson = f"{int(args.lesson):02d}"
    path = Path(args.path) if args.path else _find_exercise(lesson, Path(args.folder))
    if path is None or not path.exists():
        print(
            f"error: no notebook {lesson}_*.ipynb in {args.folder}/ or here; "
            "run this from the course folder, or pass --path",
            file=sys.stderr,
        )
        return 2
    print(f"Grading {path} as saved on disk (save it in JupyterLab first)...\n", flush=True)
    start = time.perf_counter()
    report = grade_notebook(
        path,
        student="you",
        timeout=args.timeout,
        kernel=args.kernel,
        check_timeout=args.check_timeout,
    )
    args.expect = "pass"
    return _report([report], args, time.perf_counter() - start)


def _build(args: argparse.Namespace) -> int:
    from tfx_course.grading.exercises import STUDENT_NOTEBOOKS, ExerciseError, build

    copy_to = STUDENT_NOTEBOOKS if args.package_copy else None
    try:
        results = build(Path(args.solutions), Path(args.out), check=args.check, copy_to=copy_to)
    except ExerciseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    stale = [r for r in results if r.stale]
    for r in results:
        state = ("stale" if args.check else "written") if r.stale else "up to date"
        print(f"{state:<11} {r.target}")
    if args.check and stale:
        print("Student notebooks are stale: run `tfx-course exercises build`.", file=sys.stderr)
        return 1
    return 0


def _nbgrader(args: argparse.Namespace) -> int:
    from tfx_course.grading.exercises import ExerciseError, nbgrader_course

    dest = Path(args.dest)
    had_config = (dest / "nbgrader_config.py").exists()
    try:
        written = nbgrader_course(dest, Path(args.solutions), args.lessons or None)
    except ExerciseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(f"written     {path}")
    config = dest / "nbgrader_config.py"
    if had_config:
        print(f"kept        {config}: make sure it sets TFX_COURSE_RAISE_ON_FAIL=1 (see the guide)")  # fmt: skip
    else:
        print(f"written     {config}")
    print(f"next: cd {dest} && nbgrader generate_assignment {written[0].parent.name}")
    return 0


def _reset(args: argparse.Namespace) -> int:
    from tfx_course.grading.classroom import reset_exercise
    from tfx_course.grading.exercises import ExerciseError

    try:
        fresh, backup = reset_exercise(args.lesson, Path(args.folder))
    except ExerciseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if backup is not None:
        print(f"kept        {backup} (your old notebook)")
    print(f"fresh       {fresh}")
    print("In JupyterLab, close the old tab and open the fresh notebook (File > Reload if open).")
    return 0


def _template(args: argparse.Namespace) -> int:
    from tfx_course.grading.classroom import LESSONS_FILE, make_template, parse_lessons
    from tfx_course.grading.exercises import ExerciseError

    try:
        lessons = parse_lessons(" ".join(args.lessons), "--lessons") if args.lessons else None
        written = make_template(Path(args.source), Path(args.dest), lessons)
    except ExerciseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"written     {len(written)} files to {args.dest}, without exercises/solutions/")
    print(f"graded      the lessons listed in {args.dest}/{LESSONS_FILE.as_posix()}")
    print("next: push it to a new repository and mark it a template (see docs/instructors.md)")
    return 0


def _add_exercises_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("exercises", help="build, reset and hand out the exercise notebooks")
    ex_sub = p.add_subparsers(dest="exercises_command", required=True, metavar="ACTION")
    b = ex_sub.add_parser("build", help="write exercises/NN_*.ipynb from exercises/solutions/")
    b.add_argument("--solutions", default="exercises/solutions", help="source notebooks")
    b.add_argument("--out", default="exercises", help="where the student notebooks go")
    b.add_argument("--check", action="store_true", help="write nothing; exit 1 if any is stale")
    b.add_argument("--package-copy", action=argparse.BooleanOptionalAction, default=True,
                   help="also keep the package's copy (tfx_course/student_notebooks/) in step")  # fmt: skip
    b.set_defaults(func=_build)
    n = ex_sub.add_parser("nbgrader", help="lay out an nbgrader course (one assignment per lesson)")
    n.add_argument("dest", help="the nbgrader course folder (created if missing)")
    n.add_argument("lessons", nargs="*", help="lesson numbers, e.g. 01 02 (default: all)")
    n.add_argument("--solutions", default="exercises/solutions", help="source notebooks")
    n.set_defaults(func=_nbgrader)
    r = ex_sub.add_parser(
        "reset", help="get a fresh exercise notebook; the old one is kept as NN_topic.bak-K.ipynb"
    )
    r.add_argument("lesson", help="lesson number, e.g. 03")
    r.add_argument("--folder", default="exercises", help="where your exercise notebooks are")
    r.set_defaults(func=_reset)
    t = ex_sub.add_parser(
        "template", help="copy the course without exercises/solutions/, for students' repositories"
    )
    t.add_argument("dest", help="a new folder for the template")
    t.add_argument("--lessons", nargs="+", metavar="NN",
                   help="lessons the template's grading workflow grades (default: as in the course)")  # fmt: skip
    t.add_argument("--source", default=".", help="the course folder to copy (default: here)")
    t.set_defaults(func=_template)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``grade``, ``check`` and ``exercises`` to the ``tfx-course`` command."""
    p = sub.add_parser("grade", help="run exercise notebooks and print one result per exercise")
    p.add_argument(
        "paths", nargs="+", help="notebooks, or folders of them (one subfolder per student)"
    )
    _add_run_options(p)
    p.add_argument("--jobs", type=int, default=1, help="notebooks to run at once (1)")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML")
    p.add_argument("--csv", metavar="FILE", help="also write CSV")
    p.add_argument("--markdown", metavar="FILE", help="also write a Markdown table")
    p.add_argument("--lessons", nargs="+", metavar="NN",
                   help="grade only these lessons; a missing notebook fails its exercises")  # fmt: skip
    p.add_argument("--lessons-from", metavar="FILE",
                   help="read the lessons to grade from FILE (e.g. exercises/LESSONS_REACHED)")  # fmt: skip
    p.add_argument("--student", help="the name of the student who owns every notebook given")
    p.add_argument(
        "--expect",
        choices=EXPECT,
        default="pass",
        help="exit 0 only if every exercise passed (pass) or every one is untouched (not-attempted)",
    )
    p.set_defaults(func=_grade)

    p = sub.add_parser("check", help="grade your own exercise notebook for one lesson")
    p.add_argument("lesson", help="lesson number, e.g. 01")
    p.add_argument("--path", help="the notebook (default: exercises/NN_*.ipynb)")
    p.add_argument("--folder", default="exercises", help=argparse.SUPPRESS)
    _add_run_options(p)
    p.set_defaults(func=_check)

    _add_exercises_commands(sub)
