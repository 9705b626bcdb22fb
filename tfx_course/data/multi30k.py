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
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from tqdm import tqdm

from tfx_course.files import atomic_open

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
_CHUNK = 64 * 1024
# (resolved path, size, mtime_ns, expected sha256) of files already verified in this process
_VERIFIED: set[tuple[str, int, int, str]] = set()


class Multi30kError(RuntimeError):
    """Something is wrong with the Multi30k files; the message says what and how to fix it."""


class MissingDataError(Multi30kError, FileNotFoundError):
    """Files a split needs are not in the data folder."""


class ChecksumError(Multi30kError):
    """A file's sha256 differs from the published one (corrupt or a different version)."""


class DownloadError(Multi30kError):
    """A download failed (offline, server error, interrupted connection)."""


def data_home() -> Path:
    """Return the data folder: ``$TFX_COURSE_DATA`` if set, else ``~/.cache/tfx_course``."""
    env = os.environ.get("TFX_COURSE_DATA")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tfx_course"


def multi30k_folder(root: str | os.PathLike | None = None) -> Path:
    """Return the folder that holds (or will hold) the Multi30k files: ``<root>/multi30k``."""
    return Path(root if root is not None else data_home()).expanduser() / "multi30k"


def sha256_file(path: str | os.PathLike) -> str:
    """Return the sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fix_hint(folder: Path, names: list[str], base_url: str) -> str:
    urls = "\n".join(f"  {base_url}{name}" for name in names)
    return (
        f"With internet access, run `tfx-course data download` (or "
        f"`tfx_course.data.download_multi30k()`). Offline, fetch these files on another machine\n"
        f"{urls}\nand copy them into {folder}, or set TFX_COURSE_DATA to a folder that holds "
        f"multi30k/ with them."
    )


def _writable(folder: Path) -> bool:
    # os.access is not enough: root passes it even on read-only mounts. Try for real.
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _verify(path: Path, expected: str, base_url: str) -> None:
    """Check ``path`` against ``expected``; on mismatch remove it if possible and raise."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected)
    if key in _VERIFIED:
        return
    actual = sha256_file(path)
    if actual == expected:
        _VERIFIED.add(key)
        return
    what = f"{path} is corrupt or a different version: sha256 {actual}, expected {expected}."
    if _writable(path.parent):
        path.unlink()
        raise ChecksumError(
            f"{what} It has been removed. {_fix_hint(path.parent, [path.name], base_url)}"
        )
    raise ChecksumError(
        f"{what} Its folder is read-only, so it was left in place: replace it with a good copy "
        f"from {base_url}{path.name}, or set TFX_COURSE_DATA to a writable folder and run "
        "`tfx-course data download` there."
    )


def multi30k_status(
    root: str | os.PathLike | None = None, checksums: Mapping[str, str] = MULTI30K_FILES
) -> dict[str, str]:
    """Return the state of each expected file, ``"ok"``, ``"missing"`` or ``"corrupt"``.

    Reads every file present and compares its sha256; changes nothing (``download_multi30k``
    repairs, ``load_multi30k`` refuses what is not ok).
    """
    folder = multi30k_folder(root)
    states = {}
    for name, expected in checksums.items():
        path = folder / name
        if not path.is_file():
            states[name] = "missing"
        else:
            states[name] = "ok" if sha256_file(path) == expected else "corrupt"
    return states


def _fetch(url: str, path: Path, expected: str, progress: bool, timeout: float) -> None:
    """Download ``url`` to a temporary file beside ``path``, verify it, then rename it."""
    digest = hashlib.sha256()
    # atomic_open removes the temporary file when the block raises (bad download, Ctrl-C)
    with (
        atomic_open(path, "wb", suffix=".part") as out,
        urllib.request.urlopen(url, timeout=timeout) as response,
    ):
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=path.name, disable=not progress)
        with bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        received = out.tell()
        if total is not None and received != total:
            raise DownloadError(f"the connection dropped after {received} of {total} bytes")
        if digest.hexdigest() != expected:
            raise ChecksumError(
                f"the download of {url} has sha256 {digest.hexdigest()}, expected {expected}; "
                "nothing was saved. Try again; if it persists the file changed at the source."
            )


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
    folder = multi30k_folder(root)
    todo = _files_to_fetch(folder, checksums, base_url, force)
    if not todo:
        return folder
    _prepare_folder(folder, todo, base_url)
    for i, name in enumerate(todo):
        url = base_url + name
        try:
            _fetch(url, folder / name, checksums[name], progress, timeout)
        except (OSError, http.client.HTTPException, DownloadError) as err:  # URLError: OSError
            raise _download_error(url, err, folder, todo[i:], base_url) from err
        _verify(folder / name, checksums[name], base_url)
    return folder


def _files_to_fetch(
    folder: Path, checksums: Mapping[str, str], base_url: str, force: bool
) -> list[str]:
    """Return the names to download: missing, corrupt (then removed), or all with ``force``."""
    todo = []
    for name, expected in checksums.items():
        path = folder / name
        if path.is_file() and not force:
            try:
                _verify(path, expected, base_url)
                continue
            except ChecksumError:
                if path.exists():  # corrupt and could not be removed: read-only folder
                    raise
                print(f"{name} failed its sha256 check and was removed; downloading it again.")
        todo.append(name)
    return todo


def _prepare_folder(folder: Path, todo: list[str], base_url: str) -> None:
    """Create ``folder`` if needed, or raise ``DownloadError`` saying why files cannot go there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        hint = _fix_hint(folder, todo, base_url)
        raise DownloadError(f"cannot create {folder} ({err}). {hint}") from err
    if not _writable(folder):
        raise DownloadError(
            f"{folder} is read-only, so the missing files cannot be saved there: set "
            f"TFX_COURSE_DATA to a writable folder. {_fix_hint(folder, todo, base_url)}"
        )


def _download_error(
    url: str, err: Exception, folder: Path, remaining: list[str], base_url: str
) -> DownloadError:
    """Say which download failed, why, and what is still missing from ``folder``."""
    offline = isinstance(err, urllib.error.URLError) and not hasattr(err, "code")
    why = f"{err}; is this machine offline?" if offline else str(err)
    missing = [n for n in remaining if not (folder / n).is_file()]
    message = f"could not download {url} ({why}). "
    if missing:
        message += f"Missing from {folder}: {', '.join(missing)}. "
        message += _fix_hint(folder, missing, base_url)
    else:  # force=True: the verified copies are still in place
        message += f"The verified files in {folder} were kept."
    return DownloadError(message)


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
    folder = multi30k_folder(root)
    names = [f"{SPLITS[split]}.{lang}.gz" for lang in ("de", "en")]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise MissingDataError(
            f"Multi30k split {split!r} needs {', '.join(missing)} in {folder}, and it is not "
            f"there. {_fix_hint(folder, missing, MULTI30K_URL)}"
        )
    for name in names:
        _verify(folder / name, checksums[name], MULTI30K_URL)
    german, english = (_read_lines(folder / n) for n in names)
    if len(german) != len(english):
        raise Multi30kError(
            f"{names[0]} has {len(german)} lines but {names[1]} has {len(english)}; line i of one "
            f"must translate line i of the other. Remove both from {folder} and download again."
        )
    return list(zip(german, english, strict=True))
