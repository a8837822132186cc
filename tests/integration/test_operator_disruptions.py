"""A trainer pod deleted by hand, or evicted through the Eviction API, is not a failure of
the trainer (issue 16): the attempt is relaunched from its checkpoint without spending one
of maxRestarts, and `status.disruptions` counts it. With `maxRestarts: 0` a counted
restart would fail the job instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubetune import contract as c
from kubetune.api.phases import Reason
from tests.fixtures.demo_volume import demo_job
from tests.integration.harness import (
    TRAINING_STALL,
    OperatorProcess,
    apply_job,
    phase_is,
    wait_for,
)
from tests.localcluster.kube import raw

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


def running_pod(api: client.ApiClient, namespace: str, job: str, attempt: int) -> str:
    sel = f"{c.LABEL_JOB}={job},{c.LABEL_ATTEMPT}={attempt}"
    items = raw(client.CoreV1Api(api).list_namespaced_pod, namespace, label_selector=sel)["items"]
    names = [p["metadata"]["name"] for p in items if p["status"].get("phase") == "Running"]
    assert len(names) == 1, items
    return str(names[0])


def checkpoint_at_least(step: int, attempt: int) -> Any:
    def ok(b: dict[str, Any]) -> bool:
        st = b.get("status") or {}
        latest = (st.get("checkpoints") or {}).get("latestStep") or 0
        return st.get("attempt") == attempt and st.get("phase") == "Running" and latest >= step

    return ok


def test_a_deleted_and_an_evicted_trainer_pod_spend_no_restart(
    operator: OperatorProcess, k8s: client.ApiClient, namespace: str, demo_claim: Path
) -> None:
    core = client.CoreV1Api(k8s)
    apply_job(k8s, namespace, demo_job("disrupted", maxRestarts=0, training={"epochs": 24}))
    wait_for(k8s, namespace, "disrupted", checkpoint_at_least(20, 1), TRAINING_STALL, "step 20")
    # kubectl delete pod: the default grace period, SIGTERM, a checkpoint, exit.
    raw(core.delete_namespaced_pod, running_pod(k8s, namespace, "disrupted", 1), namespace)
    wait_for(k8s, namespace, "disrupted", checkpoint_at_least(1, 2), TRAINING_STALL, "attempt 2")
    # kubectl drain: the Eviction API (the pod gets DisruptionTarget=EvictionByEvictionAPI).
    name = running_pod(k8s, namespace, "disrupted", 2)
    eviction = {"metadata": {"name": name, "namespace": namespace}}
    raw(core.create_namespaced_pod_eviction, name, namespace, eviction)
    body = wait_for(
        k8s,
        namespace,
        "disrupted",
        phase_is("Succeeded", "Failed"),
        TRAINING_STALL,
        "the job to finish",
    )
    st = body["status"]
    assert st["phase"] == "Succeeded", st.get("message")
    assert st["restarts"] == 0 and st["disruptions"] == 2 and st["attempt"] == 3, st
    events = raw(core.list_namespaced_event, namespace)["items"]
    ours = [e for e in events if e["involvedObject"]["name"] == "disrupted"]
    disrupted = [e["message"] for e in ours if e["reason"] == Reason.DISRUPTED]
    assert len(disrupted) == 2, disrupted
    assert any("deleted while running" in m or "were deleted" in m for m in disrupted)
    assert any("EvictionByEvictionAPI" in m for m in disrupted), disrupted
    assert not [e for e in ours if e["reason"] == Reason.RESTARTING]
