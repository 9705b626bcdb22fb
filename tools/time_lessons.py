"""Time every lesson (and exercise solution) on this machine, for the instructors' timetable.

    python tools/time_lessons.py --out results/lesson_times_cpu.json
    python tools/time_lessons.py --out "$OUT/lesson_times_gpu.json" --kernel python3
    python tools/time_lessons.py --timetable results/lesson_times_cpu.json [GPU_JSON]
    python tools/time_lessons.py --stamp results/lesson_times_cpu.json

Runs each notebook top to bottom in a fresh kernel (nothing is written back to it), records
the seconds it took, whether it finished, and the device torch picks here, then prints a
Markdown table. The lessons choose their device themselves (CUDA, then MPS, then CPU).
`--stamp` writes each lesson's measured CPU time into its first cell ("**Time**: CPU (2 cores):
about N s to run"), so that what a lesson states is what was measured.
"""

from __future__ import annotations

import argparse
import json
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
    "14": "tuning and low-resource",
}


def timetable(cpu: dict, gpu: dict | None = None) -> str:
    """Return the instructors' timetable (Markdown) from time_lessons results on CPU and GPU.

    Reading and solving times stay blank: they are measured with a group, not a machine.
    """

    def seconds(result: dict | None, kind: str, lesson: str) -> str | None:
        for row in (result or {}).get("notebooks", []):
            if row["kind"] == kind and row["notebook"][:2] == lesson and row["error"] is None:
                return f"{row['seconds']:.1f} s"
        return None

    lines = [
        "| Lesson | Run time, CPU (2 cores) | Run time, GPU | Exercise run time, CPU "
        "| Lesson prose (words) | Exercise prose (words) | Time to read | Time to solve |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lesson in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nn = lesson.name[:2]
        exercise = sorted((ROOT / "exercises").glob(f"{nn}_*.ipynb"))
        words = f"{prose_words(exercise[0]):,}" if exercise else "—"
        run = seconds(cpu, "exercise solution", nn) or "— (no exercise)"
        lines.append(
            f"| {nn} {TITLES.get(nn, lesson.stem[3:])} | {seconds(cpu, 'lesson', nn) or 'not measured'} "
            f"| {seconds(gpu, 'lesson', nn) or 'not measured'} | {run} "
            f"| {prose_words(lesson):,} | {words} | | |"
        )
    return "\n".join(lines)


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
    args = p.parse_args(argv)
    if args.stamp:
        changed = stamp(json.loads(args.stamp.read_text(encoding="utf-8")))
        print("stated the measured time in:", ", ".join(changed) or "nothing to change")
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
