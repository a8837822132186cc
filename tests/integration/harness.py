"""Fixtures for operator tests: the real operator process against the local cluster.

`operator` runs `python -m kubetune.operator` (the same entry point as the chart's
Deployment) with admin credentials; the RBAC test runs it under the chart's
ServiceAccount instead. Helpers apply FineTuneJobs, make hostPath-backed PVCs holding
local files, and wait for status.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune.api import GROUP, PLURAL, VERSION
from kubetune.contract import LABEL_JOB
from tests.localcluster.cluster import LocalCluster
from tests.localcluster.kube import raw
from tests.waits import wait_progress

ROOT = Path(__file__).resolve().parents[2]
POOLS = ROOT / "tests/localcluster/pools.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """The operator as a child process; logs to `log`."""

    def __init__(self, kubeconfig: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.health_port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "KUBETUNE_POOLS_FILE": str(POOLS),
            "KUBETUNE_PROGRESS_LISTEN": f"127.0.0.1:{self.port}",
            "KUBETUNE_PROGRESS_URL": f"http://127.0.0.1:{self.port}",
            "KUBETUNE_LIVENESS": f"http://127.0.0.1:{self.health_port}/healthz",
            "KUBETUNE_PROGRESS_INTERVAL_SECONDS": "1",
            "KUBETUNE_RETRY_BACKOFF_SECONDS": "1",
            "KUBETUNE_RESYNC_SECONDS": "5",
            "KUBETUNE_TERMINATION_GRACE_SECONDS": "20",
            # Waits for GPUs or a queue turn into a stall after this (test_gitops_health).
            "KUBETUNE_CAPACITY_GRACE_SECONDS": "20",
            "KUBETUNE_LOG_FORMAT": "plain",
            **(env or {}),
        }
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: bool = True, timeout: float = 30) -> OperatorProcess:
        """Returns once the progress port is open (the operator runs kopf), or with
        `ready=False` once the health port is (a leader-election standby opens only that);
        fails after `timeout` seconds."""
        fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune.operator"],
            env=self.env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        port = self.port if ready else self.health_port
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"operator did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crashed or evicted operator."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def crd(local_cluster: LocalCluster) -> None:
    install_crd(local_cluster)


def install_crd(cluster: LocalCluster) -> None:
    """The generated CRD, installed and Established (polled: `kubectl wait` fails at once
    while the CRD has no conditions yet)."""
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds/finetunejob.yaml"))
    ext = client.ApiextensionsV1Api(cluster.api_client())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        crd = raw(ext.read_custom_resource_definition, "finetunejobs.kubetune.io")
        conds = (crd.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
            return
        time.sleep(0.2)
    raise AssertionError("the FineTuneJob CRD did not become Established in 30 s")


@pytest.fixture(scope="session")
def operator(
    local_cluster: LocalCluster, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator for the session, watching every namespace with admin credentials."""
    proc = OperatorProcess(
        local_cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log"
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


# ---------------------------------------------------------------------- helpers
def apply_job(api: client.ApiClient, namespace: str, doc: str | dict[str, Any]) -> dict[str, Any]:
    body = yaml.safe_load(doc) if isinstance(doc, str) else doc
    body.setdefault("apiVersion", f"{GROUP}/{VERSION}")
    body.setdefault("kind", "FineTuneJob")
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )  # type: ignore[assignment]
    return created


def get_job(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )  # type: ignore[assignment]
    return body


TRAINING_STALL = 240.0
"""Seconds a training job may show no change at all (status, pods, their logs) before a
test gives up: a loaded machine makes a run slower, never silent for this long."""


def wait_for(
    api: client.ApiClient,
    namespace: str,
    name: str,
    ok: Callable[[dict[str, Any]], bool],
    stall: float,
    what: str = "condition",
) -> dict[str, Any]:
    """Polls the FineTuneJob until `ok(body)`; fails only when nothing about it moved for
    `stall` seconds (tests.waits): its phase, attempt, progress step, checkpoint,
    conditions and message, its pods' phases and container states, and the size of their
    logs. The failure shows the status and pods last seen."""
    body: dict[str, Any] = {}
    watch = JobWatch(api, namespace, name)

    def done() -> dict[str, Any] | None:
        nonlocal body
        body = get_job(api, namespace, name)
        return body if ok(body) else None

    def describe(seen: Hashable) -> str:
        status = yaml.safe_dump(body.get("status"), sort_keys=False)
        return f"status:\n{status}pods: {watch.pods}\nlog bytes: {watch.log_sizes}"

    return wait_progress(
        done,
        lambda: watch.state(body),
        f"{namespace}/{name}: waiting for {what}",
        stall,
        describe=describe,
    )


class JobWatch:
    """What shows a FineTuneJob moving, as one comparable value."""

    LOG_EVERY = 5.0
    """Pod logs are read through the API server, so less often than the status."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace, self.name = namespace, name
        self.pods: list[tuple[Any, ...]] = []
        self.log_sizes: dict[str, int] = {}
        self._logs_read = 0.0

    def state(self, body: dict[str, Any]) -> Hashable:
        st = body.get("status") or {}
        conditions = tuple(
            (c.get("type"), c.get("status"), c.get("reason")) for c in st.get("conditions") or []
        )
        job = (
            st.get("phase"),
            st.get("attempt"),
            st.get("restarts"),
            (st.get("progress") or {}).get("step"),
            (st.get("checkpoints") or {}).get("latestStep"),
            st.get("message"),
            conditions,
        )
        items = raw(
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=f"{LABEL_JOB}={self.name}",
        )["items"]
        self.pods = [
            (
                p["metadata"]["name"],
                (p.get("status") or {}).get("phase"),
                tuple(
                    (next(iter(cs.get("state") or {}), None), cs.get("restartCount"))
                    for cs in (p.get("status") or {}).get("containerStatuses") or []
                ),
            )
            for p in items
        ]
        if time.monotonic() - self._logs_read > self.LOG_EVERY:
            self._logs_read = time.monotonic()
            for pod in items:
                if (pod.get("status") or {}).get("phase") == "Running":
                    self.log_sizes[pod["metadata"]["name"]] = self._log_size(pod)
        return job, tuple(self.pods), tuple(sorted(self.log_sizes.items()))

    def _log_size(self, pod: dict[str, Any]) -> int:
        try:
            text = self.core.read_namespaced_pod_log(pod["metadata"]["name"], self.namespace)
        except ApiException:
            return -1
        return len(text or "")


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda b: (b.get("status") or {}).get("phase") in phases


def condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def hostpath_claim(
    api: client.ApiClient,
    namespace: str,
    name: str,
    source: Path | None = None,
    access: str = "ReadWriteMany",
) -> Path:
    """A PVC bound to a hostPath PV over a fresh directory (a copy of `source` if given),
    with access mode `access`.

    The pod runner mounts hostPath PVs as the directory itself, so trainer pods see the
    files at their mount path exactly as on a real volume.
    """
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"kubetune-pv-{secrets.token_hex(4)}"
    if source is not None:
        shutil.copytree(source, base)
    else:
        base.mkdir(parents=True)
    os.chmod(base, 0o777)
    core = client.CoreV1Api(api)
    pv = f"{namespace}-{name}"[:63]
    raw(
        core.create_persistent_volume,
        {
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": [access],
                "hostPath": {"path": str(base)},
                "storageClassName": "manual",
                "persistentVolumeReclaimPolicy": "Retain",
                "claimRef": {"namespace": namespace, "name": name},
            },
        },
    )
    raw(
        core.create_namespaced_persistent_volume_claim,
        namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "accessModes": [access],
                "resources": {"requests": {"storage": "10Gi"}},
                "storageClassName": "manual",
                "volumeName": pv,
            },
        },
    )
    return base
