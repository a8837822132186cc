"""What the cluster says about one attempt: pure classification of its Job and pods.

The status is computed from this each reconcile (never stored as intermediate state),
so a restarted operator reaches the same conclusions from the same objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from kubetune.contract import ExitCode, TerminationSummary, classify_exit, killed_by

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


def _failure(pods: list[dict[str, Any]]) -> Observation | None:
    """The most telling failed pod: one that the trainer classified, else the first."""
    failed = []
    for pod in pods:
        status = pod.get("status") or {}
        term = terminated(pod)
        if status.get("phase") != "Failed" and not (term and term.get("exitCode", 0) != 0):
            continue
        if status.get("reason") == "Evicted":
            failed.append(
                Observation(
                    "failed",
                    "Evicted",
                    f"pod {pod['metadata']['name']} was evicted: {status.get('message', '')}",
                    ExitCode.RETRYABLE,
                )
            )
            continue
        code = int((term or {}).get("exitCode", 1))
        reason = str((term or {}).get("reason") or "Error")
        summary = parse_summary((term or {}).get("message"))
        kind = ExitCode.OOM if reason == "OOMKilled" else classify_exit(code)
        msg = summary.message if summary and summary.message else (term or {}).get("message", "")
        # Killed without a summary: the message is the log's tail, not the cause.
        killed = killed_by(code) if summary is None else None
        name = pod["metadata"]["name"]
        text = f"pod {name} (rank {_index(pod)}) exited {code} ({reason})"
        if killed:
            text += f": {killed}"
        elif msg:
            text += f": {str(msg).strip().splitlines()[-1][:300]}"
        failed.append(
            Observation(
                "failed",
                summary.reason if summary and summary.reason else reason,
                text,
                kind,
                summary,
            )
        )
    if not failed:
        return None
    # A rank the trainer itself classified explains more than one killed in the fallout.
    failed.sort(key=lambda o: (o.summary is None, o.exit_code == ExitCode.RETRYABLE))
    return failed[0]


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
