"""Leader election (operator/kubetune/operator/leader.py): real operator processes on one
Lease in the local cluster. One leads and reconciles; the other stands by, alive (liveness
answers) but not ready (no progress port) and reconciling nothing. A SIGKILLed leader is
replaced once its lease duration has passed, a SIGTERMed one releases the Lease so the
standby takes over at once, and a leader that sees another holder exits with status 1.

Short lease timings through the environment keep each test well under a minute.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.fixtures.demo_volume import demo_job, write_demo_volume
from tests.integration.harness import (
    TRAINING_STALL,
    OperatorProcess,
    apply_job,
    get_job,
    hostpath_claim,
    wait_for,
)
from tests.localcluster.cluster import LocalCluster
from tests.localcluster.kube import raw

pytestmark = pytest.mark.timeout(120)
LEASE = "kubetune"
DURATION = 3.0


def invalid_job(name: str) -> str:
    """Fails validation at once (a reserved label): a reconcile that writes status."""
    return f"""
metadata: {{name: {name}, labels: {{kubetune.io/job: other}}}}
spec:
  model: {{hf: {{repo: a/b}}}}
  dataset: {{train: {{pvc: {{claimName: data}}}}}}
"""


@pytest.fixture
def start(
    local_cluster: LocalCluster, crd: None, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Starts operator replicas named op0, op1, ... (POD_NAME) on the Lease `kubetune` in
    the test namespace, watching only that namespace; stops them all afterwards."""
    procs: list[OperatorProcess] = []

    def _start(ready: bool = True, duration: float = DURATION) -> OperatorProcess:
        env = {
            "POD_NAME": f"op{len(procs)}",
            "KUBETUNE_NAMESPACES": namespace,
            "KUBETUNE_LEADER_ELECTION": "true",
            "KUBETUNE_LEASE_NAME": LEASE,
            "KUBETUNE_LEASE_NAMESPACE": namespace,
            "KUBETUNE_LEASE_DURATION_SECONDS": str(duration),
            "KUBETUNE_LEASE_RENEW_DEADLINE_SECONDS": str(duration * 2 / 3),
            "KUBETUNE_LEASE_RETRY_PERIOD_SECONDS": "0.5",
            "KUBETUNE_LOG_LEVEL": "debug",  # "reconcile <ns>/<name>" on every reconcile
        }
        log = tmp_path / f"op{len(procs)}.log"
        proc = OperatorProcess(local_cluster.kubeconfig, log, env)
        procs.append(proc)
        return proc.start(ready=ready)

    try:
        yield _start
    finally:
        for p in procs:
            p.stop()


def lease(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    return raw(client.CoordinationV1Api(api).read_namespaced_lease, LEASE, namespace)


def holder(api: client.ApiClient, namespace: str) -> str:
    return str(lease(api, namespace)["spec"].get("holderIdentity") or "")


def kopf_answers(url: str) -> bool:
    """kopf's liveness endpoint answers on `url`. Refused while the port passes from the
    standby's own server to kopf's (a moment; the probe's failureThreshold covers it)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return b"standby" not in r.read()
    except OSError:  # URLError is one: nothing listens there yet
        return False


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(ok: Callable[[], bool], timeout: float, what: str) -> float:
    """Polls `ok` every 0.1 s; returns the seconds it took."""
    t0 = time.monotonic()
    while not ok():
        assert time.monotonic() - t0 < timeout, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - t0


def log_of(proc: OperatorProcess) -> str:
    return proc.log.read_text(errors="replace")


def test_one_leader_reconciles_and_a_killed_one_is_replaced_after_the_lease_duration(
    start: Callable[..., OperatorProcess], k8s: client.ApiClient, namespace: str
) -> None:
    leader = start()
    standby = start(ready=False)
    assert holder(k8s, namespace).startswith("op0_")
    wait_until(lambda: "standby: waiting for lease" in log_of(standby), 10, "the standby")

    # Only the leader reconciles: the job's status is written, and the standby never even
    # started kopf (no progress endpoint, no reconcile, no watch).
    apply_job(k8s, namespace, invalid_job("first"))
    wait_for(k8s, namespace, "first", lambda b: bool((b.get("status") or {}).get("phase")), 20)
    assert f"reconcile {namespace}/first" in log_of(leader)
    time.sleep(1)  # a standby that did reconcile would have logged it by now
    for line in ("reconcile ", "progress endpoint listening", "kopf"):
        assert line not in log_of(standby), log_of(standby)[-2000:]

    # The standby is alive (the chart's liveness probe path answers) but not ready (the
    # readiness probe's progress port is closed), so the Service routes only to the leader.
    with urllib.request.urlopen(f"http://127.0.0.1:{standby.health_port}/healthz", timeout=5) as r:
        assert r.status == 200
    assert not port_open(standby.port)

    # SIGKILL: no release. The standby takes over once the lease duration has passed on its
    # own clock since it last saw a renewal.
    leader.kill()
    took = wait_until(lambda: holder(k8s, namespace).startswith("op1_"), DURATION + 10, "takeover")
    wait_until(lambda: port_open(standby.port), 10, "the new leader's progress endpoint")
    # kopf's own health endpoint now answers on the port the standby served.
    health = f"http://127.0.0.1:{standby.health_port}/healthz"
    wait_until(lambda: kopf_answers(health), 10, "kopf")
    print(f"takeover after SIGKILL: {took:.1f} s (lease duration {DURATION:g} s)")
    assert DURATION - 1 <= took <= DURATION + 4
    spec = lease(k8s, namespace)["spec"]
    assert spec["leaseTransitions"] == 1 and spec["leaseDurationSeconds"] == 3

    apply_job(k8s, namespace, invalid_job("second"))
    wait_for(k8s, namespace, "second", lambda b: bool((b.get("status") or {}).get("phase")), 20)
    assert f"reconcile {namespace}/second" in log_of(standby)


def test_a_stopped_leader_releases_the_lease_and_the_standby_takes_over_at_once(
    start: Callable[..., OperatorProcess], k8s: client.ApiClient, namespace: str
) -> None:
    # A long lease duration: a takeover within a few seconds can only come from the release.
    leader = start(duration=30)
    standby = start(ready=False, duration=30)
    assert holder(k8s, namespace).startswith("op0_")
    assert leader.proc is not None
    leader.proc.terminate()  # SIGTERM, as the kubelet on pod deletion
    assert leader.proc.wait(20) == 0
    took = wait_until(lambda: holder(k8s, namespace).startswith("op1_"), 10, "takeover")
    print(f"takeover after the SIGTERMed leader exited: {took:.1f} s (lease duration 30 s)")
    assert took < 3
    assert "released lease" in log_of(leader)
    wait_until(lambda: port_open(standby.port), 10, "the new leader's progress endpoint")

    # A SIGTERMed standby exits cleanly too.
    third = start(ready=False, duration=30)
    wait_until(lambda: "standby: waiting for lease" in log_of(third), 10, "the third replica")
    assert third.proc is not None
    third.proc.terminate()
    assert third.proc.wait(10) == 0
    assert holder(k8s, namespace).startswith("op1_")


def test_a_leader_that_sees_another_holder_exits_at_once(
    start: Callable[..., OperatorProcess], k8s: client.ApiClient, namespace: str
) -> None:
    leader = start()
    # The leader renews every retry period (0.5 s): a replace can race a renewal and get a
    # 409, as another elector's would. Like one, read again and retry.
    for _ in range(20):
        body = lease(k8s, namespace)
        body["spec"]["holderIdentity"] = "intruder"
        try:
            raw(client.CoordinationV1Api(k8s).replace_namespaced_lease, LEASE, namespace, body)
            break
        except client.ApiException as e:
            if e.status != 409:
                raise
    else:
        pytest.fail("could not take the Lease in 20 tries: every replace conflicted")
    assert leader.proc is not None
    t0 = time.monotonic()
    assert leader.proc.wait(10) == 1
    print(f"leader exited {time.monotonic() - t0:.1f} s after losing the lease")
    assert "leader election lost" in log_of(leader)
    assert holder(k8s, namespace) == "intruder"  # it exited without touching the Lease


@pytest.fixture
def demo_claim(
    k8s: client.ApiClient, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    files = write_demo_volume(tmp_path_factory.mktemp("demo-volume"))
    return hostpath_claim(k8s, namespace, "kubetune-demo", files)


@pytest.mark.trainer
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_new_leader_keeps_the_progress_the_old_one_wrote(
    start: Callable[..., OperatorProcess],
    k8s: client.ApiClient,
    namespace: str,
    demo_claim: Path,
) -> None:
    """Progress reports live in the leader's memory. Here the trainer keeps posting to the
    old leader's port (each test operator has its own), so the new leader hears nothing
    from it at all: the status must keep what the old leader wrote (step, loss, ETA), not
    fall back to "no progress report yet" for the rest of the run."""
    leader = start()
    standby = start(ready=False)
    apply_job(k8s, namespace, demo_job("carry", training={"epochs": 24}))

    def training(b: dict[str, Any]) -> bool:
        st = b.get("status") or {}
        return st.get("phase") == "Running" and "step " in str(st.get("message"))

    before = wait_for(k8s, namespace, "carry", training, TRAINING_STALL, "live progress")
    leader.kill()
    wait_until(lambda: holder(k8s, namespace).startswith("op1_"), DURATION + 10, "takeover")
    # Two reconciles of the job by the new leader (kopf's resume and a resync, 5 s).
    wait_until(lambda: log_of(standby).count(f"reconcile {namespace}/carry") >= 2, 30, "reconciles")
    after = get_job(k8s, namespace, "carry")["status"]
    assert after["phase"] in ("Running", "Evaluating", "Succeeded"), after.get("message")
    if after["phase"] != "Succeeded":
        assert "no progress report yet" not in after["message"], after["message"]
        assert after["message"].startswith("step "), after["message"]
    assert (after.get("progress") or {}).get("step", 0) >= before["status"]["progress"]["step"]
