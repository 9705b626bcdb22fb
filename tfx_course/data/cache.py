"""Where the course keeps its data, which Multi30k files it expects there, and safe writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# sha256 of each gzipped file of Multi30k task 1 (raw, cased), as published by the
# multi30k/dataset repository (commit c9be912, "add task1 raw data files").
MULTI30K_FILES: dict[str, str] = {
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
}


def data_home() -> Path:
    """Return the data folder: ``$TFX_COURSE_DATA`` if set, else ``~/.cache/tfx_course``."""
    env = os.environ.get("TFX_COURSE_DATA")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tfx_course"


def multi30k_status() -> tuple[Path, list[str]]:
    """Return the Multi30k folder and the names of the expected files missing from it."""
    folder = data_home() / "multi30k"
    missing = [name for name in MULTI30K_FILES if not (folder / name).is_file()]
    return folder, missing


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
