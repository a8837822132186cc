"""The compact result the kubelet hands the operator: a JSON TerminationSummary < 4 KiB.

The kubelet truncates the termination log at 4 KiB, and truncated JSON does not parse, so
we shrink the summary ourselves: long message first, then the biggest maps, then lists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kubetune import contract
from kubetune.contract import TerminationSummary

LIMIT = contract.TERMINATION_MESSAGE_LIMIT


def termination_log_path() -> Path:
    """$KUBETUNE_TERMINATION_LOG, else /dev/termination-log."""
    return Path(os.environ.get(contract.ENV_TERMINATION_LOG, contract.TERMINATION_LOG))


def _encode(summary: TerminationSummary) -> bytes:
    doc = summary.model_dump(by_alias=True, exclude_none=True, mode="json")
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def _finite(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in values.items() if v == v and abs(v) != float("inf")}


def render(summary: TerminationSummary, limit: int = LIMIT) -> bytes:
    """The summary as JSON bytes, shrunk until it fits in `limit`."""
    s = summary.model_copy(deep=True)
    s.metrics = _finite(s.metrics)
    s.evaluation = {k: _finite(v) if isinstance(v, dict) else v for k, v in s.evaluation.items()}
    data = _encode(s)
    if len(data) <= limit:
        return data
    # 1. the message: keep its start (where the file and line are) within 1 KiB.
    if len(s.message) > 1024:
        s.message = s.message[:1000] + " …(truncated)"
    # 2. drop map entries from the biggest maps until it fits.
    for field in ("data", "output", "metrics", "evaluation"):
        while len(data := _encode(s)) > limit and getattr(s, field):
            entries: dict = getattr(s, field)
            entries.pop(next(reversed(entries)))
    # 3. last resort: shorten the message more.
    while len(data := _encode(s)) > limit and len(s.message) > 40:
        s.message = s.message[: len(s.message) // 2] + "…"
    return data


def write_termination_log(summary: TerminationSummary, path: Path | None = None) -> Path | None:
    """Write the summary; never raises (a read-only log must not mask the real result)."""
    target = path or termination_log_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(render(summary))
    except OSError:
        return None
    return target


def read_termination_log(path: Path | None = None) -> TerminationSummary | None:
    """The summary written by a trainer process, or None when absent or unreadable."""
    try:
        return TerminationSummary.model_validate_json((path or termination_log_path()).read_bytes())
    except (OSError, ValueError):
        return None
