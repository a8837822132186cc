"""Entry point of the `kubetune` command: one subcommand per module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kubetune import __version__

from .plan import add_plan_parser
from .render import add_render_parser
from .status import add_status_parsers
from .validate import add_validate_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune", description="Plan, validate and follow LLM fine-tuning jobs."
    )
    parser.add_argument("--version", action="version", version=f"kubetune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_validate_parser(sub)
    add_status_parsers(sub)
    add_plan_parser(sub)
    add_render_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
