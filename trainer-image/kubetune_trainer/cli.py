"""The `python -m kubetune_trainer` command line, assembled from subcommand modules.

Each subcommand lives in its own module exposing `configure(parser)` and `run(args) -> int`;
registering one is a line in `SUBCOMMANDS`. Modules must import heavy libraries (torch,
transformers) inside `run`, so `--help` and argument errors stay instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS: dict[str, str] = {
    "prepare": "kubetune_trainer.data.command",
    "launch": "kubetune_trainer.launch",
    "train": "kubetune_trainer.train",
    "inspect-model": "kubetune_trainer.inspect_model",
}
"""Subcommand name -> module providing `configure(parser)`, `run(args)` and a docstring."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; with `only`, just that subcommand's module is imported."""
    parser = argparse.ArgumentParser(prog="kubetune_trainer", description=__doc__)
    subs = parser.add_subparsers(dest="command", required=True)
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            subs.add_parser(name)
            continue
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip().splitlines()
        sub = subs.add_parser(name, help=doc[0] if doc else None, description=module.__doc__)
        module.configure(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the chosen subcommand; returns its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    only = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    args = build_parser(only).parse_args(argv)
    return int(args._run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
