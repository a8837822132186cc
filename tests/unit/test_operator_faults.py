"""Faults the operator must tell apart (issue 16): pods the API server refuses, a trainer
pod evicted or deleted (not a failure), out of memory on any rank, host memory apart from
GPU memory, a deadline that waits do not use up, and a failover that keeps the progress.

The reconciler runs against the in-memory API of test_operator_status.py; the refusals run
against a real API server in tests/integration/test_operator_refusals.py."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from kubetune.api.phases import ConditionType, Phase, Reason
from kubetune.contract import ExitCode
from kubetune.operator import reconcile, refusals
from kubetune.operator.observe import observe
from kubetune.operator.progress import ProgressStore
from kubetune.operator.reconcile import Reconciler
from tests.unit.test_operator_status import World, cond, pod, trio


def ranked(
    index: int, phase: str, code: int, reason: str = "Error", **extra: Any
) -> dict[str, Any]:
    """Pod `index` of a two-node attempt, ended with `code` and a termination message."""
    term = {"exitCode": code, "reason": reason, "finishedAt": "2025-01-01T00:00:10Z", **extra}
    return {
        "metadata": {
            "name": f"j-a1-{index}",
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "spec": {"containers": [{"resources": {"limits": {"memory": "8Gi"}}}]},
        "status": {"phase": phase, "containerStatuses": [{"state": {"terminated": term}}]},
    }


def summary(code: ExitCode, reason: str, message: str) -> str:
    return json.dumps({"exitCode": int(code), "reason": reason, "message": message})


def failed_job() -> dict[str, Any]:
    return {
        "spec": {"parallelism": 2},
        "status": {"conditions": [{"type": "Failed", "status": "True"}]},
    }


# ------------------------------------------------------------------ out of memory
def test_oom_on_a_rank_other_than_0_is_oom() -> None:
    """Rank 1 ran out of GPU memory; rank 0 was torn down (its summary says Preempted, or
    a collective's error). The attempt failed of OOM, which re-plans."""
    oom = summary(ExitCode.OOM, "OutOfMemory", "out of memory: CUDA out of memory.")
    for rank0 in (
        ranked(0, "Failed", 6, message=summary(ExitCode.PREEMPTED, "Preempted", "SIGTERM")),
        ranked(0, "Failed", 1, message=summary(ExitCode.ERROR, "Error", "DistBackendError")),
    ):
        seen = observe(failed_job(), [rank0, ranked(1, "Failed", 3, message=oom)])
        assert seen.exit_code == ExitCode.OOM, seen
        assert "rank 1" in seen.message and seen.reason == "OutOfMemory"


def test_a_rank_that_only_quotes_the_cuda_error_is_oom() -> None:
    """A launcher that wrote no summary of its own: the message is the error's words."""
    words = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    seen = observe(failed_job(), [ranked(0, "Failed", 143), ranked(1, "Failed", 1, message=words)])
    assert seen.exit_code == ExitCode.OOM and seen.reason == "OutOfMemory"


def test_host_oomkilled_fails_with_advice_and_keeps_the_micro_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = World(monkeypatch)
    plan = w.run()["plan"]
    w.set_pods(ranked(0, "Failed", 137, "OOMKilled"))
    st = w.run()
    assert st["phase"] == Phase.FAILED
    assert cond(st, ConditionType.FAILED)["reason"] == Reason.HOST_OUT_OF_MEMORY
    assert "memory limit 8Gi" in st["message"] and "spec.resources.memory" in st["message"]
    assert st["plan"]["microBatchSize"] == plan["microBatchSize"], "GPU plan untouched"
    assert st["restarts"] == 0


def test_gpu_oom_on_rank_1_replans(monkeypatch: pytest.MonkeyPatch) -> None:
    w = World(monkeypatch)
    plan = copy.deepcopy(w.run()["plan"])
    oom = summary(ExitCode.OOM, "OutOfMemory", "out of memory: CUDA out of memory.")
    w.set_pods(ranked(0, "Failed", 6), ranked(1, "Failed", 3, message=oom))
    w.run()
    st = w.run(after=3600)  # past the backoff
    assert st["attempt"] == 2 and st["restarts"] == 1
    assert cond(st, ConditionType.PLANNED)["reason"] == Reason.REPLANNED_AFTER_OOM
    assert st["plan"]["microBatchSize"] < plan["microBatchSize"] or st["plan"] != plan


# ------------------------------------------------------------------ disruptions
def _disrupted(kind: str) -> dict[str, Any]:
    p = ranked(0, "Failed", 6, message=summary(ExitCode.PREEMPTED, "Preempted", "SIGTERM"))
    if kind == "evicted":
        p["status"]["conditions"] = [
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "EvictionByEvictionAPI",
                "message": "Eviction API: evicting",
                "lastTransitionTime": "2025-01-01T00:00:05Z",
            }
        ]
    else:  # deleted by hand: the Job's finalizer keeps the Failed pod a moment
        p["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:35Z"
        p["metadata"]["deletionGracePeriodSeconds"] = 30
    return p


@pytest.mark.parametrize("kind", ["evicted", "deleted", "gone"])
def test_an_evicted_or_deleted_pod_does_not_spend_a_restart(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    w = World(monkeypatch, maxRestarts=0)
    w.run()
    if kind == "gone":  # deleted and already removed: the Job failed without a pod
        w.job(conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
        w.set_pods()
    else:
        w.set_pods(_disrupted(kind))
    st = w.run()
    assert st["phase"] != Phase.FAILED, st["message"]
    assert st["attempt"] == 2 and st["restarts"] == 0 and st["disruptions"] == 1
    assert any(r == Reason.DISRUPTED for _, r, _ in w.kube.events)
    assert not any(r == Reason.RESTARTING for _, r, _ in w.kube.events)


def test_a_trainer_failure_before_the_job_controller_deletes_the_others_is_counted() -> None:
    """Rank 0 crashed; the Job controller then deleted rank 1 (deletionTimestamp after
    rank 0 finished): that deletion is the fallout, the crash is the failure."""
    crash = ranked(0, "Failed", 1, message=summary(ExitCode.ERROR, "Error", "KeyError: x"))
    fallout = _disrupted("deleted")
    fallout["metadata"]["name"] = "j-a1-1"
    fallout["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] = "1"
    fallout["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:41Z"  # deleted at 0:11
    seen = observe(failed_job(), [crash, fallout])
    assert not seen.disrupted and seen.exit_code == ExitCode.ERROR and "KeyError" in seen.message
    # ... and the other way round: rank 1 evicted first, rank 0's collective broke after.
    evicted = _disrupted("evicted")
    late = ranked(0, "Failed", 1, message=summary(ExitCode.ERROR, "Error", "NCCL timeout"))
    late["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = (
        "2025-01-01T00:01:00Z"
    )
    seen = observe(failed_job(), [late, evicted])
    assert seen.disrupted and seen.reason == "EvictionByEvictionAPI"


# ------------------------------------------------------------------ refused pods
def failed_create(message: str, at: datetime, reason: str = "FailedCreate") -> dict[str, Any]:
    ts = reconcile._ts(at)
    return {
        "involvedObject": {"kind": "Job", "name": "j-a1", "uid": "job-uid"},
        "reason": reason,
        "message": message,
        "firstTimestamp": ts,
        "lastTimestamp": ts,
    }


NO_CLASS = (
    'Error creating: pods "j-a1-0-x7k2p" is forbidden: no PriorityClass with name nope was found'
)
QUOTA = (
    'Error creating: pods "j-a1-0-abcde" is forbidden: exceeded quota: tight, requested: pods=1,'
    " used: pods=1, limited: pods=1"
)


def test_refusals_are_classified_by_the_api_servers_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = World(monkeypatch)
    t = w.now
    assert refusals.refusal([failed_create(NO_CLASS, t)]).kind == "permanent"  # type: ignore[union-attr]
    quota = refusals.refusal([failed_create(QUOTA, t)])
    assert quota is not None and quota.kind == "quota" and "j-a1-0-abcde" not in quota.message
    webhook = 'Error creating: Internal error occurred: failed calling webhook "x": timeout'
    assert refusals.refusal([failed_create(webhook, t)]).kind == "transient"  # type: ignore[union-attr]
    # created since: no refusal any more
    later = failed_create("Created pod: j-a1-0-q", t + timedelta(seconds=5), "SuccessfulCreate")
    assert refusals.refusal([failed_create(QUOTA, t), later]) is None


def _launched(w: World) -> None:
    w.run()
    w.kube.created[("Job", "j-a1")]["metadata"]["uid"] = "job-uid"


def test_a_missing_priority_class_fails_the_job_with_the_api_servers_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = World(monkeypatch, resources={"priorityClassName": "nope"})
    _launched(w)
    st = w.run()
    assert st["phase"] == Phase.PENDING  # no refusal yet: pods are being created
    w.kube.job_events.append(failed_create(NO_CLASS, w.now))
    st = w.run()
    assert st["phase"] == Phase.FAILED
    assert cond(st, ConditionType.FAILED)["reason"] == Reason.PODS_FORBIDDEN
    assert "no PriorityClass with name nope was found" in st["message"]
    assert ("Warning", Reason.PODS_FORBIDDEN) in [(k, r) for k, r, _ in w.kube.events]
    assert ("Job", "j-a1") not in w.kube.created, "the refused Job is deleted"


def test_a_full_quota_waits_and_continues(monkeypatch: pytest.MonkeyPatch) -> None:
    w = World(monkeypatch)
    _launched(w)
    w.kube.job_events.append(failed_create(QUOTA, w.now))
    st = w.run()
    assert st["phase"] == Phase.PENDING
    assert cond(st, ConditionType.RUNNING)["reason"] == Reason.QUOTA_EXCEEDED
    assert trio(st)["Reconciling"] == "True" and trio(st)["Stalled"] == "False"
    assert "exceeded quota: tight" in st["message"]
    w.kube.job_events.append(
        failed_create("Created pod: j-a1-0-z", w.now + timedelta(seconds=30), "SuccessfulCreate")
    )
    w.set_pods(pod("Running"))
    st = w.run(after=60)
    assert st["phase"] == Phase.RUNNING


# ------------------------------------------------------------------ deadlines
def test_the_deadline_does_not_count_suspended_or_queued_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = World(monkeypatch, activeDeadlineSeconds=600)
    w.run()
    w.set_pods(pod("Running"))
    w.run(after=100)  # 100 s running
    w.edit(suspend=True)
    assert w.run()["phase"] == Phase.SUSPENDED
    w.run(after=3600)  # an hour suspended
    w.edit(suspend=False)
    st = w.run()
    assert st["phase"] != Phase.FAILED and st["attempt"] == 2
    w.kube.created[("Job", "j-a2")]["spec"]["suspend"] = True  # held by Kueue
    assert w.run(after=1)["phase"] == Phase.QUEUED
    st = w.run(after=3600)
    assert st["phase"] == Phase.QUEUED, st["message"]
    w.kube.created[("Job", "j-a2")]["spec"]["suspend"] = False
    w.kube.pods = [pod("Running")]
    st = w.run(after=100)
    assert st["phase"] == Phase.RUNNING
    assert st["pausedSeconds"] >= 7200 and "pausedSince" not in st
    st = w.run(after=500)  # ~700 s active now
    assert st["phase"] == Phase.FAILED
    assert cond(st, ConditionType.FAILED)["reason"] == Reason.DEADLINE_EXCEEDED


# ------------------------------------------------------------------ failover
def test_a_new_leader_starts_from_the_status_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune.contract import ProgressReport

    w = World(monkeypatch)
    w.run()
    w.set_pods(pod("Running"))
    w.run()
    w.progress.put(
        ProgressReport.model_validate(
            {
                "namespace": "ns",
                "name": "j",
                "attempt": 1,
                "step": 40,
                "totalSteps": 120,
                "loss": 1.234,
                "phase": "evaluating",
            }
        )
    )
    before = w.run()
    assert before["phase"] == Phase.EVALUATING and "step 40/120" in before["message"]
    # The leader changes: a new process, an empty store, the same cluster.
    settings = w.reconciler.settings
    w.reconciler = Reconciler(w.kube, settings, ProgressStore())  # type: ignore[arg-type]
    after = w.run(after=5)
    assert after["phase"] == Phase.EVALUATING, after["message"]
    assert after["message"] == before["message"]
    assert after["progress"] == before["progress"]


# ------------------------------------------------------------------ TTL
def test_ttl_can_delete_only_the_children(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under GitOps a deleted FineTuneJob comes back from Git and trains again: with
    ttlDeletes: children the TTL frees the Jobs and pods and keeps the FineTuneJob
    (FakeKube.delete_job_resource raises)."""
    w = World(monkeypatch, ttlSecondsAfterFinished=60, ttlDeletes="children")
    w.run()
    w.set_pods(pod("Succeeded", containerStatuses=[{"state": {"terminated": {"exitCode": 0}}}]))
    w.job(conditions=[{"type": "Complete", "status": "True"}])
    assert w.run()["phase"] == Phase.SUCCEEDED
    assert ("Job", "j-a1") in w.kube.created
    w.run(after=30)
    assert ("Job", "j-a1") in w.kube.created, "not before the TTL"
    st = w.run(after=31)
    assert ("Job", "j-a1") not in w.kube.created and st["phase"] == Phase.SUCCEEDED


def test_a_deleted_pod_still_stopping_is_waited_for_before_the_next_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Job controller fails the Job as soon as a pod is deleted; the trainer is still
    saving its checkpoint in the grace period. No new attempt (and no restart) until the
    pod has stopped."""
    w = World(monkeypatch)
    w.run()
    stopping = pod("Running")
    stopping["metadata"]["deletionTimestamp"] = reconcile._ts(w.now + timedelta(seconds=20))
    stopping["metadata"]["deletionGracePeriodSeconds"] = 20
    w.job(conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
    w.set_pods(stopping)
    st = w.run()
    assert st["attempt"] == 1 and st["phase"] == Phase.PENDING
    assert "waiting for it to stop" in st["message"]
    stopping["status"] = _disrupted("deleted")["status"]  # exited after its checkpoint
    st = w.run(after=10)
    assert st["attempt"] == 2 and st["restarts"] == 0 and st["disruptions"] == 1
