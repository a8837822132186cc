"""Process exit codes shared by every trainer subcommand.

The operator reads the container's exit code to tell a user's mistake (fix the input,
do not retry) from a transient failure (retry from the last checkpoint).
"""

from __future__ import annotations

OK = 0
"""Finished successfully."""
FAILURE = 1
"""An unexpected error; may be retried."""
BAD_INPUT = 2
"""The job's input (spec, data, tokenizer) is wrong; retrying will not help."""
