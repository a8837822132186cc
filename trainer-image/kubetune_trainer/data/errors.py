"""Errors that mean "the user's input is wrong": reported with file, line and reason."""

from __future__ import annotations

from dataclasses import dataclass

from kubetune_trainer.exitcodes import BAD_INPUT

EXIT_CODE = BAD_INPUT
"""Exit code of a run stopped by bad input (no retry helps)."""


@dataclass(frozen=True)
class RowProblem:
    """One malformed row: where it is and what is wrong with it."""

    file: str
    line: int
    """1-based line for JSONL/CSV, 1-based item/row number for JSON arrays, Parquet, Hub."""
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class BadInputError(Exception):
    """The input cannot be used; `str(err)` is what the user should read on stderr."""

    exit_code = EXIT_CODE

    def __init__(
        self,
        reason: str,
        file: str | None = None,
        line: int | None = None,
        problems: list[RowProblem] | None = None,
    ) -> None:
        self.reason = reason
        self.file = file
        self.line = line
        self.problems = problems or []
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        lines = [where + reason] + [f"  {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more")
        super().__init__("\n".join(lines))
