"""The data sets the lessons download, in one table: name, files, download, status, folder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from tfx_course.data import multi30k, tatoeba


class DataSet(NamedTuple):
    """One downloadable data set: its files with their sha256, and how to fetch and check them."""

    name: str
    files: Mapping[str, str]
    download: Callable[..., Path]
    status: Callable[..., dict[str, str]]
    folder: Callable[..., Path]


DATASETS: dict[str, DataSet] = {
    "multi30k": DataSet(
        "Multi30k",
        multi30k.MULTI30K_FILES,
        multi30k.download_multi30k,
        multi30k.multi30k_status,
        multi30k.multi30k_folder,
    ),
    "tatoeba": DataSet(
        "Tatoeba",
        tatoeba.TATOEBA_FILES,
        tatoeba.download_tatoeba,
        tatoeba.tatoeba_status,
        tatoeba.tatoeba_folder,
    ),
}
