"""The compact result the kubelet hands the operator: a JSON TerminationSummary < 4 KiB.

The kubelet truncates the termination log at 4 KiB, and truncated JSON does not parse, so
we shrink the summary ourselves: long message first, then the oldest per-epoch figures
and long advice and gate texts, then whole map entries, least important first.
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


def termination_log_path() -> Path:
    """$KUBETUNE_TERMINATION_LOG, else /dev/termination-log."""
    return Path(os.environ.get(contract.ENV_TERMINATION_LOG, contract.TERMINATION_LOG))


def _encode(summary: TerminationSummary) -> bytes:
    doc = summary.model_dump(by_alias=True, exclude_none=True, mode="json")
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def _finite(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in values.items() if v == v and abs(v) != float("inf")}


def _finite_tree(value: Any) -> Any:
    """Floats rounded, non-finite numbers dropped, at any depth (status.evaluation)."""
    if isinstance(value, dict):
        return {
            k: _finite_tree(v)
            for k, v in value.items()
            if not (isinstance(v, float) and not math.isfinite(v))
        }
    if isinstance(value, list):
        return [
            _finite_tree(v) for v in value if not (isinstance(v, float) and not math.isfinite(v))
        ]
    return round(value, 6) if isinstance(value, float) else value


EVALUATION_DROP_ORDER = (
    "perEpoch",
    "previous",
    "fewShot",
    "bestMetric",
    "benchmarks",
    "forgetting",
    "baseline",
    "final",
    "gate",
)
"""Whole status.evaluation entries given up last, least important first (passed stays)."""
TEXT_LIMIT = 160


def render(summary: TerminationSummary, limit: int = LIMIT) -> bytes:
    """The summary as JSON bytes, shrunk until it fits in `limit`."""
    s = summary.model_copy(deep=True)
    s.metrics = _finite(s.metrics)
    s.evaluation = _finite_tree(s.evaluation)
    data = _encode(s)
    if len(data) <= limit:
        return data
    # 1. the message: keep its start (where the file and line are) within 1 KiB.
    if len(s.message) > 1024:
        s.message = s.message[:1000] + " …(truncated)"
    # 2. the oldest per-epoch figures, then long advice and gate texts.
    epochs = s.evaluation.get("perEpoch") or []
    while len(_encode(s)) > limit and len(epochs) > 1:
        epochs.pop(0)
    texts = [a for a in s.advice] + list((s.evaluation.get("gate") or {}).get("checks") or [])
    for holder in texts:
        if len(_encode(s)) <= limit:
            break
        text = holder.message if hasattr(holder, "message") else holder.get("message", "")
        if len(text) > TEXT_LIMIT:
            short = text[: TEXT_LIMIT - 1] + "…"
            if hasattr(holder, "message"):
                holder.message = short
            else:
                holder["message"] = short
    while len(_encode(s)) > limit and any(a.level == "info" for a in s.advice):
        s.advice.remove(next(a for a in s.advice if a.level == "info"))
    # 3. drop whole entries, least important first.
    for key in EVALUATION_DROP_ORDER:
        if len(_encode(s)) <= limit:
            break
        s.evaluation.pop(key, None)
    for field in ("data", "output", "metrics"):
        while len(data := _encode(s)) > limit and getattr(s, field):
            entries: dict = getattr(s, field)
            entries.pop(next(reversed(entries)))
    while len(_encode(s)) > limit and s.advice:
        s.advice.pop()
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
