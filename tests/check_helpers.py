"""Tests every exercise-check module shares: planted bugs are named, correct variants pass."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def planted_bug_tests(
    bugs: dict[str, list[tuple[Callable, str]]],
    alternatives: dict[str, list[Callable]],
    checks: dict[str, Callable],
) -> tuple[Callable, Callable]:
    """Return the two parametrized tests; bind them to ``test_*`` names in the test module.

    ``bugs`` maps a check's name to (buggy implementation, fragment its message must hold);
    ``alternatives`` maps it to other correct implementations; ``checks`` to the check itself.
    """
    cases = [(name, fn, fragment) for name, pairs in bugs.items() for fn, fragment in pairs]

    @pytest.mark.parametrize(
        ("name", "bug", "fragment"), cases, ids=[f"{c[0]}-{c[2]}" for c in cases]
    )
    def test_planted_bug_is_named(name, bug, fragment):
        result = checks[name](bug)
        assert not result.passed
        assert result.name == name
        assert fragment in result.message

    @pytest.mark.parametrize(
        ("name", "fn"), [(name, fn) for name, fns in alternatives.items() for fn in fns]
    )
    def test_other_correct_implementation_passes(name, fn):
        result = checks[name](fn)
        assert result.passed, result.message

    return test_planted_bug_is_named, test_other_correct_implementation_passes


def bugged(cls: type, bug: str) -> type:
    """Return a subclass of a test module that plants ``bug`` (it reads ``self.bug``)."""
    return type(f"{cls.__name__}_{bug}", (cls,), {"bug": bug})
