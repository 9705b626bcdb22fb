"""Write the links at the end of every lesson: previous and next lesson, exercise, references.

Each lesson ends with one Markdown cell that this script owns (it starts with MARKER): the
papers and libraries that docs/references.md lists for the lesson, each linked, then a line
linking the previous lesson, the exercise notebook, the glossary, the references and the next
lesson. `make notebooks` runs it; a test fails when a lesson's cell differs from what it writes.

    python tools/lesson_links.py          # rewrite the cells
    python tools/lesson_links.py --check  # exit 1 if any lesson's cell is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- lesson links: written by tools/lesson_links.py -->"
ROW = re.compile(
    r"^\| (?P<work>[^|]+?) \| (?P<year>[^|]*?) \| \[[^\]]*\]\((?P<url>[^)]+)\) \|", re.M
)


def lessons(folder: Path = ROOT / "notebooks") -> list[Path]:
    """Return the lesson notebooks in order."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def title(path: Path) -> str:
    """Return a lesson's short title from its file name: "09 training"."""
    number, _, topic = path.stem.partition("_")
    return f"{number} {topic.replace('_', ' ')}"


def references_by_lesson(text: str) -> dict[str, list[str]]:
    """Map a lesson file name to the linked references docs/references.md lists for it."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        row = ROW.match(line)
        if not row:
            continue
        work, year, url = row["work"].strip(), row["year"].strip(), row["url"]
        name = work if year in ("", "—") else f"{work}, {year}"
        for lesson in re.findall(r"notebooks/([0-9][0-9]_\w+\.ipynb)", line.split(" | ")[-1]):
            found.setdefault(lesson, []).append(f"[{name}]({url})")
    return found


def links_cell(path: Path, order: list[Path], refs: dict[str, list[str]]) -> str:
    """Return the Markdown of the links cell for lesson ``path``."""
    index = order.index(path)
    parts = []
    if index > 0:
        parts.append(f"previous: [{title(order[index - 1])}]({order[index - 1].name})")
    exercise = ROOT / "exercises" / path.name
    if exercise.exists():
        parts.append(f"exercise: [exercises/{path.name}](../exercises/{path.name})")
    parts += ["[glossary](../docs/glossary.md)", "[references](../docs/references.md)"]
    if index + 1 < len(order):
        parts.append(f"next: [{title(order[index + 1])}]({order[index + 1].name})")
    else:
        parts.append("next: the rest of Part III is planned (see the README's syllabus)")
    lines = [MARKER, ""]
    if refs.get(path.name):
        lines += ["**Papers and libraries named in this lesson**: " + " · ".join(refs[path.name])]
        lines += [""]
    lines.append(" · ".join(parts))
    return "\n".join(lines)


def update(path: Path, text: str, write: bool) -> bool:
    """Make the lesson's last cell the links cell; return whether it changed."""
    nb = nbformat.read(path, as_version=4)
    last = nb.cells[-1]
    if last.cell_type == "markdown" and last.source.startswith(MARKER):
        if last.source == text:
            return False
        last.source = text
    else:
        nb.cells.append(nbformat.v4.new_markdown_cell(text))
    if write:
        nbformat.write(nb, path)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    order = lessons()
    refs = references_by_lesson((ROOT / "docs" / "references.md").read_text(encoding="utf-8"))
    stale = [p.name for p in order if update(p, links_cell(p, order, refs), not args.check)]
    if args.check and stale:
        print("out of date (run python tools/lesson_links.py):", ", ".join(stale))
        return 1
    print("lesson links written:" if stale else "lesson links up to date", ", ".join(stale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
