"""The compact result the kubelet hands the operator: a JSON TerminationSummary < 4 KiB.

The kubelet truncates the termination log at 4 KiB, and truncated JSON does not parse, so
we shrink the summary ourselves: long message first, then the least needed parts (data
counts, per-epoch figures, progress), never the output paths unless nothing else is left.
Non-finite numbers (a NaN loss) are left out: JSON cannot carry them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from kubetune import contract
from kubetune.contract import TerminationSummary

LIMIT = contract.TERMINATION_MESSAGE_LIMIT
# What goes first when the summary is too big, least needed first (wire names).
DROP_ORDER: tuple[tuple[str, ...], ...] = (
    ("data",),
    ("evaluation", "perEpoch"),
    ("progress",),
    ("evaluation", "baseline"),
    ("evaluation", "final"),
    ("checkpoints",),
    ("evaluation",),
    ("output",),
)


def termination_log_path() -> Path:
    """$KUBETUNE_TERMINATION_LOG, else /dev/termination-log."""
    return Path(os.environ.get(contract.ENV_TERMINATION_LOG, contract.TERMINATION_LOG))


def _finite(value: Any) -> Any:
    """The document without non-finite floats (and the keys that held them)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items() if not _non_finite(v)}
    if isinstance(value, list):
        return [_finite(v) for v in value if not _non_finite(v)]
    return value


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def render(summary: TerminationSummary, limit: int = LIMIT) -> bytes:
    """The summary as JSON bytes, shrunk until it fits in `limit` (and still parses)."""
    doc: dict[str, Any] = _finite(summary.model_dump(by_alias=True, exclude_none=True, mode="json"))
    data = _encode(doc)
    if len(data) <= limit:
        return data
    # 1. the message: keep its start (where the file and line are) within 1 KiB.
    if len(doc.get("message", "")) > 1024:
        doc["message"] = doc["message"][:1000] + " …(truncated)"
    # 2. the least needed parts, in order.
    for path in DROP_ORDER:
        if len(data := _encode(doc)) <= limit:
            break
        parent = doc
        for key in path[:-1]:
            parent = parent.get(key) or {}
        parent.pop(path[-1], None)
    # 3. last resort: shorten the message more.
    while len(data := _encode(doc)) > limit and len(doc.get("message", "")) > 40:
        doc["message"] = doc["message"][: len(doc["message"]) // 2] + "…"
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
