"""Multi30k German-English: download with sha256 checks, cache, and load sentence pairs.

The six gzipped files of Multi30k task 1 (raw, cased text) live in ``<root>/multi30k/``, where
``root`` defaults to ``data_home()`` (``$TFX_COURSE_DATA`` or ``~/.cache/tfx_course``). Every
file is checked against its sha256 before it is used; a download goes to a temporary file in
the same folder and is renamed into place only once complete and verified, so an interrupted
download never leaves a half file under the final name.

Terms: the data is published for non-commercial research and education (see the source
repository's README); cite Elliott et al. (2016), "Multi30K: Multilingual English-German Image
Descriptions".
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping
from pathlib import Path

from tfx_course.data.download import (
    ChecksumError,
    DataError,
    DownloadError,
    MissingDataError,
    RemoteFiles,
    data_home,
    download_files,
    files_status,
    require_files,
    sha256_file,
)

__all__ = [
    "MULTI30K_FILES",
    "MULTI30K_URL",
    "SPLITS",
    "Multi30kError",
    "ChecksumError",
    "MissingDataError",
    "DownloadError",
    "data_home",
    "multi30k_folder",
    "sha256_file",
    "multi30k_status",
    "download_multi30k",
    "load_multi30k",
]

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
# The commit that added the raw files; a commit URL can never change under us (unlike master).
MULTI30K_URL = (
    "https://raw.githubusercontent.com/multi30k/dataset/"
    "c9be912dc05a3ebf9ae5bb5f7f58c1791cda43ab/data/task1/raw/"
)
# split name -> file stem; each split has <stem>.de.gz and <stem>.en.gz
SPLITS: dict[str, str] = {"train": "train", "val": "val", "test2016": "test_2016_flickr"}

# Every data set's errors share one base class; lesson 08 knows it by this name.
Multi30kError = DataError


def _files(
    base_url: str = MULTI30K_URL, checksums: Mapping[str, str] = MULTI30K_FILES
) -> RemoteFiles:
    return RemoteFiles("Multi30k", "multi30k", base_url, checksums, "download_multi30k()")


def multi30k_folder(root: str | os.PathLike | None = None) -> Path:
    """Return the folder that holds (or will hold) the Multi30k files: ``<root>/multi30k``."""
    return _files().location(root)


def multi30k_status(
    root: str | os.PathLike | None = None, checksums: Mapping[str, str] = MULTI30K_FILES
) -> dict[str, str]:
    """Return the state of each expected file, ``"ok"``, ``"missing"`` or ``"corrupt"``.

    Reads every file present and compares its sha256; changes nothing (``download_multi30k``
    repairs, ``load_multi30k`` refuses what is not ok).
    """
    return files_status(_files(checksums=checksums), root)


def download_multi30k(
    root: str | os.PathLike | None = None,
    force: bool = False,
    *,
    base_url: str = MULTI30K_URL,
    checksums: Mapping[str, str] = MULTI30K_FILES,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download the Multi30k files that are missing or corrupt, verify them, return the folder.

    Files already present and verified are skipped (``force=True`` fetches them again).
    ``base_url`` and ``checksums`` (file name -> sha256) exist so tests can serve fake files.
    """
    files = _files(base_url, checksums)
    return download_files(files, root, force, progress=progress, timeout=timeout)


def _read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        text = f.read()
    # One sentence per line, "\n" endings; str.splitlines would also split on U+2028 and friends.
    return text.removesuffix("\n").split("\n") if text else []


def load_multi30k(
    split: str,
    root: str | os.PathLike | None = None,
    *,
    download: bool = False,
    checksums: Mapping[str, str] = MULTI30K_FILES,
) -> list[tuple[str, str]]:
    """Return the (German, English) sentence pairs of ``split``: "train", "val" or "test2016".

    Reads the gzipped files directly after checking their sha256. With ``download=True`` missing
    files are fetched first; otherwise a missing file raises an error that says how to get it.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown Multi30k split {split!r}; choose one of {sorted(SPLITS)}")
    if download:
        download_multi30k(root, checksums=checksums)
    names = [f"{SPLITS[split]}.{lang}.gz" for lang in ("de", "en")]
    folder = require_files(_files(checksums=checksums), names, root, f"Multi30k split {split!r}")
    german, english = (_read_lines(folder / n) for n in names)
    if len(german) != len(english):
        raise Multi30kError(
            f"{names[0]} has {len(german)} lines but {names[1]} has {len(english)}; line i of one "
            f"must translate line i of the other. Remove both from {folder} and download again."
        )
    return list(zip(german, english, strict=True))
