"""What one reconcile writes to status, for the tools that read it: observedGeneration on
every write and every generation, the kstatus conditions of each phase, capacity waits
that are progress until the grace period, a run that ends without flapping, Evaluating.

The Kubernetes API is an in-memory stand-in (a dict per object), as the reconciler sees it
through `Kube`; tests/integration/test_gitops_health.py runs the real operator on a real
API server and reads the result with kstatus, gopher-lua and kubectl.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kubetune import contract as c
from kubetune.api.phases import ConditionType, Phase, Reason, TrainerPhase
from kubetune.contract import ProgressReport
from kubetune.operator import reconcile
from kubetune.operator.progress import ProgressStore
from kubetune.operator.reconcile import Reconciler
from kubetune.operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 1, 1, tzinfo=UTC)
LLAMA_1B = {
    "numLayers": 16,
    "hiddenSize": 2048,
    "intermediateSize": 8192,
    "numAttentionHeads": 32,
    "numKeyValueHeads": 8,
    "vocabSize": 128256,
    "modelType": "llama",
}
LLAMA_70B = {
    **LLAMA_1B,
    "numLayers": 80,
    "hiddenSize": 8192,
    "intermediateSize": 28672,
    "numAttentionHeads": 64,
}


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies a merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


class FakeKube:
    """The reconciler's view of the API: one FineTuneJob, its Jobs and pods."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.created: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.writes: list[dict[str, Any]] = []
        self.job_events: list[dict[str, Any]] = []  # Events about the trainer Job

    def get_job_resource(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.body)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        _merge(self.body.setdefault("status", {}), status)
        self.writes.append(copy.deepcopy(self.body["status"]))

    def create(self, body: dict[str, Any]) -> bool:
        key = (body["kind"], body["metadata"]["name"])
        if key in self.created:
            return False
        self.created[key] = copy.deepcopy(body)
        self.created[key]["metadata"]["uid"] = f"uid-{body['metadata']['name']}"
        return True

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.created.get((kind, name))

    def get_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.created.get(("Job", name))

    def list_workloads(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return [body for (kind, _), body in self.created.items() if kind == "Job"]

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        # The Job controller's pods name their Job as owner (a pod given without owners
        # stands for one of the current Job's).
        jobs = [{"uid": j["metadata"]["uid"]} for j in self.list_workloads(namespace, "")]
        return [{**p, "metadata": {"ownerReferences": jobs, **p["metadata"]}} for p in self.pods]

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.created.get(("Pod", name))

    def delete_workload(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        self.created.pop(("Job", name), None)
        self.pods = []

    def delete_pod(self, namespace: str, name: str) -> None:
        self.created.pop(("Pod", name), None)

    def delete_job_resource(self, namespace: str, name: str) -> None:
        raise AssertionError("not expected")

    def list_nodes(self) -> list[dict[str, Any]]:
        return []

    def event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def list_events(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        return [e for e in self.job_events if e["involvedObject"]["uid"] == uid]


class World:
    """A reconciler, its fake API and a clock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, **spec: Any) -> None:
        model = spec.pop("model", {"hf": {"repo": "org/m"}, "architecture": LLAMA_1B})
        body = {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "j", "namespace": "ns", "uid": "u1", "generation": 1},
            "spec": {
                "model": model,
                "dataset": {"train": {"pvc": {"claimName": "data.v2", "path": "t.jsonl"}}},
                "method": "lora",
                **spec,
            },
            # What the API server shows before the operator has written anything.
            "status": {"observedGeneration": 0, "restarts": 0, "attempt": 0},
        }
        self.kube = FakeKube(body)
        self.progress = ProgressStore()
        settings = Settings(
            pools_file=ROOT / "tests/localcluster/pools.yaml",
            discover_pools=False,
            capacity_grace_seconds=600,
            progress_interval_seconds=1e-6,
        )
        self.reconciler = Reconciler(self.kube, settings, self.progress)  # type: ignore[arg-type]
        self.now = T0
        monkeypatch.setattr(reconcile, "_now", lambda: self.now)

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.kube.body["status"])

    def run(self, after: float = 1.0) -> dict[str, Any]:
        self.now += timedelta(seconds=after)
        self.reconciler.reconcile("ns", "j")
        return self.status

    def edit(self, **spec: Any) -> None:
        """A spec change: the API server bumps the generation."""
        self.kube.body["spec"].update(spec)
        self.kube.body["metadata"]["generation"] += 1

    def job(self, **status: Any) -> None:
        self.kube.created[("Job", "j-a1")]["status"] = status

    def set_pods(self, *pods: dict[str, Any]) -> None:
        self.kube.pods = list(pods)


def pod(phase: str = "Running", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "j-a1-0",
            "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
        },
        "status": {"phase": phase, **status},
    }


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(x for x in status["conditions"] if x["type"] == type_)


def trio(status: dict[str, Any]) -> dict[str, str]:
    types = ("Ready", "Reconciling", "Stalled", "Suspended")
    return {t: cond(status, t)["status"] for t in types}


def unschedulable(since: datetime) -> dict[str, Any]:
    return pod(
        "Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/7 nodes are available: 1 Insufficient nvidia.com/gpu.",
                "lastTransitionTime": reconcile._ts(since),
            }
        ],
    )


def test_every_write_carries_the_generation_it_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without an architecture in the spec, planning waits for a probe pod first.
    w = World(monkeypatch, model={"pvc": {"claimName": "models", "path": "m"}})
    st = w.run()
    assert st["phase"] == Phase.PLANNING and st["observedGeneration"] == 1
    assert [k for k in w.kube.created if k[0] == "Pod"], "a probe pod reads config.json"
    w = World(monkeypatch)
    w.run()
    # The plan is written on its own before the launch: that write says its generation too.
    assert len(w.kube.writes) == 2
    assert all(write["observedGeneration"] == 1 for write in w.kube.writes)
    st = w.status
    assert st["phase"] == Phase.PENDING and st["observedGeneration"] == 1
    assert {x["observedGeneration"] for x in st["conditions"]} == {1}
    assert trio(st) == {
        "Ready": "False",
        "Reconciling": "True",
        "Stalled": "False",
        "Suspended": "False",
    }


@pytest.mark.parametrize("end", ["Succeeded", "Failed"])
def test_a_finished_job_observes_every_new_generation(
    monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    w = World(monkeypatch)
    w.run()
    if end == "Succeeded":
        w.set_pods(pod("Succeeded", **_exited(0)))
        w.job(conditions=[{"type": "Complete", "status": "True"}])
    else:
        w.set_pods(pod("Failed", **_exited(c.ExitCode.BAD_INPUT)))
    before = w.run()
    assert before["phase"] == end
    w.edit(suspend=True)  # the one edit CEL still allows after launch
    st = w.run()
    assert st["phase"] == end and st["observedGeneration"] == 2
    assert {x["observedGeneration"] for x in st["conditions"]} == {2}
    assert cond(st, end)["status"] == "True"
    # Nothing else moved: same conditions, same times.
    strip = [{k: v for k, v in x.items() if k != "observedGeneration"} for x in st["conditions"]]
    assert strip == [
        {k: v for k, v in x.items() if k != "observedGeneration"} for x in before["conditions"]
    ]


def _exited(code: int) -> dict[str, Any]:
    state = {"terminated": {"exitCode": int(code), "reason": "Error" if code else "Completed"}}
    return {"containerStatuses": [{"state": state}]}


def test_suspended_is_ready_not_in_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    w = World(monkeypatch, suspend=True)
    st = w.run()
    assert st["phase"] == Phase.SUSPENDED
    assert trio(st) == {
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
        "Suspended": "True",
    }
    w.edit(suspend=False)
    st = w.run()
    assert st["phase"] == Phase.PENDING and trio(st)["Suspended"] == "False"
    assert trio(st)["Ready"] == "False" and trio(st)["Reconciling"] == "True"


def test_a_respec_before_launch_never_keeps_the_old_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = World(monkeypatch, suspend=True)
    old = w.run()["plan"]
    assert old["method"] == "lora"
    # The new spec's plan waits for a probe pod (no architecture given): until it is
    # made, the status must not show the plan of the previous spec as current.
    model = {"pvc": {"claimName": "models", "path": "m"}}
    w.edit(method="qlora", model=model)
    st = w.run()
    assert st["phase"] == Phase.PLANNING and "plan" not in st
    assert st["observedGeneration"] == 2
    assert cond(st, "Planned")["status"] == "False"


def test_waiting_for_capacity_is_progress_until_the_grace_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = World(monkeypatch)
    w.run()
    w.set_pods(unschedulable(since=w.now))
    st = w.run(after=60)
    assert st["phase"] == Phase.PENDING
    assert cond(st, "Reconciling")["reason"] == Reason.WAITING_FOR_CAPACITY
    assert trio(st)["Reconciling"] == "True" and trio(st)["Stalled"] == "False"
    assert "Insufficient nvidia.com/gpu" in st["message"]
    writes = len(w.kube.writes)
    w.run(after=60)
    assert len(w.kube.writes) == writes, "a wait that has not changed must not be rewritten"
    st = w.run(after=600)
    assert st["phase"] == Phase.PENDING, "still waiting: a stall is not a failure"
    assert trio(st)["Stalled"] == "True" and trio(st)["Reconciling"] == "False"
    assert cond(st, "Stalled")["reason"] == Reason.NO_CAPACITY
    assert ("Warning", Reason.NO_CAPACITY) in [(k, r) for k, r, _ in w.kube.events]
    w.set_pods(pod("Running"))
    st = w.run()
    assert st["phase"] == Phase.RUNNING and trio(st)["Stalled"] == "False"


def test_kueue_queue_is_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    w = World(monkeypatch)
    w.run()
    w.kube.created[("Job", "j-a1")]["spec"]["suspend"] = True
    st = w.run()
    assert st["phase"] == Phase.QUEUED and trio(st)["Reconciling"] == "True"


def test_a_missing_claim_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    w = World(monkeypatch)
    w.run()
    missing = unschedulable(since=w.now)
    missing["status"]["conditions"][0]["message"] = (
        '0/7 nodes are available: persistentvolumeclaim "data.v2" not found.'
    )
    w.set_pods(missing)
    st = w.run()
    assert st["phase"] == Phase.FAILED and cond(st, "Failed")["reason"] == Reason.VOLUME_NOT_FOUND
    assert trio(st)["Stalled"] == "True"


def test_the_message_shows_progress_and_the_end_does_not_flap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = World(monkeypatch)
    w.run()
    w.set_pods(pod("Running"))
    assert "no progress report yet" in w.run()["message"]
    report = {"namespace": "ns", "name": "j", "attempt": 1, "step": 40, "totalSteps": 120}
    w.progress.put(
        ProgressReport.model_validate(
            {**report, "percent": 33.3, "loss": 1.234, "etaSeconds": 130, "phase": "training"}
        )
    )
    st = w.run()
    assert st["phase"] == Phase.RUNNING
    assert st["message"] == "step 40/120 (33%), loss 1.234, ETA 2m10s"
    assert cond(st, "Reconciling")["message"] == st["message"]
    w.progress.put(
        ProgressReport.model_validate(
            {**report, "step": 120, "percent": 100.0, "phase": TrainerPhase.EVALUATING}
        )
    )
    st = w.run()
    assert st["phase"] == Phase.EVALUATING
    assert st["message"] == "evaluating the tuned model after step 120/120 (100%)"
    # The trainer has exited 0; the Job controller has not marked the Job Complete yet.
    phases = []
    w.set_pods(pod("Succeeded", **_exited(0)))
    phases.append(w.run()["phase"])
    w.job(conditions=[{"type": "Complete", "status": "True"}])
    phases.append(w.run()["phase"])
    assert phases == [Phase.EVALUATING, Phase.SUCCEEDED]


def test_a_failure_waiting_for_its_retry_is_forgotten_by_the_next_launch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = World(monkeypatch)
    w.run()
    w.set_pods(pod("Failed", **_exited(137)))
    st = w.run()
    assert cond(st, ConditionType.RESTARTING)["status"] == "True"
    assert st["phase"] == Phase.PENDING and st["restarts"] == 0
    w.edit(suspend=True)  # suspended during the backoff
    w.run()
    w.edit(suspend=False)
    st = w.run()
    assert st["attempt"] == 2 and st["restarts"] == 0
    assert all(x["type"] != ConditionType.RESTARTING for x in st["conditions"])
    st = w.run(after=3600)
    assert st["attempt"] == 2, "no second relaunch from a stale Restarting condition"


def test_a_deleted_namesakes_job_is_waited_out_never_followed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The FineTuneJob was deleted and applied again: its predecessor's Job (same name,
    another owner UID) is still there. The new one neither adopts it (a 409 is not "mine")
    nor shows its pods, and launches its own once garbage collection has removed it."""
    w = World(monkeypatch)
    old = {
        "kind": "Job",
        "metadata": {
            "name": "j-a1",
            "uid": "uid-old-job",
            "labels": {c.LABEL_JOB: "j", c.LABEL_JOB_UID: "u0"},
            "ownerReferences": [{"kind": "FineTuneJob", "name": "j", "uid": "u0"}],
        },
        "spec": {"parallelism": 1},
        "status": {},
    }
    w.kube.created[("Job", "j-a1")] = old
    w.set_pods(pod("Running"))
    st = w.run()
    assert st["phase"] == Phase.PENDING and "startTime" not in st
    assert cond(st, "Launched")["reason"] == Reason.WAITING_FOR_STALE_CHILDREN
    assert "u0" in cond(st, "Launched")["message"]
    assert trio(st)["Stalled"] == "False", "garbage collection will remove it"
    st = w.run(after=5)
    assert st["phase"] == Phase.PENDING and "startTime" not in st
    # The Job is gone, its pod still terminates (its trainer may still be saving a
    # checkpoint into the same output directory): still waiting.
    del w.kube.created[("Job", "j-a1")]
    terminating = pod("Running")
    terminating["metadata"]["labels"] = {c.LABEL_JOB: "j", c.LABEL_JOB_UID: "u0"}
    terminating["metadata"]["ownerReferences"] = [{"kind": "Job", "uid": "uid-old-job"}]
    w.set_pods(terminating)
    st = w.run(after=5)
    assert "startTime" not in st and "j-a1-0" in cond(st, "Launched")["message"]
    # garbage-collected: the job creates its own
    w.set_pods()
    st = w.run(after=5)
    assert st.get("startTime") and cond(st, "Launched")["status"] == "True"
    assert w.kube.created[("Job", "j-a1")]["metadata"]["ownerReferences"][0]["uid"] == "u1"


def test_an_orphaned_namesake_stalls_with_what_to_delete(monkeypatch: pytest.MonkeyPatch) -> None:
    w = World(monkeypatch)
    w.kube.created[("Job", "j-a1")] = {
        "kind": "Job",
        "metadata": {"name": "j-a1", "uid": "uid-orphan", "labels": {c.LABEL_JOB: "j"}},
        "status": {},
    }
    st = w.run()
    assert trio(st)["Stalled"] == "True" and "delete it" in st["message"]


def test_a_failed_jobs_conditions_are_recomputed_after_its_spec_is_fixed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NothingFits before launch, then a spec fix: planned again, and no condition of the
    refusal (Failed=True, Running=False NothingFits) stays beside the new phase."""
    w = World(monkeypatch, method="full", resources={"gpuType": "NVIDIA-L4"}, suspend=True)
    w.kube.body["spec"]["model"]["architecture"] = LLAMA_70B
    st = w.run()
    assert st["phase"] == Phase.FAILED and cond(st, "Failed")["reason"] == Reason.NOTHING_FITS
    w.edit(method="lora", resources={})
    w.kube.body["spec"]["model"]["architecture"] = LLAMA_1B
    st = w.run()
    assert st["phase"] == Phase.SUSPENDED and st["observedGeneration"] == 2
    assert cond(st, "Failed")["status"] == "False"
    assert cond(st, "Planned")["status"] == "True"
    stale = [x for x in st["conditions"] if x["reason"] == Reason.NOTHING_FITS]
    assert stale == []
    w.edit(suspend=False)
    st = w.run()
    assert st["phase"] == Phase.PENDING and cond(st, "Launched")["status"] == "True"


def test_progress_reports_of_a_deleted_namesake_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reports carry the FineTuneJob's UID: one from a deleted job of the same name (same
    attempt number) never shows as this job's progress."""
    w = World(monkeypatch)
    w.run()
    w.set_pods(pod("Running"))
    w.run()
    report = {"namespace": "ns", "name": "j", "attempt": 1, "step": 40, "totalSteps": 20}
    w.progress.put(ProgressReport.model_validate({**report, "uid": "u0"}))
    st = w.run()
    assert "no progress report yet" in st["message"] and "progress" not in st
    w.progress.put(ProgressReport.model_validate({**report, "uid": "u1", "totalSteps": 120}))
    st = w.run()
    assert st["progress"]["step"] == 40 and st["progress"]["totalSteps"] == 120


def test_first_reconcile_uses_the_watched_object_later_ones_read_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = World(monkeypatch)
    reads: list[str] = []
    get = w.kube.get_job_resource

    def counted(namespace: str, name: str) -> dict[str, Any] | None:
        reads.append(name)
        return get(namespace, name)

    monkeypatch.setattr(w.kube, "get_job_resource", counted)
    seen = copy.deepcopy(w.kube.body)
    before = copy.deepcopy(seen)
    w.reconciler.reconcile("ns", "j", seen)
    # Launched from the watched object, without a read; the Service and ConfigMap exist
    # (created at once) and so does the Job, created after them.
    assert reads == []
    kinds = [k for k, _ in w.kube.created]
    assert sorted(kinds[:2]) == ["ConfigMap", "Service"] and kinds[2:] == ["Job"]
    assert w.status["phase"] == "Pending"
    assert seen == before  # the watched object is not changed
    # Later reconciles of this job read it, even when handed an (older) watched object.
    w.reconciler.reconcile("ns", "j", seen)
    assert reads == ["j"]
    assert len(w.kube.created) == 3
