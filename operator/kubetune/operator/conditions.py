"""Kubernetes-style conditions and the health that GitOps tools read, as pure functions.

The rules follow what the tools implement (cli-utils' kstatus README and `status.Compute`,
which Flux runs; Argo CD's health Lua in charts/kubetune/files/argocd-health.lua):

* `status.observedGeneration` and every condition's `observedGeneration` equal the
  generation the operator last looked at, on every write. kstatus reads an older one as
  InProgress, and `kubectl wait --for=condition=X` ignores a condition whose
  observedGeneration is older than the object's generation.
* `Reconciling=True` while the operator still works towards the spec (kstatus: InProgress;
  Argo CD: Progressing). Waiting for capacity or in a queue is progress.
* `Stalled=True` when the job cannot get further by itself: failed, or stuck on something a
  person must fix, or waiting for capacity past the grace period (kstatus: Failed; Argo CD:
  Degraded). Never together with Reconciling=True.
* `Ready=True` when there is nothing left to do for this spec: succeeded, or suspended as
  asked (kstatus: Current). `Ready=False` otherwise, which kstatus reads as InProgress: so a
  suspended job must not say Ready=False, or Flux would wait for it forever.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.phases import ConditionType, Phase, Reason


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
                "reason": str(reason),
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
                "reason": str(reason),
                "message": message,
                "lastTransitionTime": now,
                "observedGeneration": generation,
            }
        )
    return out


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]], type_: str) -> bool:
    return (get_condition(conditions, type_) or {}).get("status") == "True"


def observed(conditions: list[dict[str, Any]], generation: int) -> list[dict[str, Any]]:
    """Every condition re-stated for `generation`: the reconcile that writes them has read
    that generation and found each still true (the spec is frozen after launch except
    `suspend`, and a finished job stays finished)."""
    return [{**c, "observedGeneration": generation} for c in conditions]


def with_kstatus(
    conditions: list[dict[str, Any]],
    phase: Phase,
    reason: str,
    message: str,
    generation: int,
    now: str,
    stalled: bool = False,
) -> list[dict[str, Any]]:
    """Ready/Reconciling/Stalled/Suspended for `phase`, as the module docstring says."""
    phase = Phase(phase)
    stalled = stalled or phase == Phase.FAILED
    ready = phase in (Phase.SUCCEEDED, Phase.SUSPENDED)
    reconciling = phase.active and not stalled
    suspended = phase == Phase.SUSPENDED
    conds = set_condition(conditions, ConditionType.READY, ready, reason, message, generation, now)
    conds = set_condition(
        conds, ConditionType.RECONCILING, reconciling, reason, message, generation, now
    )
    conds = set_condition(conds, ConditionType.STALLED, stalled, reason, message, generation, now)
    return set_condition(
        conds,
        ConditionType.SUSPENDED,
        suspended,
        Reason.SUSPENDED if suspended else Reason.NOT_SUSPENDED,
        message if suspended else "",
        generation,
        now,
    )
