"""How long a job has been active, for spec.activeDeadlineSeconds: time since its first
launch, less the time it spent suspended, queued (Kueue) or waiting for capacity or quota.

A deadline is about the run, not about the cluster being busy: a job that waited an hour
in a queue has not used its hour. The waits are kept in status (pausedSeconds, and
pausedSince while one lasts), so another operator or leader continues the same count.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kubetune.api.phases import FINAL_PHASES, ConditionType, Phase, Reason

from .conditions import get_condition

PAUSED_PHASES = frozenset({Phase.SUSPENDED, Phase.QUEUED})
WAITING_REASONS = frozenset(
    {Reason.WAITING_FOR_CAPACITY, Reason.NO_CAPACITY, Reason.QUOTA_EXCEEDED, Reason.QUEUED}
)


def _ts(t: datetime) -> str:
    return t.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse(s: Any) -> datetime | None:
    return datetime.fromisoformat(str(s).replace("Z", "+00:00")) if s else None


def paused(status: dict[str, Any]) -> bool:
    """Whether the status describes a wait the deadline does not count."""
    phase = status.get("phase")
    if phase in PAUSED_PHASES:
        return True
    running = get_condition(status.get("conditions") or [], ConditionType.RUNNING) or {}
    return (
        phase == Phase.PENDING
        and running.get("status") == "False"
        and running.get("reason") in WAITING_REASONS
    )


def account(status: dict[str, Any], now: datetime) -> None:
    """Opens or closes the current wait in `status` (after a reconcile decided the phase)."""
    if not status.get("startTime"):
        return
    since = _parse(status.get("pausedSince"))
    waiting = paused(status) and status.get("phase") not in FINAL_PHASES
    if waiting and since is None:
        status["pausedSince"] = _ts(now)
    elif not waiting and since is not None:
        spent = max(0.0, (now - since).total_seconds())
        status["pausedSeconds"] = int(status.get("pausedSeconds") or 0) + round(spent)
        status.pop("pausedSince", None)


def active_seconds(status: dict[str, Any], now: datetime) -> float | None:
    """Seconds since the first launch that the deadline counts; None before launch."""
    start = _parse(status.get("startTime"))
    if start is None:
        return None
    waited = float(status.get("pausedSeconds") or 0)
    since = _parse(status.get("pausedSince"))
    if since is not None:
        waited += max(0.0, (now - since).total_seconds())
    return (now - start).total_seconds() - waited
