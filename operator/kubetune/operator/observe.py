"""What the cluster says about one attempt: pure classification of its Job and pods.

The status is computed from this each reconcile (never stored as intermediate state),
so a restarted operator reaches the same conclusions from the same objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from kubetune.api.phases import Reason
from kubetune.contract import (
    OOM_MARKERS,
    ExitCode,
    TerminationSummary,
    classify_exit,
    killed_by,
)

State = Literal[
    "absent",  # no workload for this attempt
    "queued",  # the Job is suspended (Kueue holds it)
    "pending",  # pods created, not all running yet
    "stuck",  # pods cannot start: unschedulable, image pull errors
    "running",  # every pod running (or already finished, the Job not yet Complete)
    "succeeded",
    "failed",
]

IMAGE_ERRORS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
CRASH_REASONS = frozenset(
    {"CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError"}
)


@dataclass
class Observation:
    """The attempt's state and the evidence for it."""

    state: State
    reason: str = ""
    message: str = ""
    exit_code: ExitCode | None = None
    summary: TerminationSummary | None = None
    """Rank 0's termination message, on success or failure."""
    stuck_since: datetime | None = None
    """Since when the scheduler has failed to place the pod, or Kueue has held the Job."""
    running_pods: int = 0
    pods: int = 0
    disrupted: bool = False
    """A pod was evicted, preempted or deleted before any rank failed on its own: the
    attempt is relaunched without spending one of maxRestarts."""
    extra: dict[str, Any] = field(default_factory=dict)


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return dict(cond)
    return None


def _index(pod: dict[str, Any]) -> int:
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    try:
        return int(ann.get("batch.kubernetes.io/job-completion-index", "0"))
    except ValueError:
        return 0


def parse_summary(message: str | None) -> TerminationSummary | None:
    """The trainer's JSON summary from a termination message, or None if absent/garbled."""
    if not message:
        return None
    try:
        return TerminationSummary.model_validate(json.loads(message))
    except (ValueError, ValidationError):
        return None


def terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return dict(term)
    return None


def _waiting(pod: dict[str, Any]) -> dict[str, Any] | None:
    statuses = (pod.get("status") or {}).get("initContainerStatuses") or []
    statuses += (pod.get("status") or {}).get("containerStatuses") or []
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") in IMAGE_ERRORS | CRASH_REASONS:
            return dict(waiting)
    return None


def _unschedulable(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return dict(cond)
    return None


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


DISRUPTION_REASONS = frozenset(
    {
        "EvictionByEvictionAPI",
        "PreemptionByScheduler",
        "DeletionByTaintManager",
        "DeletionByPodGC",
        "TerminationByKubelet",
    }
)
"""The reasons of a pod's DisruptionTarget condition: something other than the trainer
stopped the pod (an eviction, a preemption, a drained or lost node)."""
# Causes the trainer (or the kernel) names for itself: they explain a failed attempt
# better than anything the other ranks say while they are torn down.
DEFINITE = frozenset({ExitCode.OOM, ExitCode.BAD_INPUT, ExitCode.NAN_LOSS})
HOST_OOM = Reason.HOST_OUT_OF_MEMORY


def _disruption(pod: dict[str, Any]) -> tuple[str, str, datetime | None] | None:
    """(reason, what happened, when) for a pod that was evicted, preempted or deleted
    rather than failed by its trainer; None for any other pod."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            what = f"{cond.get('reason')}: {cond.get('message') or 'disrupted'}"
            return str(cond.get("reason")), what, _time(cond.get("lastTransitionTime"))
    if status.get("reason") == "Evicted":
        return "Evicted", f"evicted: {status.get('message', '')}", None
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        # deletionTimestamp is when the grace period ends; the delete came that much earlier.
        end = _time(meta["deletionTimestamp"])
        grace = int(meta.get("deletionGracePeriodSeconds") or 0)
        when = end - timedelta(seconds=grace) if end is not None else None
        return Reason.DISRUPTED, "deleted while running", when
    return None


def _finished_at(pod: dict[str, Any]) -> datetime | None:
    return _time((terminated(pod) or {}).get("finishedAt"))


def _is_oom(kind: ExitCode, message: str) -> bool:
    return kind == ExitCode.OOM or (
        kind == ExitCode.ERROR and any(m in message for m in OOM_MARKERS)
    )


def _pod_failure(pod: dict[str, Any]) -> Observation:
    name = pod["metadata"]["name"]
    term = terminated(pod) or {}
    code = int(term.get("exitCode", 1))
    reason = str(term.get("reason") or "Error")
    summary = parse_summary(term.get("message"))
    text = f"pod {name} (rank {_index(pod)}) exited {code} ({reason})"
    if reason == "OOMKilled":
        # The kernel's OOM killer: the container ran out of host memory (its memory limit
        # or the node's), which a smaller GPU micro-batch does not help.
        limit = _memory_limit(pod)
        text += (
            f": out of host memory (memory limit {limit})"
            if limit
            else ": out of host memory (no memory limit: the node ran out)"
        )
        return Observation("failed", HOST_OOM, text, ExitCode.OOM, summary)
    kind = classify_exit(code)
    msg = summary.message if summary and summary.message else term.get("message", "")
    if _is_oom(kind, str(msg)):
        kind = ExitCode.OOM  # a rank whose launcher wrote only the error's words
    # Killed without a summary: the message is the log's tail, not the cause.
    killed = killed_by(code) if summary is None else None
    if killed:
        text += f": {killed}"
    elif msg:
        text += f": {str(msg).strip().splitlines()[-1][:300]}"
    why = summary.reason if summary and summary.reason else reason
    if kind == ExitCode.OOM and why in ("Error", "Killed"):
        why = "OutOfMemory"
    return Observation("failed", why, text, kind, summary)


def _memory_limit(pod: dict[str, Any]) -> str | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        if limit:
            return str(limit)
    return None


def _failure(pods: list[dict[str, Any]]) -> Observation | None:
    """The most telling failed pod. A cause the trainer or the kernel named (out of GPU or
    host memory, bad input, NaN loss) first, whichever rank it was on; else a disruption
    (eviction, preemption, deletion) that came before every other rank's failure, which
    were then its fallout; else a rank the trainer classified; else the first."""
    failed: list[tuple[Observation, datetime | None]] = []
    disrupted: list[tuple[Observation, datetime | None]] = []
    for pod in pods:
        status = pod.get("status") or {}
        term = terminated(pod)
        cut = _disruption(pod)
        ended = status.get("phase") == "Failed" or (term and term.get("exitCode", 0) != 0)
        if cut is not None and (ended or status.get("reason") == "Evicted"):
            reason, what, when = cut
            text = f"pod {pod['metadata']['name']} (rank {_index(pod)}) was {what}".strip()
            seen = Observation("failed", reason, text, ExitCode.RETRYABLE, disrupted=True)
            disrupted.append((seen, when or _finished_at(pod)))
            # What the trainer said as it stopped still counts if it names a cause.
            if term and term.get("exitCode", 0) != 0:
                own = _pod_failure(pod)
                if own.exit_code in DEFINITE:
                    failed.append((own, _finished_at(pod)))
            continue
        if not ended:
            continue
        failed.append((_pod_failure(pod), _finished_at(pod)))
    definite = [o for o, _ in failed if o.exit_code in DEFINITE]
    if definite:
        return sorted(definite, key=lambda o: o.reason != HOST_OOM)[0]
    if disrupted:
        first = min(disrupted, key=lambda d: d[1] or datetime.min.replace(tzinfo=UTC))
        ends = [t for _, t in failed]
        if first[1] is None or all(t is not None and first[1] < t for t in ends):
            return first[0]
    if not failed:
        return None
    # A rank the trainer itself classified explains more than one killed in the fallout.
    ranked = sorted(
        (o for o, _ in failed), key=lambda o: (o.summary is None, o.exit_code == ExitCode.RETRYABLE)
    )
    return ranked[0]


def observe(job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> Observation:
    """Classifies one attempt from its Job and the Job's pods."""
    if job is None:
        return Observation("absent")
    pods = sorted(pods, key=_index)
    running = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running")
    result = _classify(job, pods, running)
    result.running_pods, result.pods = running, len(pods)
    return result


def _classify(job: dict[str, Any], pods: list[dict[str, Any]], running: int) -> Observation:
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        rank0 = next((p for p in pods if _index(p) == 0), None)
        summary = parse_summary((terminated(rank0) or {}).get("message")) if rank0 else None
        return Observation("succeeded", "Completed", "training finished", ExitCode.OK, summary)
    failure = _failure(pods)
    if failure is not None:
        return failure
    failed_cond = _condition(job, "Failed") or _condition(job, "FailureTarget")
    stopping = [p for p in pods if _disruption(p) is not None]
    if failed_cond and stopping:
        # The Job controller counts a deleted pod as failed at once; the pod itself is
        # still saving a checkpoint in its grace period. The next attempt waits for it.
        pod = stopping[0]
        what = (_disruption(pod) or ("", "stopping", None))[1]
        return Observation(
            "pending",
            "Stopping",
            f"pod {pod['metadata']['name']} (rank {_index(pod)}) was {what};"
            " waiting for it to stop",
        )
    if failed_cond and not pods and failed_cond.get("reason") == "BackoffLimitExceeded":
        # Its pods are gone without a trace of failing: deleted (by hand, or with a node).
        return Observation(
            "failed",
            Reason.DISRUPTED,
            "the trainer pods were deleted",
            ExitCode.RETRYABLE,
            disrupted=True,
        )
    if failed_cond:
        return Observation(
            "failed",
            str(failed_cond.get("reason") or "JobFailed"),
            str(failed_cond.get("message") or "the trainer Job failed"),
            ExitCode.RETRYABLE
            if failed_cond.get("reason") != "DeadlineExceeded"
            else ExitCode.ERROR,
        )
    if (job.get("spec") or {}).get("suspend"):
        held = _condition(job, "Suspended") or {}
        since = held.get("lastTransitionTime") or (job.get("metadata") or {}).get(
            "creationTimestamp"
        )
        return Observation(
            "queued", "Queued", "Job held for admission (Kueue)", stuck_since=_time(since)
        )
    for pod in pods:
        waiting = _waiting(pod)
        if waiting:
            return Observation(
                "stuck",
                str(waiting.get("reason")),
                f"pod {pod['metadata']['name']}: {waiting.get('reason')}: "
                f"{waiting.get('message', '')}".strip(),
            )
        unsched = _unschedulable(pod)
        if unsched:
            return Observation(
                "stuck",
                "Unschedulable",
                f"pod {pod['metadata']['name']}: {unsched.get('message') or 'unschedulable'}",
                stuck_since=_time(unsched.get("lastTransitionTime")),
            )
    parallelism = int((job.get("spec") or {}).get("parallelism") or 1)
    if running >= parallelism:
        return Observation("running", "Running", f"{running} trainer pod(s) running")
    done = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Succeeded")
    if done and running + done >= parallelism:
        # The trainers have exited 0 and the Job controller has not marked the Job
        # Complete yet (a second or so): still the run, never back to Pending.
        return Observation("running", "Finishing", f"{done}/{parallelism} trainer pods finished")
    return Observation("pending", "PodsPending", f"{running}/{parallelism} trainer pods running")
