"""Tatoeba French-English: download with a sha256 check, read the zip, split without leakage.

The file is ManyThings.org's "fra-eng" export of Tatoeba sentence pairs (2019-04-07): one zip,
``fra-eng.zip``, holding ``fra-eng/fra.txt`` with 167,130 lines ``English<TAB>French``. It is
fetched from a public repository pinned to a commit, checked against its sha256 and kept in
``<root>/tatoeba-fra-eng/`` (``root``: ``$TFX_COURSE_DATA`` or ``~/.cache/tfx_course``), written
atomically like Multi30k (``tfx_course.data.download``). It is read straight from the zip.

There is no official split, and many English sentences come with several French translations
(116,830 distinct English sentences in 167,130 pairs), so a random split of the pairs would put
the same English sentence in training and test. The course's split, fixed and documented:

1. pairs that share an English sentence, or a French one, form a group (connected pairs: the
   largest group holds 52 pairs), so that no sentence of either language is in two splits;
2. a group goes by the sha256 of its first English sentence (in sorted order): bucket =
   the first 4 bytes of the digest as a big-endian integer, mod 100; buckets 0-1 are "test",
   2-3 "val", the rest "train". About 2% of the pairs each for test and validation.

The rule depends only on the text, not on the file's order or on a random seed. Pairs come out
as (French, English): source first, as ``load_multi30k`` gives (German, English).

Terms: CC BY 2.0 (Creative Commons Attribution). Attribution: sentence pairs from the Tatoeba
Project (tatoeba.org), via www.manythings.org/anki. The source warns that the data contains
errors.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

from tfx_course.data.download import (
    DataError,
    RemoteFiles,
    download_files,
    files_status,
    require_files,
)

__all__ = [
    "TATOEBA_FILES",
    "TATOEBA_URL",
    "TATOEBA_MEMBER",
    "TATOEBA_SPLITS",
    "ATTRIBUTION",
    "tatoeba_folder",
    "tatoeba_status",
    "download_tatoeba",
    "read_tatoeba_pairs",
    "split_of_groups",
    "load_tatoeba",
]

TATOEBA_FILES: dict[str, str] = {
    "fra-eng.zip": "161c93f18da3a7e6df611ed961426613260de8af06ccf8c79c977afe5135ac44",
}
# modelexlab/data, branch gh-pages, pinned to the commit of 2023-10-13.
TATOEBA_URL = (
    "https://raw.githubusercontent.com/modelexlab/data/adddaf33ac35572bcfeb421efec29435e7ea9332/"
)
TATOEBA_MEMBER = "fra-eng/fra.txt"
TATOEBA_SPLITS = ("train", "val", "test")
ATTRIBUTION = (
    "Sentence pairs from the Tatoeba Project (tatoeba.org), via www.manythings.org/anki, CC BY 2.0"
)
_TEST_BUCKETS, _VAL_BUCKETS = 2, 4  # buckets 0-1: test, 2-3: val, 4-99: train


def _files(base_url: str = TATOEBA_URL, checksums: dict[str, str] = TATOEBA_FILES) -> RemoteFiles:
    return RemoteFiles("Tatoeba", "tatoeba-fra-eng", base_url, checksums, "download_tatoeba()")


def tatoeba_folder(root: str | os.PathLike | None = None) -> Path:
    """Return the folder that holds (or will hold) ``fra-eng.zip``: ``<root>/tatoeba-fra-eng``."""
    return _files().location(root)


def tatoeba_status(
    root: str | os.PathLike | None = None, checksums: dict[str, str] = TATOEBA_FILES
) -> dict[str, str]:
    """Return the state of the zip, ``"ok"``, ``"missing"`` or ``"corrupt"``; changes nothing."""
    return files_status(_files(checksums=checksums), root)


def download_tatoeba(
    root: str | os.PathLike | None = None,
    force: bool = False,
    *,
    base_url: str = TATOEBA_URL,
    checksums: dict[str, str] = TATOEBA_FILES,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download ``fra-eng.zip`` if it is missing or corrupt, verify it, return its folder.

    ``base_url`` and ``checksums`` exist so tests can serve a fake file.
    """
    files = _files(base_url, checksums)
    return download_files(files, root, force, progress=progress, timeout=timeout)


def read_tatoeba_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Return every (English, French) line of the zip at ``path``, in file order, unextracted."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(TATOEBA_MEMBER) as member:
            text = member.read().decode("utf-8")
    except (zipfile.BadZipFile, KeyError) as err:
        raise DataError(
            f"{path} is not the Tatoeba zip (it should hold {TATOEBA_MEMBER}): {err}"
        ) from err
    # One pair per line, "\n" endings; str.splitlines would also split on U+2028 and friends.
    pairs = []
    for number, line in enumerate(text.removesuffix("\n").split("\n"), start=1):
        fields = line.split("\t")
        if len(fields) != 2 or not all(fields):
            raise DataError(f"{TATOEBA_MEMBER} line {number} is not 'English<TAB>French': {line!r}")
        pairs.append((fields[0], fields[1]))
    return pairs


def _bucket(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") % 100


def split_of_groups(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Return the split ("train", "val" or "test") of each (English, French) pair.

    Pairs connected through a shared English or French sentence form one group, and a group's
    split follows the sha256 bucket of its first English sentence in sorted order.
    """
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving keeps the trees shallow
            node = parent[node]
        return node

    for english, french in pairs:
        a, b = ("en", english), ("fr", french)
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # any fixed rule: the group is the same set
    first: dict[tuple[str, str], str] = {}
    for english, _ in pairs:
        group = root(("en", english))
        first[group] = min(first.get(group, english), english)
    names = {}
    for group, english in first.items():
        bucket = _bucket(english)
        names[group] = "test" if bucket < _TEST_BUCKETS else "val" if bucket < _VAL_BUCKETS else "train"  # fmt: skip
    return [names[root(("en", english))] for english, _ in pairs]


_CACHE: dict[tuple[str, int, int], dict[str, list[tuple[str, str]]]] = {}


def load_tatoeba(
    split: str,
    root: str | os.PathLike | None = None,
    *,
    download: bool = False,
    checksums: dict[str, str] = TATOEBA_FILES,
) -> list[tuple[str, str]]:
    """Return the (French, English) pairs of ``split``: "train", "val" or "test", in file order.

    Checks the zip's sha256 first. With ``download=True`` a missing zip is fetched; otherwise
    its absence raises an error that says how to get it. The split is the module's fixed rule.
    """
    if split not in TATOEBA_SPLITS:
        raise ValueError(f"unknown Tatoeba split {split!r}; choose one of {list(TATOEBA_SPLITS)}")
    if download:
        download_tatoeba(root, checksums=checksums)
    files = _files(checksums=checksums)
    folder = require_files(files, list(files.checksums), root, f"Tatoeba split {split!r}")
    path = folder / "fra-eng.zip"
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _CACHE:  # reading and grouping 167,130 pairs takes a few seconds: once
        pairs = read_tatoeba_pairs(path)
        splits: dict[str, list[tuple[str, str]]] = {name: [] for name in TATOEBA_SPLITS}
        for (english, french), name in zip(pairs, split_of_groups(pairs), strict=True):
            splits[name].append((french, english))
        _CACHE.clear()
        _CACHE[key] = splits
    return list(_CACHE[key][split])
