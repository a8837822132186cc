"""Trainer pods the API server will not create (issue 16): the Job controller's
FailedCreate Events reach the FineTuneJob. A refusal that waiting cannot change (a missing
PriorityClass) fails the job with the API server's words; a full ResourceQuota is a wait,
which ends when the quota is raised."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubetune.api.phases import Reason
from tests.fixtures.demo_volume import demo_job
from tests.integration.harness import (
    TRAINING_STALL,
    OperatorProcess,
    apply_job,
    condition,
    phase_is,
    wait_for,
)
from tests.localcluster.kube import raw

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


def events(api: client.ApiClient, namespace: str, name: str) -> list[dict[str, Any]]:
    items = raw(client.CoreV1Api(api).list_namespaced_event, namespace)["items"]
    return [e for e in items if e["involvedObject"]["name"] == name]


def test_a_missing_priority_class_fails_with_the_api_servers_reason(
    operator: OperatorProcess, k8s: client.ApiClient, namespace: str, demo_claim: Path
) -> None:
    apply_job(k8s, namespace, demo_job("noclass", resources={"priorityClassName": "no-such"}))
    body = wait_for(k8s, namespace, "noclass", phase_is("Failed"), TRAINING_STALL, "Failed")
    failed = condition(body, "Failed")
    assert failed["reason"] == Reason.PODS_FORBIDDEN, failed
    assert "no PriorityClass with name no-such was found" in failed["message"]
    assert body["status"]["restarts"] == 0 and body["status"]["attempt"] == 1
    ours = [e for e in events(k8s, namespace, "noclass") if e["reason"] == Reason.PODS_FORBIDDEN]
    assert ours and ours[0]["type"] == "Warning" and "no-such" in ours[0]["message"]


def test_a_full_quota_waits_then_the_job_proceeds(
    operator: OperatorProcess, k8s: client.ApiClient, namespace: str, demo_claim: Path
) -> None:
    # Only the trainer asks for a GPU (the model probe does not): the quota stops it alone.
    core = client.CoreV1Api(k8s)
    quota = {
        "metadata": {"name": "gpus"},
        "spec": {"hard": {"requests.nvidia.com/gpu": "0"}},
    }
    raw(core.create_namespaced_resource_quota, namespace, quota)
    apply_job(k8s, namespace, demo_job("quota"))

    def waiting(b: dict[str, Any]) -> bool:
        conds = {c["type"]: c for c in (b.get("status") or {}).get("conditions") or []}
        return conds.get("Running", {}).get("reason") == Reason.QUOTA_EXCEEDED

    body = wait_for(k8s, namespace, "quota", waiting, TRAINING_STALL, "QuotaExceeded")
    st = body["status"]
    assert st["phase"] == "Pending" and "exceeded quota: gpus" in st["message"]
    assert condition(body, "Reconciling")["status"] == "True"
    assert condition(body, "Stalled")["status"] == "False"
    assert "pausedSince" in st, "a quota wait does not count against a deadline"
    raise_ = {"spec": {"hard": {"requests.nvidia.com/gpu": "8"}}}
    raw(core.patch_namespaced_resource_quota, "gpus", namespace, raise_)
    body = wait_for(
        k8s,
        namespace,
        "quota",
        phase_is("Running", "Succeeded", "Failed"),
        TRAINING_STALL,
        "Running",
    )
    assert body["status"]["phase"] in ("Running", "Succeeded"), body["status"].get("message")
    assert body["status"]["restarts"] == 0 and body["status"]["attempt"] == 1
