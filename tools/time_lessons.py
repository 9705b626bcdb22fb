"""Time every lesson (and exercise solution) on this machine, for the instructors' timetable.

    python tools/time_lessons.py --out results/lesson_times_cpu.json
    python tools/time_lessons.py --out "$OUT/lesson_times_gpu.json" --kernel python3
    python tools/time_lessons.py --timetable results/lesson_times_cpu.json [GPU_JSON]
    python tools/time_lessons.py --plans results/lesson_times_cpu.json
    python tools/time_lessons.py --stamp results/lesson_times_cpu.json

Runs each notebook top to bottom in a fresh kernel (nothing is written back to it), records
the seconds it took, whether it finished, and the device torch picks here, then prints a
Markdown table. The lessons choose their device themselves (CUDA, then MPS, then CPU).
`--stamp` writes each lesson's measured CPU time into its first cell ("**Time**: CPU (2 cores):
about N s to run"), so that what a lesson states is what was measured. The timetable's reading
and solving times are the ones the lessons and exercises state in their first cells ("40 minutes
to read", "30 to 45 minutes to solve"); `--plans` lays them out as a three-day and a one-day
workshop with breaks.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tfx_course.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [
    *sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")),
    *sorted((ROOT / "exercises" / "solutions").glob("[0-9][0-9]_*.ipynb")),
]


def prose_words(path: Path) -> int:
    """Count the words in a notebook's Markdown cells (the timetable's guide to length)."""
    nb = nbformat.read(path, as_version=4)
    text = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    return len(re.findall(r"[A-Za-z0-9']+", text))


# How a lesson's first cell states its CPU run time; --stamp rewrites the "about N s" part.
STATED = re.compile(r"(\*\*Time\*\*: CPU \(2 cores\): )about \d+ s( to run)")


def stated_time(seconds: float) -> str:
    """Return how a lesson states a measured run time: "about N s", N rounded to 5 (at least 5)."""
    return f"about {max(5, 5 * round(seconds / 5))} s"


def stamp(cpu: dict, folder: Path = ROOT / "notebooks") -> list[str]:
    """Write each timed lesson's stated run time into its first cell; return the changed names."""
    changed = []
    for row in cpu["notebooks"]:
        path = folder / row["notebook"]
        if row["kind"] != "lesson" or not path.exists():
            continue
        nb = nbformat.read(path, as_version=4)
        first = nb.cells[0]
        if not STATED.search(first.source):
            raise SystemExit(
                f"{path.name}: the first cell has no '**Time**: CPU (2 cores): about N s to run'"
            )
        text = STATED.sub(rf"\g<1>{stated_time(row['seconds'])}\g<2>", first.source, count=1)
        if text != first.source:
            first.source = text
            nbformat.write(nb, path)
            changed.append(path.name)
    return changed


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "Apple MPS"
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"


def time_notebook(path: Path, kernel: str, timeout: int) -> dict:
    """Run ``path`` in a fresh kernel; return its name, seconds and error (None if it ran)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(path.parent)}}
    )
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except Exception as err:  # a failing notebook is a result too: record it, go on
        last_line = (str(err).strip().splitlines() or [""])[-1]
        error = f"{type(err).__name__}: {last_line[:300]}"
    kind = "exercise solution" if path.parent.name == "solutions" else "lesson"
    return {
        "notebook": path.name,
        "kind": kind,
        "seconds": round(time.perf_counter() - start, 1),
        "error": error,
    }


TITLES = {
    "00": "setup",
    "01": "self-attention",
    "02": "multi-head attention",
    "03": "positional encoding",
    "04": "residuals and LayerNorm",
    "05": "encoder",
    "06": "decoder",
    "07": "the full Transformer",
    "08": "tokenization and data",
    "09": "training",
    "10": "decoding and evaluation",
    "11": "interpretability",
    "12": "efficiency and scale",
    "13": "Transformer vs RNN and CNN",
    "14": "tuning and low-resource",
    "15": "quantization and deployment",
    "16": "applications and trends",
}


# "15 minutes to read", "45 minutes to\nread and experiment", "30 to 45 minutes to solve"
STATED_MINUTES = re.compile(r"(\d+)(?:\s+to\s+(\d+))?\s+minutes\s+to\s+(read|solve)\b")


def stated_minutes(path: Path, verb: str) -> tuple[int, int] | None:
    """Return the (shortest, longest) minutes a notebook's first cell states ``to read``/``to solve``."""
    first = nbformat.read(path, as_version=4).cells[0].source
    for low, high, found in STATED_MINUTES.findall(first):
        if found == verb:
            return int(low), int(high or low)
    return None


def _range(minutes: tuple[int, int] | None) -> str:
    if minutes is None:
        return "not stated"
    low, high = minutes
    return f"{low} min" if low == high else f"{low}–{high} min"


def _exercise(nn: str) -> Path | None:
    found = sorted((ROOT / "exercises").glob(f"{nn}_*.ipynb"))
    return found[0] if found else None


def _lessons() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _seconds(result: dict | None, kind: str, lesson: str) -> float | None:
    for row in (result or {}).get("notebooks", []):
        if row["kind"] == kind and row["notebook"][:2] == lesson and row["error"] is None:
            return row["seconds"]
    return None


def timetable(cpu: dict, gpu: dict | None = None) -> str:
    """Return the instructors' timetable (Markdown) from time_lessons results on CPU and GPU.

    Run times are measured; reading and solving times are what the notebooks state.
    """

    def shown(result: dict | None, kind: str, lesson: str) -> str | None:
        seconds = _seconds(result, kind, lesson)
        return None if seconds is None else f"{seconds:.1f} s"

    lines = [
        "| Lesson | Run time, CPU (2 cores) | Run time, GPU | Exercise run time, CPU "
        "| Lesson prose (words) | Exercise prose (words) | Time to read | Time to solve |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lesson in _lessons():
        nn = lesson.name[:2]
        exercise = _exercise(nn)
        words = f"{prose_words(exercise):,}" if exercise else "—"
        run = shown(cpu, "exercise solution", nn) or "— (no exercise)"
        solve = _range(stated_minutes(exercise, "solve")) if exercise else "—"
        lines.append(
            f"| {nn} {TITLES.get(nn, lesson.stem[3:])} | {shown(cpu, 'lesson', nn) or 'not measured'} "
            f"| {shown(gpu, 'lesson', nn) or 'not measured'} | {run} "
            f"| {prose_words(lesson):,} | {words} | {_range(stated_minutes(lesson, 'read'))} | {solve} |"
        )
    return "\n".join(lines)


# --- workshop plans -------------------------------------------------------------------------

DAY_START, DAY_END, LUNCH_FROM = 9 * 60, 17 * 60 + 30, 12 * 60  # minutes after midnight
BREAK_AFTER, BREAK, LUNCH = 60, 15, 60  # a 15-minute break after an hour or more of work
FRAME = 10  # minutes per lesson for its introduction and its debrief
WRAP_UP = 15  # minutes at the end of each day for questions
# Which lessons each day covers, and what is done of each: read (and run) it, solve its exercises.
THREE_DAYS = [
    [("00", "read"), ("01", "both"), ("02", "both"), ("03", "both")],
    [("04", "both"), ("05", "both"), ("06", "both"), ("07", "both")],
    [("08", "both"), ("09", "both"), ("10", "both")],
]
PART_THREE = [
    [("11", "both"), ("12", "both"), ("13", "both")],
    [("14", "both"), ("15", "both"), ("16", "both")],
]
ONE_DAY = [[("01", "both"), ("02", "both"), ("03", "read"), ("05", "both"), ("07", "read")]]


def session_minutes(cpu: dict, nn: str, parts: str) -> tuple[int, str]:
    """Return a lesson session's minutes (the longest stated times) and what it holds."""
    lesson = next(p for p in _lessons() if p.name.startswith(f"{nn}_"))
    read = (stated_minutes(lesson, "read") or (0, 0))[1]
    run = math.ceil((_seconds(cpu, "lesson", nn) or 0) / 60)
    minutes, what = FRAME + read + run, f"read {read}, run {run}"
    exercise = _exercise(nn)
    if parts == "both" and exercise is not None:
        solve = (stated_minutes(exercise, "solve") or (0, 0))[1]
        minutes, what = minutes + solve, f"{what}, exercises {solve}"
    return minutes, f"{nn} {TITLES.get(nn, lesson.stem[3:])} ({what})"


def _day_rows(cpu: dict, day: int, lessons: list[tuple[str, str]]) -> list[str]:
    clock, since_break, lunch, rows = DAY_START, 0, False, []

    def add(minutes: int, what: str) -> None:
        nonlocal clock
        rows.append(f"| {day} | {clock // 60:02d}:{clock % 60:02d} | {what} | {minutes} |")
        clock += minutes

    for nn, parts in lessons:
        if not lunch and clock >= LUNCH_FROM:
            add(LUNCH, "lunch")
            lunch, since_break = True, 0
        elif since_break >= BREAK_AFTER:
            add(BREAK, "break")
            since_break = 0
        minutes, what = session_minutes(cpu, nn, parts)
        add(minutes, what)
        since_break += minutes
    add(WRAP_UP, "questions and wrap-up")
    if clock > DAY_END:
        end = f"{DAY_END // 60:02d}:{DAY_END % 60:02d}"
        raise ValueError(f"day {day} ends at {clock // 60:02d}:{clock % 60:02d}, after {end}")
    return rows


def plan(cpu: dict, days: list[list[tuple[str, str]]], first_day: int = 1) -> str:
    """Return a workshop plan (Markdown table): sessions with start times, breaks and lunch."""
    lines = ["| Day | Start | Session (minutes of each part) | Minutes |", "|---|---|---|---|"]
    for number, lessons in enumerate(days, start=first_day):
        lines += _day_rows(cpu, number, lessons)
    return "\n".join(lines)


def totals(cpu: dict) -> str:
    """Return one sentence: the stated reading and solving time of the whole course."""
    read = [stated_minutes(p, "read") or (0, 0) for p in _lessons()]
    exercises = [e for p in _lessons() if (e := _exercise(p.name[:2])) is not None]
    solve = [stated_minutes(e, "solve") or (0, 0) for e in exercises]
    run = sum(_seconds(cpu, "lesson", p.name[:2]) or 0 for p in _lessons())
    low = sum(r[0] for r in read) + sum(s[0] for s in solve)
    high = sum(r[1] for r in read) + sum(s[1] for s in solve)
    return (
        f"The lessons state {sum(r[1] for r in read)} minutes of reading and the exercises "
        f"{sum(s[0] for s in solve)} to {sum(s[1] for s in solve)} minutes of solving; the "
        f"lessons run for {run / 60:.1f} minutes on 2 CPU cores. In all {low / 60:.1f} to "
        f"{high / 60:.1f} hours before breaks, introductions and debriefs."
    )


def workshop_plans(cpu: dict) -> str:
    """Return the three-day, Part III and one-day plans (Markdown), with the course's total."""
    return "\n\n".join(
        [
            totals(cpu),
            "**Three days**: Parts I and II, every lesson and every exercise.",
            plan(cpu, THREE_DAYS),
            "**Two more days** for Part III: every lesson and every exercise.",
            plan(cpu, PART_THREE, first_day=len(THREE_DAYS) + 1),
            "**One day**: the attention path, from scores to a trained model.",
            plan(cpu, ONE_DAY),
        ]
    )


def markdown(rows: list[dict]) -> str:
    lines = ["| notebook | kind | seconds | finished |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['notebook']} | {r['kind']} | {r['seconds']:.1f} | {'yes' if r['error'] is None else 'no: ' + r['error']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="default: every lesson and solution")
    p.add_argument("--kernel", default="tfx-course", help="kernel name (default tfx-course)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell (600)")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p.add_argument(
        "--timetable",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="print the instructors' timetable from a CPU results file (and a GPU one), run nothing",
    )
    p.add_argument(
        "--stamp", type=Path, metavar="JSON", help="state these CPU times in the lessons"
    )
    p.add_argument(
        "--plans", type=Path, metavar="JSON", help="print the workshop plans from CPU times"
    )
    args = p.parse_args(argv)
    if args.stamp:
        changed = stamp(json.loads(args.stamp.read_text(encoding="utf-8")))
        print("stated the measured time in:", ", ".join(changed) or "nothing to change")
        return 0
    if args.plans:
        print(workshop_plans(json.loads(args.plans.read_text(encoding="utf-8"))))
        return 0
    if args.timetable:
        results = [json.loads(path.read_text(encoding="utf-8")) for path in args.timetable[:2]]
        print(timetable(*results))
        return 0
    rows: list[dict] = []
    result = {
        "device": device_name(),
        "python": sys.version.split()[0],
        "torch": __import__("torch").__version__,
        "notebooks": rows,
        "total_seconds": 0.0,
    }
    for path in args.notebooks or DEFAULT:
        rows.append(time_notebook(path, args.kernel, args.timeout))
        print(f"{path.name:<40} {rows[-1]['seconds']:7.1f} s  {rows[-1]['error'] or ''}", flush=True)  # fmt: skip
        result["total_seconds"] = round(sum(r["seconds"] for r in rows), 1)
        if args.out:  # after every notebook: a run stopped by a time limit keeps what it timed
            atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    return 0 if all(r["error"] is None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
