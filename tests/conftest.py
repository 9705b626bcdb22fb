"""Shared test settings and fixtures."""

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tfx_course.data.download import DataError
from tfx_course.data.multi30k import Multi30kError, data_home, download_multi30k
from tfx_course.data.tatoeba import download_tatoeba

REPO = Path(__file__).resolve().parents[1]

# The tests use tiny models, where extra threads only add overhead, and pytest-xdist runs two
# workers on two cores: one thread each avoids oversubscription (and thread-count-dependent sums).
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one thread, whatever an earlier test set, then restore it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder holding multi30k/, found where the library looks and downloaded if missing.

    That is ``$TFX_COURSE_DATA`` (CI points it at a verified copy) or the user cache
    (``~/.cache/tfx_course``). Files already there are checked against their sha256; missing or
    corrupt ones are downloaded (checksummed, with a progress bar). If that fails, the test run
    stops with the library's own advice on what to do.
    """
    root = data_home()
    try:
        download_multi30k(root)
    except Multi30kError as err:
        problem = str(err)
    else:
        return root
    pytest.fail(f"these tests need Multi30k in {root / 'multi30k'}. {problem}", pytrace=False)


@pytest.fixture(scope="session")
def tatoeba_root() -> Path:
    """The folder holding tatoeba-fra-eng/, found and checked like ``data_root``'s Multi30k."""
    root = data_home()
    try:
        download_tatoeba(root)
    except DataError as err:
        problem = str(err)
    else:
        return root
    pytest.fail(f"these tests need Tatoeba in {root / 'tatoeba-fra-eng'}. {problem}", pytrace=False)


@pytest.fixture(scope="session")
def load_script():
    """Import a script of the repository that is not part of the package (tools/, benchmarks/)."""

    def load(relative_path: str) -> ModuleType:
        path = REPO / relative_path
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
