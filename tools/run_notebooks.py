"""Re-execute lessons in place and store their outputs: `make notebooks` runs this.

Outputs are stored as the run printed them (real times and progress bars), without timestamps
or kernel metadata. nbval applies tests/nbval_sanitize.cfg to both sides when it compares, so
the lines that legitimately vary (times, rates, numbers marked with ≈) may differ between two
runs of this tool without failing the comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

KERNEL = {"name": "tfx-course", "display_name": "Python (tfx_course)", "language": "python"}


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
    """Drop timestamps and kernel metadata, and merge stream chunks; keep the outputs' text."""
    nb.metadata["kernelspec"] = dict(KERNEL)
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        if cell.cell_type != "code":
            continue
        cell.outputs = _coalesce_streams(cell.outputs)


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
