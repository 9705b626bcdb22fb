"""Shared test settings."""

import pytest
import torch

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
