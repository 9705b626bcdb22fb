"""Public data files: download with sha256 checks into a cache, atomically, and check them.

A ``RemoteFiles`` names a data set's files, their sha256 and where they come from. Its files
live in ``<root>/<folder>/``, where ``root`` defaults to ``data_home()`` (``$TFX_COURSE_DATA``
or ``~/.cache/tfx_course``). Every file is checked against its sha256 before it is used; a
download goes to a temporary file in the same folder and is renamed into place only once
complete and verified, so an interrupted download never leaves a half file under the final
name. Multi30k (``multi30k.py``) and Tatoeba (``tatoeba.py``) are the two data sets.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from tfx_course.files import atomic_open

__all__ = [
    "DataError",
    "MissingDataError",
    "ChecksumError",
    "DownloadError",
    "RemoteFiles",
    "data_home",
    "sha256_file",
    "files_status",
    "download_files",
    "require_files",
]

_CHUNK = 64 * 1024
# (resolved path, size, mtime_ns, expected sha256) of files already verified in this process
_VERIFIED: set[tuple[str, int, int, str]] = set()


class DataError(RuntimeError):
    """Something is wrong with a data set's files; the message says what and how to fix it."""


class MissingDataError(DataError, FileNotFoundError):
    """Files a split needs are not in the data folder."""


class ChecksumError(DataError):
    """A file's sha256 differs from the published one (corrupt or a different version)."""


class DownloadError(DataError):
    """A download failed (offline, server error, interrupted connection)."""


@dataclass(frozen=True)
class RemoteFiles:
    """The files of one data set: their names and sha256, where to fetch them, where they go."""

    name: str  # how messages name the data set, e.g. "Multi30k"
    folder: str  # the sub-folder of the data root, e.g. "multi30k"
    base_url: str  # a file's URL is base_url + its name
    checksums: Mapping[str, str]  # file name -> sha256 hex digest
    function: str  # the library call that downloads them, e.g. "download_multi30k()"

    def location(self, root: str | os.PathLike | None = None) -> Path:
        """Return the folder that holds (or will hold) the files: ``<root>/<folder>``."""
        return Path(root if root is not None else data_home()).expanduser() / self.folder

    def fix_hint(self, folder: Path, names: list[str]) -> str:
        """Say how to get ``names`` into ``folder``: the command, the URLs, the variable."""
        urls = "\n".join(f"  {self.base_url}{name}" for name in names)
        return (
            f"With internet access, run `tfx-course data download` (or "
            f"`tfx_course.data.{self.function}`). Offline, fetch these files on another machine\n"
            f"{urls}\nand copy them into {folder}, or set TFX_COURSE_DATA to a folder that holds "
            f"{self.folder}/ with them."
        )


def data_home() -> Path:
    """Return the data folder: ``$TFX_COURSE_DATA`` if set, else ``~/.cache/tfx_course``."""
    env = os.environ.get("TFX_COURSE_DATA")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tfx_course"


def sha256_file(path: str | os.PathLike) -> str:
    """Return the sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _writable(folder: Path) -> bool:
    # os.access is not enough: root passes it even on read-only mounts. Try for real.
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def verify_file(path: Path, expected: str, files: RemoteFiles) -> None:
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
            f"{what} It has been removed. {files.fix_hint(path.parent, [path.name])}"
        )
    raise ChecksumError(
        f"{what} Its folder is read-only, so it was left in place: replace it with a good copy "
        f"from {files.base_url}{path.name}, or set TFX_COURSE_DATA to a writable folder and run "
        "`tfx-course data download` there."
    )


def files_status(files: RemoteFiles, root: str | os.PathLike | None = None) -> dict[str, str]:
    """Return the state of each expected file, ``"ok"``, ``"missing"`` or ``"corrupt"``.

    Reads every file present and compares its sha256; changes nothing.
    """
    folder = files.location(root)
    states = {}
    for name, expected in files.checksums.items():
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


def download_files(
    files: RemoteFiles,
    root: str | os.PathLike | None = None,
    force: bool = False,
    *,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download the files that are missing or corrupt, verify them, return their folder.

    Files already present and verified are skipped (``force=True`` fetches them again).
    """
    folder = files.location(root)
    todo = _files_to_fetch(folder, files, force)
    if not todo:
        return folder
    _prepare_folder(folder, todo, files)
    for i, name in enumerate(todo):
        url = files.base_url + name
        try:
            _fetch(url, folder / name, files.checksums[name], progress, timeout)
        except (OSError, http.client.HTTPException, DownloadError) as err:  # URLError: OSError
            raise _download_error(url, err, folder, todo[i:], files) from err
        verify_file(folder / name, files.checksums[name], files)
    return folder


def _files_to_fetch(folder: Path, files: RemoteFiles, force: bool) -> list[str]:
    """Return the names to download: missing, corrupt (then removed), or all with ``force``."""
    todo = []
    for name, expected in files.checksums.items():
        path = folder / name
        if path.is_file() and not force:
            try:
                verify_file(path, expected, files)
                continue
            except ChecksumError:
                if path.exists():  # corrupt and could not be removed: read-only folder
                    raise
                print(f"{name} failed its sha256 check and was removed; downloading it again.")
        todo.append(name)
    return todo


def _prepare_folder(folder: Path, todo: list[str], files: RemoteFiles) -> None:
    """Create ``folder`` if needed, or raise ``DownloadError`` saying why files cannot go there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create {folder} ({err}). {files.fix_hint(folder, todo)}") from err  # fmt: skip
    if not _writable(folder):
        raise DownloadError(
            f"{folder} is read-only, so the missing files cannot be saved there: set "
            f"TFX_COURSE_DATA to a writable folder. {files.fix_hint(folder, todo)}"
        )


def _download_error(
    url: str, err: Exception, folder: Path, remaining: list[str], files: RemoteFiles
) -> DownloadError:
    """Say which download failed, why, and what is still missing from ``folder``."""
    offline = isinstance(err, urllib.error.URLError) and not hasattr(err, "code")
    why = f"{err}; is this machine offline?" if offline else str(err)
    missing = [n for n in remaining if not (folder / n).is_file()]
    message = f"could not download {url} ({why}). "
    if missing:
        message += f"Missing from {folder}: {', '.join(missing)}. "
        message += files.fix_hint(folder, missing)
    else:  # force=True: the verified copies are still in place
        message += f"The verified files in {folder} were kept."
    return DownloadError(message)


def require_files(
    files: RemoteFiles, names: list[str], root: str | os.PathLike | None, what: str
) -> Path:
    """Return the folder once ``names`` are there and verified; else say how to get them.

    ``what`` names what needs them in the error, e.g. "Multi30k split 'val'".
    """
    folder = files.location(root)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise MissingDataError(
            f"{what} needs {', '.join(missing)} in {folder}, and it is not there. "
            f"{files.fix_hint(folder, missing)}"
        )
    for name in names:
        verify_file(folder / name, files.checksums[name], files)
    return folder
