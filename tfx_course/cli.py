"""The ``tfx-course`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _doctor(args: argparse.Namespace) -> int:
    from tfx_course.doctor import doctor

    report = doctor(verbose=True)
    return 1 if (args.strict and report.problems) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfx-course", description="Helpers for the tfx_course Transformer course."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("doctor", help="check Python, torch, the device and the course data")
    p.add_argument("--strict", action="store_true", help="exit with 1 if any problem is found")
    p.set_defaults(func=_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
