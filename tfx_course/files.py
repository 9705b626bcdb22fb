"""Writing files safely: atomic writes and JSON.

An atomic write goes to a temporary file beside its target and is renamed over it once
complete, so a crash or Ctrl-C leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write_text", "write_json"]


@contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", *, suffix: str = ".tmp"
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; when the block ends, it replaces ``path``.

    The data is flushed to disk before the rename, so a crash leaves the old file or the new one,
    never half of one. If the block raises (or Ctrl-C), the temporary file is removed and
    ``path`` is left as it was. ``mode`` is ``"w"`` (utf-8 text) or ``"wb"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; this is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (utf-8) to ``path`` atomically and return the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON (utf-8, a final newline) atomically and return the path."""
    with atomic_open(path) as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return Path(path)
