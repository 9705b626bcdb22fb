"""Shared test settings."""

import torch

# The tests use tiny models, where extra threads only add overhead, and pytest-xdist runs two
# workers on two cores: one thread each avoids oversubscription (and thread-count-dependent sums).
torch.set_num_threads(1)
