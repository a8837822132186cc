"""Process exit codes shared by every trainer subcommand: `kubetune.contract.ExitCode`.

One source of truth: the operator reads the container's exit code with the same enum to
tell a user's mistake (fix the input, do not retry) from a transient failure (retry from
the last checkpoint). The module-level names are kept for the data pipeline's imports.
"""

from __future__ import annotations

from kubetune.contract import ExitCode

OK = ExitCode.OK
"""Finished successfully."""
FAILURE = ExitCode.ERROR
"""An unexpected error; may be retried."""
BAD_INPUT = ExitCode.BAD_INPUT
"""The job's input (spec, data, tokenizer) is wrong; retrying will not help."""

__all__ = ["BAD_INPUT", "FAILURE", "OK", "ExitCode"]
