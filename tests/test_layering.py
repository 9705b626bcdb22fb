"""The package's structure: imports flow one way, and no function grows past 60 lines.

``python tests/test_layering.py`` prints the import picture: every module with the package
modules it imports, grouped by layer, and the longest functions.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tfx_course"
MAX_FUNCTION_LINES = 60

# Lowest first. A module may import modules of lower layers, and modules of its own subpackage
# (data/, checks/, grading/); never a module of its own layer or a higher one. Foundations are
# helpers anyone may use; data stands alone on them; viz, checks, the doctor, grading and the
# command line sit on top, and nothing below them imports them.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundations", {"validation", "files", "repro", "device"}),
    ("data", {"data"}),
    ("attention", {"attention"}),
    ("layers", {"layers"}),
    ("model", {"model"}),
    ("distributed", {"distributed"}),
    ("checkpoint", {"checkpoint"}),
    ("decoding, training", {"decoding", "training"}),
    ("fast paths: static_decoding, fast_training", {"static_decoding", "fast_training"}),
    ("evaluation", {"evaluation"}),
    ("translation, pretrained", {"translation", "pretrained"}),
    ("Part III, lesson 11: interpret", {"interpret"}),
    ("Part III, lesson 12: efficiency", {"efficiency"}),
    ("Part III, lesson 13: baselines", {"baselines"}),
    (
        "Part III, lesson 14: diagnosis, tuning, transfer, low resource",
        {"diagnosis", "tuning", "transfer", "lowresource"},
    ),  # fmt: skip
    ("Part III, lesson 15: quantization", {"quantize"}),
    ("Part III, lesson 15: export, Hugging Face", {"export", "hf"}),
    ("Part III, lesson 15: serving", {"serve"}),
    ("Part III, lesson 16: modern components", {"modern"}),
    ("Part III, lesson 16: model families", {"families"}),
    ("on top: viz, checks, doctor", {"viz", "checks", "doctor"}),
    ("on top: grading", {"grading"}),
    ("on top: cli, the package", {"cli", "__init__"}),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _unit(module: str) -> str:
    """The part of the package a module belongs to: its subpackage, or itself."""
    return module.split(".")[0]


def import_graph() -> dict[str, set[str]]:
    """Return each package module and the package modules it imports (anywhere in its code)."""
    modules = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tfx_course"):
                base = node.module.removeprefix("tfx_course").lstrip(".")
                for alias in node.names:
                    full = f"{base}.{alias.name}".lstrip(".")
                    imported.add(full if full in modules else base or "__init__")
            elif isinstance(node, ast.Import):
                imported |= {
                    a.name.removeprefix("tfx_course.") for a in node.names if a.name.startswith("tfx_course.")
                }  # fmt: skip
        graph[name] = imported - {name}
    return graph


def _layer(module: str) -> int:
    unit = _unit(module)
    return next(i for i, (_, units) in enumerate(LAYERS) if unit in units)


def function_lengths() -> list[tuple[int, str]]:
    """Return (lines, module.function) for every function and method of the package."""
    lengths = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                lengths.append((lines, f"{_module_name(path)}.{node.name}"))
    return sorted(lengths, reverse=True)


def test_every_module_has_a_layer():
    assert all(_layer(module) >= 0 for module in import_graph())


def test_imports_flow_one_way():
    wrong = []
    for module, imported in import_graph().items():
        for other in imported:
            same_package = _unit(other) == _unit(module) and "." in module + other
            if not same_package and _layer(other) >= _layer(module):
                wrong.append(f"{module} imports {other} ({LAYERS[_layer(other)][0]})")
    assert not wrong, "imports that flow the wrong way:\n" + "\n".join(sorted(wrong))


def test_the_core_never_imports_the_tools_on_top():
    top = {"viz", "checks", "doctor", "grading", "cli"}
    core = [m for m in import_graph() if _layer(m) < _layer("viz")]
    for module in core:
        assert not {_unit(m) for m in import_graph()[module]} & top, module


def test_no_function_is_longer_than_60_lines():
    long = [f"{name}: {lines} lines" for lines, name in function_lengths() if lines > MAX_FUNCTION_LINES]  # fmt: skip
    assert not long, long


def test_the_package_never_reads_the_repository_folders():
    # What the package needs at run time is package data (course_checkpoint/), found next to
    # its modules; it never climbs to the repository root for results/ or checkpoints/.
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "parents[" not in text and ".parent.parent" not in text, path


def picture() -> str:
    """Return the import picture: the layers, lowest first, each module with what it imports."""
    graph = import_graph()
    lines = []
    for i, (title, _) in enumerate(LAYERS):
        lines.append(f"{i:2d} {title}")
        for module in sorted(m for m in graph if _layer(m) == i):
            imported = ", ".join(sorted(graph[module])) or "-"
            lines.append(f"     {module:<32} <- {imported}")
    lines.append(f"\nlongest functions (limit {MAX_FUNCTION_LINES} lines):")
    lines += [f"  {n:4d}  {name}" for n, name in function_lengths()[:5]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(print(picture()))
