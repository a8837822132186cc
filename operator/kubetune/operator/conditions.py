"""Kubernetes-style conditions and the kstatus trio, computed as pure functions."""

from __future__ import annotations

from typing import Any

ACTIVE_PHASES = ("Pending", "Planning", "Queued", "Running", "Evaluating")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """Returns conditions with `type_` set; lastTransitionTime moves only on a status change."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    out = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(cond)
            continue
        found = True
        changed = cond.get("status") != value
        out.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now if changed else cond.get("lastTransitionTime", now),
                "observedGeneration": generation,
            }
        )
    if not found:
        out.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
                "observedGeneration": generation,
            }
        )
    return out


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def with_kstatus(
    conditions: list[dict[str, Any]],
    phase: str,
    reason: str,
    message: str,
    generation: int,
    now: str,
    stalled: bool = False,
) -> list[dict[str, Any]]:
    """Ready/Reconciling/Stalled so Flux (kstatus) and Argo CD read the job's health.

    kstatus: Ready=True is Current; Reconciling=True is InProgress; Stalled=True is Failed.
    """
    done = phase == "Succeeded"
    failed = phase == "Failed" or stalled
    suspended = phase == "Suspended"
    conds = set_condition(conditions, "Ready", done, reason, message, generation, now)
    conds = set_condition(
        conds,
        "Reconciling",
        phase in ACTIVE_PHASES and not failed,
        reason,
        message,
        generation,
        now,
    )
    conds = set_condition(conds, "Stalled", failed, reason, message, generation, now)
    return set_condition(
        conds,
        "Suspended",
        suspended,
        "Suspended" if suspended else "NotSuspended",
        message if suspended else "",
        generation,
        now,
    )
