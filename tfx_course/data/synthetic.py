"""Seeded synthetic sequence-to-sequence tasks that a tiny Transformer learns on a CPU.

Tasks (``TASKS``):

- ``"reversal"``: a random lower-case string -> the same string backwards.
- ``"copy"``: a random lower-case string -> itself.
- ``"sort"``: a random lower-case string -> its characters in alphabetical order.
- ``"dates"``: a date written in one of many human formats -> ISO ``yyyy-mm-dd``.

Dates lie between 1950-01-01 and 2049-12-31, so a two-digit year is read with the usual
pivot (``50``-``99`` -> 19xx, ``00``-``49`` -> 20xx). Numeric formats with slashes or dots
put the day first when the year is last ("03/04/98" is 3 April 1998); year-first formats
are year, month, day. So every source has exactly one answer.
"""

from __future__ import annotations

import datetime as dt
import random
import string
from collections.abc import Callable

from tfx_course.data.tokenizers import CharTokenizer

__all__ = ["TASKS", "DATE_FORMATS", "make_pairs", "format_date", "tokenizer_for"]

TASKS: tuple[str, ...] = ("reversal", "copy", "sort", "dates")
LETTERS = string.ascii_lowercase
_STRING_LENGTHS = (3, 8)  # default min_len, max_len of the string tasks
_FIRST_DAY = dt.date(1950, 1, 1)
_LAST_DAY = dt.date(2049, 12, 31)
_MONTHS = (
    "January February March April May June July August September October November December"
).split()
_WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# Each format turns a date into one human spelling; the target is always d.isoformat().
DATE_FORMATS: dict[str, Callable[[dt.date], str]] = {
    "ordinal of month year": lambda d: f"{_ordinal(d.day)} of {_MONTHS[d.month - 1]} {d.year}",
    "day month year": lambda d: f"{d.day} {_MONTHS[d.month - 1]} {d.year}",
    "month day, year": lambda d: f"{_MONTHS[d.month - 1]} {d.day}, {d.year}",
    "mon day, year": lambda d: f"{_MONTHS[d.month - 1][:3]} {d.day}, {d.year}",
    "day mon year": lambda d: f"{d.day} {_MONTHS[d.month - 1][:3]} {d.year}",
    "day mon yy": lambda d: f"{d.day} {_MONTHS[d.month - 1][:3].lower()} {d.year % 100:02d}",
    "month ordinal year": lambda d: f"{_MONTHS[d.month - 1].lower()} {_ordinal(d.day)} {d.year}",
    "weekday, month day, year": lambda d: (
        f"{_WEEKDAYS[d.weekday()]}, {_MONTHS[d.month - 1]} {d.day}, {d.year}"
    ),
    "MON DAY YEAR": lambda d: f"{_MONTHS[d.month - 1].upper()} {d.day} {d.year}",
    "dd/mm/yy": lambda d: f"{d.day:02d}/{d.month:02d}/{d.year % 100:02d}",
    "dd/mm/yyyy": lambda d: f"{d.day:02d}/{d.month:02d}/{d.year}",
    "d.m.yyyy": lambda d: f"{d.day}.{d.month}.{d.year}",
    "yyyy.mm.dd": lambda d: f"{d.year}.{d.month:02d}.{d.day:02d}",
    "yyyy/mm/dd": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    "yyyymmdd": lambda d: f"{d.year}{d.month:02d}{d.day:02d}",
    "yyyy-mm-dd": lambda d: d.isoformat(),
}


def format_date(date: dt.date, fmt: str) -> str:
    """Write ``date`` in one of the ``DATE_FORMATS`` (e.g. "ordinal of month year")."""
    if fmt not in DATE_FORMATS:
        raise ValueError(f"unknown date format {fmt!r}; choose one of {list(DATE_FORMATS)}")
    if not _FIRST_DAY <= date <= _LAST_DAY:
        raise ValueError(f"date {date} is outside {_FIRST_DAY}..{_LAST_DAY} (two-digit years)")
    return DATE_FORMATS[fmt](date)


def _random_string(rng: random.Random, min_len: int, max_len: int) -> str:
    return "".join(rng.choices(LETTERS, k=rng.randint(min_len, max_len)))


def _date_pair(rng: random.Random) -> tuple[str, str]:
    date = _FIRST_DAY + dt.timedelta(days=rng.randrange((_LAST_DAY - _FIRST_DAY).days + 1))
    fmt = rng.choice(list(DATE_FORMATS))
    return DATE_FORMATS[fmt](date), date.isoformat()


_STRING_TASKS: dict[str, Callable[[str], str]] = {
    "reversal": lambda s: s[::-1],
    "copy": lambda s: s,
    "sort": lambda s: "".join(sorted(s)),
}


def make_pairs(
    task: str,
    n: int,
    seed: int,
    min_len: int | None = None,
    max_len: int | None = None,
) -> list[tuple[str, str]]:
    """Return ``n`` (source, target) string pairs of ``task``, the same for the same seed.

    ``min_len`` and ``max_len`` bound the source length of the string tasks (default 3 and 8);
    the dates task has its own lengths and rejects them. Uses its own random generator, so
    the global random state is left alone.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative number of pairs, got {n!r}")
    rng = random.Random(seed)
    if task == "dates":
        if min_len is not None or max_len is not None:
            raise ValueError("the dates task has no length setting; leave min_len and max_len out")
        return [_date_pair(rng) for _ in range(n)]
    lo = _STRING_LENGTHS[0] if min_len is None else min_len
    hi = _STRING_LENGTHS[1] if max_len is None else max_len
    if not 1 <= lo <= hi:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={lo}, max_len={hi}")
    rule = _STRING_TASKS[task]
    return [(s, rule(s)) for s in (_random_string(rng, lo, hi) for _ in range(n))]


def tokenizer_for(task: str) -> CharTokenizer:
    """Return a CharTokenizer holding every character ``task`` can produce (source and target).

    One tokenizer serves both sides. Built from the task's alphabet, not from a sample, so
    a validation set never meets an unknown character.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    if task != "dates":
        return CharTokenizer.from_texts([LETTERS])
    words = " ".join(_MONTHS + _WEEKDAYS)
    return CharTokenizer.from_texts([words, words.lower(), words.upper(), string.digits, "/.,-"])
