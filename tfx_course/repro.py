"""Reproducibility: seeds, thread count and print settings shared by notebooks and scripts."""

from __future__ import annotations

import random

import numpy as np
import torch

# CPU float sums depend on the thread count, so notebooks fix it. One thread: the lessons'
# models are small (threads barely help), and CI runs two notebooks at once on two cores.
NOTEBOOK_THREADS = 1


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch.Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def setup_notebook(seed: int = 0, threads: int = NOTEBOOK_THREADS) -> None:
    """Fix seeds, threads and print precision so stored notebook outputs are reproducible.

    Results on the CPU are bit-for-bit repeatable only at a fixed thread count (parallel
    sums add in a different order), so every lesson starts by calling this.
    """
    torch.set_num_threads(threads)
    seed_everything(seed)
    torch.set_printoptions(precision=4, sci_mode=False)
    np.set_printoptions(precision=4, suppress=True)
    try:
        import matplotlib

        matplotlib.rcParams.update(
            {"figure.dpi": 72, "savefig.dpi": 72, "figure.max_open_warning": 0}
        )
    except ImportError:  # plotting is optional outside the notebooks
        pass
