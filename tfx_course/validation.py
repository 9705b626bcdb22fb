"""Argument checks the library shares, each with a message that says what was wrong.

Shapes are formatted as ``(2, 3, 4)`` everywhere, so an error names a shape the way the
shape comments and docstrings do.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

__all__ = ["shape_str", "is_int", "check_positive_int", "check_probability"]


def shape_str(shape: Tensor | Sequence[int]) -> str:
    """Format a tensor's shape (or a sequence of sizes) as ``(2, 3, 4)``."""
    dims = shape.shape if isinstance(shape, Tensor) else shape
    return "(" + ", ".join(str(n) for n in dims) + ")"


def is_int(value: object) -> bool:
    """Return whether ``value`` is an integer and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(**sizes: object) -> None:
    """Raise ``ValueError`` naming the first of ``sizes`` that is not a positive integer."""
    for name, value in sizes.items():
        if not is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_probability(value: object, name: str = "dropout") -> None:
    """Raise ``ValueError`` unless ``value`` is a number in [0, 1), as a dropout rate must be."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
