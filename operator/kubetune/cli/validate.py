"""`kubetune validate FILE...`: check manifests offline against the API models."""

from __future__ import annotations

import argparse
import sys

from kubetune.api.validate import validate_file


def add_validate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check FineTuneJob manifests offline",
        description="Check FineTuneJob manifests against the API; print every problem with"
        " its file, line and field path. Exit code 1 when any problem is found.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="YAML manifests ('-' for stdin)")
    p.set_defaults(func=validate_command)


def validate_command(args: argparse.Namespace) -> int:
    from kubetune.api.validate import validate_text

    failed = False
    for name in args.files:
        result = validate_text(sys.stdin.read(), "<stdin>") if name == "-" else validate_file(name)
        for problem in result.problems:
            print(problem, file=sys.stderr)
        failed |= bool(result.problems)
        for job in result.jobs:
            print(f"{name}: {job.kind}/{job.metadata.name or job.metadata.generate_name} valid")
    return 1 if failed else 0
