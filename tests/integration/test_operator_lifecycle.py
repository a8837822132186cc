"""The operator end to end on the local control plane, with the pod runner running the
real trainer on the tiny model: restarts from checkpoints, operator crashes, suspend/resume
and deletion. (The demo's success, the two-pod rendezvous, OOM and image failures run on the
real node: test_realnode.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubetune import contract as c
from tests.fixtures.demo_volume import demo_job, write_demo_volume
from tests.integration.harness import (
    TRAINING_STALL,
    OperatorProcess,
    apply_job,
    condition,
    get_job,
    hostpath_claim,
    phase_is,
    wait_for,
)
from tests.localcluster.cluster import LocalCluster
from tests.localcluster.kube import raw

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_volume(tmp_path_factory.mktemp("demo-volume"))


@pytest.fixture
def demo_claim(k8s: client.ApiClient, namespace: str, demo_files: Path) -> Path:
    return hostpath_claim(k8s, namespace, "kubetune-demo", demo_files)


def pods(api: client.ApiClient, namespace: str, job: str) -> list[dict[str, Any]]:
    items = raw(
        client.CoreV1Api(api).list_namespaced_pod, namespace, label_selector=f"{c.LABEL_JOB}={job}"
    )["items"]
    return list(items)


def workloads(api: client.ApiClient, namespace: str, job: str) -> list[str]:
    items = raw(
        client.BatchV1Api(api).list_namespaced_job, namespace, label_selector=f"{c.LABEL_JOB}={job}"
    )["items"]
    return sorted(j["metadata"]["name"] for j in items)


def finished(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """Waits for the job to end and returns its status, which must say Succeeded."""
    body = wait_for(
        api, namespace, name, phase_is("Succeeded", "Failed"), TRAINING_STALL, "the job to finish"
    )
    st: dict[str, Any] = body["status"]
    assert st["phase"] == "Succeeded", st.get("message")
    return st


def resumed_step(report: Path) -> int:
    """The step of the checkpoint the last attempt resumed from (0 when it did not)."""
    resumed = json.loads(report.read_text()).get("resumedFrom") or ""
    match = re.search(r"checkpoint-(\d+)", resumed)
    return int(match.group(1)) if match else 0


def progress_step(body: dict[str, Any]) -> int:
    return int(((body.get("status") or {}).get("progress") or {}).get("step") or 0)


def test_a_previous_job_is_scored_as_a_baseline_on_the_same_rows(
    operator: OperatorProcess, k8s: client.ApiClient, namespace: str, demo_claim: Path
) -> None:
    """`evaluation.previous.job`: the second job waits while the first runs, then its
    trainer loads the first job's adapter from the claim and scores it on its own test
    rows; the same data and seed give the first job's own final figures."""
    first = demo_job("prev-first", training={"epochs": 2})
    apply_job(k8s, namespace, first)
    second = demo_job(
        "prev-second",
        training={"epochs": 1},
        evaluation={"previous": {"job": "prev-first"}, "gate": {"baseline": "previous"}},
    )
    apply_job(k8s, namespace, second)
    waiting = wait_for(
        k8s,
        namespace,
        "prev-second",
        lambda b: condition(b, "Launched").get("reason") == "WaitingForPreviousJob",
        60,
        "the second job to wait for the first",
    )
    assert "prev-first is" in condition(waiting, "Launched")["message"]
    done = finished(k8s, namespace, "prev-first")
    st = finished(k8s, namespace, "prev-second")
    prev, final = st["evaluation"]["previous"], done["evaluation"]["final"]
    assert prev["source"] == f"job {namespace}/prev-first (lora adapter)"
    assert prev["exactMatch"] == pytest.approx(final["exactMatch"])
    assert prev["loss"] == pytest.approx(final["loss"], rel=1e-4)
    task = st["evaluation"]["gate"]["checks"][0]
    assert task["name"] == "taskMetric" and "previous" in task["message"]


def test_killed_trainer_pod_resumes_from_its_checkpoint(
    operator: OperatorProcess, k8s: client.ApiClient, namespace: str, demo_claim: Path
) -> None:
    apply_job(k8s, namespace, demo_job("killed", training={"epochs": 24}))
    body = wait_for(
        k8s,
        namespace,
        "killed",
        lambda b: ((b.get("status") or {}).get("checkpoints") or {}).get("latestStep", 0) >= 20,
        TRAINING_STALL,
        "a checkpoint",
    )
    saved = body["status"]["checkpoints"]["latestStep"]
    # SIGKILL the trainer's processes, as the OOM killer or a node crash would: the
    # container exits 137, the pod fails, and the attempt fails as a whole.
    for pod in pods(k8s, namespace, "killed"):
        for status in pod["status"].get("containerStatuses") or []:
            pid = int(status["containerID"].removeprefix("localcluster://"))
            os.killpg(pid, signal.SIGKILL)
    body = wait_for(
        k8s, namespace, "killed", lambda b: b["status"].get("attempt") == 2, 120, "a second attempt"
    )
    st = finished(k8s, namespace, "killed")
    assert st["restarts"] == 1 and st["attempt"] == 2
    # the cause, not the killed process's last log line (a loss dict)
    events = raw(client.CoreV1Api(k8s).list_namespaced_event, namespace)["items"]
    restarting = [e["message"] for e in events if e["reason"] == "Restarting"]
    assert len(restarting) == 1, restarting
    assert "(rank 0) exited 137 (Error): killed by signal 9 (SIGKILL)" in restarting[0]
    report = Path(st["output"]["report"].replace(f"{c.PVC_ROOT}/kubetune-demo", str(demo_claim)))
    assert resumed_step(report) >= saved > 0


def test_operator_killed_mid_run_adopts_and_finishes(
    local_cluster: LocalCluster,
    crd: None,
    k8s: client.ApiClient,
    namespace: str,
    demo_claim: Path,
    tmp_path: Path,
) -> None:
    # A private operator for this namespace only, so killing it leaves the others alone.
    env = {"KUBETUNE_NAMESPACES": namespace}
    first = OperatorProcess(local_cluster.kubeconfig, tmp_path / "op1.log", env).start()
    apply_job(k8s, namespace, demo_job("crash"))
    wait_for(k8s, namespace, "crash", phase_is("Running"), TRAINING_STALL, "Running")
    first.kill()
    second = OperatorProcess(local_cluster.kubeconfig, tmp_path / "op2.log", env).start()
    try:
        body = wait_for(
            k8s,
            namespace,
            "crash",
            phase_is("Succeeded", "Failed"),
            TRAINING_STALL,
            "the job to finish",
        )
    finally:
        second.stop()
    assert body["status"]["phase"] == "Succeeded", body["status"].get("message")
    assert workloads(k8s, namespace, "crash") == ["crash-a1"]
    assert body["status"]["restarts"] == 0


def test_suspend_then_resume_continues_from_the_checkpoint(
    operator: OperatorProcess, k8s: client.ApiClient, namespace: str, demo_claim: Path
) -> None:
    api = client.CustomObjectsApi(k8s)
    apply_job(k8s, namespace, demo_job("pausable", training={"epochs": 24}))
    live = wait_for(
        k8s,
        namespace,
        "pausable",
        lambda b: ((b.get("status") or {}).get("checkpoints") or {}).get("latestStep", 0) >= 20,
        TRAINING_STALL,
        "a checkpoint",
    )
    # from live progress, in the same form the final summary gives
    ckpt = live["status"]["checkpoints"]
    assert (
        ckpt["latest"]
        == f"{c.PVC_ROOT}/kubetune-demo/runs/pausable/checkpoints/checkpoint-{ckpt['latestStep']}"
    )
    patch = {"spec": {"suspend": True}}
    raw(
        api.patch_namespaced_custom_object,
        "kubetune.io",
        "v1alpha1",
        namespace,
        "finetunejobs",
        "pausable",
        patch,
    )
    body = wait_for(k8s, namespace, "pausable", phase_is("Suspended"), 120, "Suspended")
    assert condition(body, "Suspended")["status"] == "True"
    deadline = time.monotonic() + 60
    while pods(k8s, namespace, "pausable") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pods(k8s, namespace, "pausable") == []
    saved = get_job(k8s, namespace, "pausable")["status"]["checkpoints"]["latestStep"]
    patch = {"spec": {"suspend": False}}
    raw(
        api.patch_namespaced_custom_object,
        "kubetune.io",
        "v1alpha1",
        namespace,
        "finetunejobs",
        "pausable",
        patch,
    )
    st = finished(k8s, namespace, "pausable")
    assert st["restarts"] == 0 and st["attempt"] == 2
    report = Path(st["output"]["report"].replace(f"{c.PVC_ROOT}/kubetune-demo", str(demo_claim)))
    assert resumed_step(report) >= saved > 0


def test_delete_removes_children_and_keeps_user_claims(
    operator: OperatorProcess, k8s: client.ApiClient, namespace: str, demo_claim: Path
) -> None:
    apply_job(k8s, namespace, demo_job("doomed", training={"epochs": 24}))
    wait_for(k8s, namespace, "doomed", phase_is("Running"), TRAINING_STALL, "Running")
    core, batch = client.CoreV1Api(k8s), client.BatchV1Api(k8s)
    sel = f"{c.LABEL_JOB}=doomed"
    assert raw(core.list_namespaced_config_map, namespace, label_selector=sel)["items"]
    raw(
        client.CustomObjectsApi(k8s).delete_namespaced_custom_object,
        "kubetune.io",
        "v1alpha1",
        namespace,
        "finetunejobs",
        "doomed",
    )
    deadline = time.monotonic() + 90
    left: dict[str, int] = {}
    while time.monotonic() < deadline:
        left = {
            "pods": len(raw(core.list_namespaced_pod, namespace, label_selector=sel)["items"]),
            "jobs": len(raw(batch.list_namespaced_job, namespace, label_selector=sel)["items"]),
            "services": len(
                raw(core.list_namespaced_service, namespace, label_selector=sel)["items"]
            ),
            "configmaps": len(
                raw(core.list_namespaced_config_map, namespace, label_selector=sel)["items"]
            ),
        }
        if not any(left.values()):
            break
        time.sleep(1)
    assert left == {"pods": 0, "jobs": 0, "services": 0, "configmaps": 0}
    claims = raw(core.list_namespaced_persistent_volume_claim, namespace)["items"]
    assert [p["metadata"]["name"] for p in claims] == ["kubetune-demo"]
    assert (demo_claim / "tiny-llama" / "config.json").is_file()


def _crd_api(k8s: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s)


def _uid(k8s: client.ApiClient, namespace: str, name: str) -> str:
    return str(get_job(k8s, namespace, name)["metadata"]["uid"])


def _host(demo_claim: Path, pod_path: str) -> Path:
    return Path(pod_path.replace(f"{c.PVC_ROOT}/kubetune-demo", str(demo_claim)))


def test_a_recreated_job_waits_out_its_deleted_namesakes_children(
    operator: OperatorProcess, k8s: client.ApiClient, namespace: str, demo_claim: Path
) -> None:
    """Delete a running FineTuneJob and apply one with the same name while the old Job is
    still there (a finalizer holds it, as a slow garbage collector would): the new job
    neither adopts that Job nor shows its pods; it waits, and once the old Job and its pods
    are gone it launches its own and succeeds on its own spec."""
    batch = client.BatchV1Api(k8s)
    apply_job(k8s, namespace, demo_job("reborn", training={"epochs": 24}))
    wait_for(k8s, namespace, "reborn", phase_is("Running"), TRAINING_STALL, "Running")
    old_uid = _uid(k8s, namespace, "reborn")
    hold = {"metadata": {"finalizers": ["kubetune.io/test-hold"]}}
    raw(batch.patch_namespaced_job, "reborn-a1", namespace, hold)
    raw(
        _crd_api(k8s).delete_namespaced_custom_object,
        "kubetune.io",
        "v1alpha1",
        namespace,
        "finetunejobs",
        "reborn",
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            get_job(k8s, namespace, "reborn")
        except client.ApiException as exc:
            if exc.status == 404:
                break
            raise
        time.sleep(0.5)
    apply_job(k8s, namespace, demo_job("reborn", training={"epochs": 1}))
    new_uid = _uid(k8s, namespace, "reborn")
    assert new_uid != old_uid
    body = wait_for(
        k8s,
        namespace,
        "reborn",
        lambda b: (
            phase_is("Running", "Succeeded", "Failed")(b)
            or condition(b, "Launched").get("reason") == "WaitingForStaleChildren"
        ),
        120,
        "the new job to wait for the old Job",
    )
    st = body["status"]
    assert condition(body, "Launched").get("reason") == "WaitingForStaleChildren", st
    assert old_uid in st["message"] and "startTime" not in st and "progress" not in st
    assert condition(body, "Stalled")["status"] == "False"
    # still waiting a few reconciles later (the operator resyncs every 5 s here)
    time.sleep(8)
    body = get_job(k8s, namespace, "reborn")
    assert "startTime" not in body["status"] and "progress" not in body["status"]
    # Let garbage collection take the old Job (and so its pods): the new job goes on.
    raw(batch.patch_namespaced_job, "reborn-a1", namespace, {"metadata": {"finalizers": None}})
    st = finished(k8s, namespace, "reborn")
    job = raw(batch.read_namespaced_job, "reborn-a1", namespace)
    assert [o["uid"] for o in job["metadata"]["ownerReferences"]] == [new_uid]
    assert st["attempt"] == 1 and st["restarts"] == 0
    report = json.loads(_host(demo_claim, st["output"]["report"]).read_text())
    assert report["resumedFrom"] is None and report["job"]["uid"] == new_uid
    assert st["progress"]["step"] == st["progress"]["totalSteps"]


def test_a_new_job_never_resumes_another_jobs_checkpoints_unless_named(
    operator: OperatorProcess, k8s: client.ApiClient, namespace: str, demo_claim: Path
) -> None:
    """A second job (same spec, another UID) writing where a finished one wrote starts
    fresh: the first job's checkpoints and baseline.json are moved aside (kept, not
    resumed, not scored from), and status says so. A third job naming one of them in
    spec.training.resumeFrom continues from it."""
    apply_job(k8s, namespace, demo_job("ident-first", training={"epochs": 2}))
    first = finished(k8s, namespace, "ident-first")
    first_uid = _uid(k8s, namespace, "ident-first")
    steps = first["progress"]["totalSteps"]
    latest = first["checkpoints"]["latest"]
    second = demo_job("ident-second", training={"epochs": 2})
    second["spec"]["output"]["pvc"]["path"] = "runs/ident-first"
    apply_job(k8s, namespace, second)
    st = finished(k8s, namespace, "ident-second")
    report = json.loads(_host(demo_claim, st["output"]["report"]).read_text())
    assert report["resumedFrom"] is None
    assert st["progress"]["step"] == st["progress"]["totalSteps"] == steps
    aside = demo_claim / "runs/ident-first" / c.SUPERSEDED_DIR / first_uid
    assert (aside / "checkpoints" / Path(latest).name / "trainer_state.json").is_file()
    assert (aside / "baseline.json").is_file()
    codes = [a["code"] for a in st.get("advice") or []]
    assert c.FOREIGN_CHECKPOINTS in codes
    warning = get_job(k8s, namespace, "ident-second")
    assert condition(warning, "DataWarning")["reason"] == "ForeignCheckpointsIgnored"
    events = raw(client.CoreV1Api(k8s).list_namespaced_event, namespace)["items"]
    assert any(
        e["reason"] == "ForeignCheckpointsIgnored" and e["involvedObject"]["name"] == "ident-second"
        for e in events
    )
    # Named explicitly, where the advice says it now is: resumed.
    assert f"{c.SUPERSEDED_DIR}/{first_uid}" in st["advice"][0]["message"]
    moved = aside.relative_to(demo_claim) / "checkpoints" / Path(latest).name
    named = {"pvc": {"claimName": "kubetune-demo", "path": str(moved)}}
    apply_job(k8s, namespace, demo_job("ident-third", training={"epochs": 3, "resumeFrom": named}))
    st = finished(k8s, namespace, "ident-third")
    report_path = _host(demo_claim, st["output"]["report"])
    resumed = json.loads(report_path.read_text())["resumedFrom"]
    assert resumed == f"{c.PVC_ROOT}/kubetune-demo/{moved}"
    assert resumed_step(report_path) == first["checkpoints"]["latestStep"]
    assert st["progress"]["step"] == st["progress"]["totalSteps"] > steps
