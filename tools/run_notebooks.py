"""Re-execute lessons in place and store their outputs: `make notebooks` runs this.

Outputs are written without timestamps or machine details, so running it twice on the
same machine gives identical files; nbval then compares a fresh run against them.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

KERNEL = {"name": "tfx-course", "display_name": "Python (tfx_course)", "language": "python"}
SANITIZE = Path(__file__).resolve().parents[1] / "tests" / "nbval_sanitize.cfg"


def sanitize_rules(path: Path = SANITIZE) -> list[tuple[re.Pattern[str], str]]:
    """Read nbval's `regex:` / `replace:` pairs, the rules for what varies between runs."""
    rules, pattern = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("regex: "):
            pattern = re.compile(line[len("regex: ") :])
        elif line.startswith("replace: ") and pattern is not None:
            rules.append((pattern, line[len("replace: ") :]))
            pattern = None
    return rules


def _clean(text: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def _coalesce_streams(outputs: list) -> list:
    """Merge consecutive stdout (or stderr) chunks: how they are split depends on timing."""
    merged: list = []
    for out in outputs:
        previous = merged[-1] if merged else None
        if (
            out.output_type == "stream"
            and previous is not None
            and previous.output_type == "stream"
            and previous.name == out.name
        ):
            previous.text += out.text
        else:
            merged.append(out)
    return merged


def normalise(nb: nbformat.NotebookNode) -> None:
    """Drop what changes from run to run or machine to machine."""
    rules = sanitize_rules()
    nb.metadata["kernelspec"] = dict(KERNEL)
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        if cell.cell_type != "code":
            continue
        cell.outputs = _coalesce_streams(cell.outputs)
        for out in cell.outputs:
            if out.output_type == "stream":
                out.text = _clean(out.text, rules)
            elif "data" in out and "text/plain" in out.data:
                out.data["text/plain"] = _clean(out.data["text/plain"], rules)


def run(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=KERNEL["name"],
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    normalise(nb)
    nbformat.write(nb, path)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args()
    total = 0.0
    for path in args.notebooks:
        elapsed = run(path, args.timeout)
        total += elapsed
        print(f"{path.name:<40} {elapsed:6.1f} s", flush=True)
    print(f"{'total':<40} {total:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
