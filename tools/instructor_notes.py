"""Keep the generated parts of docs/instructor_notes.md in step with the checks and the timings.

    python tools/instructor_notes.py           # rewrite the generated parts in place
    python tools/instructor_notes.py --check   # exit 1 if they are stale (a test does the same)

The notes are written by hand (key points, discussion questions) except two parts per lesson,
each between `<!-- generated: KIND NN -->` and `<!-- end generated -->`:
  timing NN    the measured run time and the stated reading and solving minutes
               (results/lesson_times_cpu.json and the notebooks' first cells, as the timetable)
  mistakes NN  for each exercise, the mistakes its check names, read from the check's own code
               in tfx_course/checks/: the messages of its `Fail(...)`s and of its tables of
               planted mistakes (text a placeholder fills in at run time is shown as "…")
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

from tfx_course.grading.exercises import LESSONS

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ROOT / "tfx_course" / "checks"
NOTES = ROOT / "docs" / "instructor_notes.md"
CPU_TIMES = ROOT / "results" / "lesson_times_cpu.json"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import time_lessons  # noqa: E402 - tools/time_lessons.py, beside this script

BLOCK = re.compile(r"(<!-- generated: (timing|mistakes) (\d\d) -->\n)(.*?)(<!-- end generated -->)", re.S)  # fmt: skip


def _text(node: ast.AST, constants: dict[str, str]) -> str | None:
    """Return the text of a string literal, an f-string ("…" for its fields) or a str constant."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values)
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # "text " + (a if x else b)
        left, right = _text(node.left, constants), _text(node.right, constants)
        return None if left is None and right is None else (left or "…") + (right or "…")
    return None


def _messages_in(node: ast.AST, constants: dict[str, str]) -> list[str]:
    """Return the Fail messages and the planted-mistake messages (dict entries) inside ``node``."""
    found = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and getattr(sub.func, "id", None) == "Fail" and sub.args:
            found.append(_text(sub.args[0], constants))
        elif isinstance(sub, ast.Dict):
            for key, value in zip(sub.keys, sub.values, strict=True):
                key_text = None if key is None else _text(key, constants)
                value_text = _text(value, constants)
                if key_text and re.fullmatch(r"\w+", key_text):  # {"bug_name": "message"}
                    found.append(value_text)
                else:  # {"message": planted mistake}
                    found.append(key_text)
    return [m for m in found if m and len(m.split()) >= 3]


def _module_parts(tree: ast.Module) -> tuple[dict[str, ast.AST], dict[str, str]]:
    """Return the module's functions and assignments by name, and its string constants."""
    named: dict[str, ast.AST] = {}
    constants: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            named[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and node.value is not None:
                    named[target.id] = node.value
                    text = _text(node.value, {})
                    if text is not None:
                        constants[target.id] = text
    return named, constants


def mistakes(exercise: str) -> list[str]:
    """Return the mistakes ``check_<exercise>`` names, in the order its code names them."""
    for path in sorted(CHECKS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        named, constants = _module_parts(tree)
        if f"check_{exercise}" in named:
            break
    else:
        raise SystemExit(f"no check_{exercise} in {CHECKS}")
    seen, todo, found = set(), [f"check_{exercise}"], []
    while todo:  # every function and table of the module that the check reaches
        name = todo.pop(0)
        if name in seen or name not in named:
            continue
        seen.add(name)
        found += _messages_in(named[name], constants)
        todo += [n.id for n in ast.walk(named[name]) if isinstance(n, ast.Name)]
    return list(dict.fromkeys(found))


def timing(cpu: dict, nn: str) -> str:
    """Return the timing paragraph of lesson ``nn`` (measured run, stated reading and solving)."""
    lesson = next((ROOT / "notebooks").glob(f"{nn}_*.ipynb"))
    read = time_lessons._range(time_lessons.stated_minutes(lesson, "read"))
    seconds = time_lessons._seconds(cpu, "lesson", nn)
    text = f"**Timing**: reading {read}; the lesson runs in {seconds:.1f} s on 2 CPU cores"
    exercise = time_lessons._exercise(nn)
    if exercise is None:
        return text + "; no exercise."
    solve = time_lessons._range(time_lessons.stated_minutes(exercise, "solve"))
    return f"{text}; exercises {solve} ({len(LESSONS[nn])}: {', '.join(LESSONS[nn])})."


def mistakes_markdown(nn: str) -> str:
    """Return, for each exercise of lesson ``nn``, the list of mistakes its check names."""
    parts = []
    for exercise in LESSONS.get(nn, ()):
        # A "*" in a message (x * weight) is multiplication, not Markdown's emphasis.
        lines = ["- " + message.replace("*", r"\*") for message in mistakes(exercise)]
        parts.append(f"`{exercise}`:\n\n" + "\n".join(lines))
    return "\n\n".join(parts) if parts else "This lesson has no exercise."


def render(text: str, cpu: dict) -> str:
    """Return ``text`` with every generated part rewritten."""

    def fill(match: re.Match) -> str:
        kind, nn = match.group(2), match.group(3)
        body = timing(cpu, nn) if kind == "timing" else mistakes_markdown(nn)
        return f"{match.group(1)}{body}\n{match.group(5)}"

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    args = p.parse_args(argv)
    text = NOTES.read_text(encoding="utf-8")
    new = render(text, json.loads(CPU_TIMES.read_text(encoding="utf-8")))
    if args.check:
        print("up to date" if new == text else f"{NOTES.name} is stale: run {__file__}")
        return int(new != text)
    NOTES.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
