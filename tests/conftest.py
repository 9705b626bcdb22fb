"""Shared test settings and fixtures."""

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

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
    """The folder holding multi30k/: $TFX_COURSE_DATA (CI sets it), else ../shared/data."""
    env = os.environ.get("TFX_COURSE_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    if not (root / "multi30k").is_dir():
        pytest.fail(
            f"Multi30k not found in {root / 'multi30k'}: set TFX_COURSE_DATA to a folder "
            "holding multi30k/*.gz (or put that folder in ../shared/data beside the repository)"
        )
    return root


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
