"""Training subsets for a data-size curve: nested, seeded, without repeats.

A curve of score against training-set size compares like with like only if each larger set
contains the smaller ones (so a bigger set only adds data) and if the order of the file does
not decide which pairs come first (Tatoeba's file runs from the shortest sentences to the
longest). ``nested_subsets`` shuffles the indices once with its own seeded generator and takes
prefixes of that one order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from tfx_course.validation import is_int

__all__ = ["nested_subsets"]

Item = TypeVar("Item")


def nested_subsets(
    items: Sequence[Item], sizes: Sequence[int], seed: int = 0
) -> dict[int, list[Item]]:
    """Return ``{size: subset}``: seeded random subsets of ``items``, each inside the next larger.

    Every subset holds distinct positions of ``items`` (no item is drawn twice), in the order of
    one seeded shuffle; the global random state is left alone.
    """
    bad = [s for s in sizes if not is_int(s) or s < 1]
    if bad:
        raise ValueError(f"sizes must be positive integers, got {bad[0]!r}")
    if max(sizes, default=0) > len(items):
        raise ValueError(
            f"a subset of {max(sizes)} items cannot come from {len(items)}: use sizes up to "
            f"{len(items)}"
        )
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return {size: [items[i] for i in order[:size]] for size in sorted(sizes)}
