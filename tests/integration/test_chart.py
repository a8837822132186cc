"""`helm install` of the chart into the local cluster: the operator starts under the chart's
own RBAC, which allows exactly what the operator does (kubectl auth can-i), and the trainer
ServiceAccount can do nothing beyond what every authenticated identity can."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helmtool import CHART, HelmError, helm
from tests.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.timeout(300)

# (verb, resource) the operator must be allowed wherever FineTuneJobs live.
NAMESPACED_ALLOWED = [
    *[(v, "finetunejobs.kubetune.io") for v in ("get", "list", "watch", "delete")],
    ("patch", "finetunejobs.kubetune.io/status"),
    *[(v, "jobs.batch") for v in ("get", "list", "watch", "create", "delete")],
    *[(v, "pods") for v in ("get", "list", "watch", "create", "delete")],
    ("create", "configmaps"),
    ("create", "services"),
    ("get", "configmaps"),  # a name taken: a deleted namesake's child is waited out
    ("get", "services"),
    ("create", "persistentvolumeclaims"),
    ("get", "persistentvolumeclaims"),  # a multi-node job's output claim must be RWX
    ("create", "events"),
    ("list", "events"),  # the Job controller's FailedCreate: pods the API server refuses
]
CLUSTER_ALLOWED = [
    ("list", "nodes"),
    ("create", "tokenreviews.authentication.k8s.io"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
]
NAMESPACED_DENIED = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("delete", "persistentvolumeclaims"),
    ("list", "configmaps"),
    ("delete", "services"),
    ("update", "finetunejobs.kubetune.io"),
    # Granted before the audit-log proof (now in test_realnode.py) showed nothing uses them.
    ("patch", "finetunejobs.kubetune.io"),
    ("patch", "jobs.batch"),
    ("deletecollection", "pods"),
    ("create", "finetunejobs.kubetune.io"),
    ("update", "finetunejobs.kubetune.io/status"),
    ("patch", "pods"),
    ("create", "pods/exec"),
    ("create", "serviceaccounts/token"),
    ("create", "deployments.apps"),
]
CLUSTER_DENIED = [
    ("get", "nodes"),
    ("patch", "nodes"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("create", "namespaces"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "subjectaccessreviews.authorization.k8s.io"),
]


SUBRESOURCES = {"status", "exec", "token"}


def can_i(cluster: LocalCluster, user: str, verb: str, resource: str, ns: str | None) -> bool:
    """`resource` is TYPE, TYPE/NAME or TYPE/SUBRESOURCE (status, exec, token)."""
    kind, _, tail = resource.partition("/")
    if tail in SUBRESOURCES:
        args = ["auth", "can-i", verb, kind, "--subresource", tail, "--as", user]
    else:
        args = ["auth", "can-i", verb, resource, "--as", user]
    args += ["-n", ns] if ns else []
    out = cluster.kubectl(*args, check=False).strip()
    assert out in ("yes", "no"), f"kubectl auth can-i {verb} {resource}: {out!r}"
    return out == "yes"


def rules_of(cluster: LocalCluster, user: str, ns: str) -> list[str]:
    """`kubectl auth can-i --list`, one normalised line per rule."""
    out = cluster.kubectl("auth", "can-i", "--list", "--as", user, "-n", ns)
    return sorted({" ".join(line.split()) for line in out.splitlines()[1:] if line.strip()})


class Release:
    def __init__(self, cluster: LocalCluster, home: Path, name: str, namespace: str) -> None:
        self.cluster, self.name, self.namespace = cluster, name, namespace
        self.env = {
            **cluster.env(),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def helm(self, *args: str) -> str:
        return helm(
            *args, "--kubeconfig", str(self.cluster.kubeconfig), "-n", self.namespace, env=self.env
        )

    def install(self, *sets: str, wait: bool = False) -> None:
        args = ["install", self.name, str(CHART), "--timeout", "120s"]
        args += ["--set", "image.repository=kubetune-operator", "--set", "image.tag=test"]
        for s in sets:
            args += ["--set", s]
        self.helm(*args, *(["--wait"] if wait else []))

    def uninstall(self) -> None:
        with contextlib.suppress(HelmError):
            self.helm("uninstall", self.name, "--wait", "--timeout", "60s")


@pytest.fixture
def release(local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[Release]:
    rel = Release(local_cluster, tmp_path, f"kt{secrets.token_hex(2)}", namespace)
    try:
        yield rel
    finally:
        rel.uninstall()


@pytest.fixture
def jobs_namespace(local_cluster: LocalCluster, namespace: str) -> Iterator[str]:
    """A second namespace: where FineTuneJobs run when the operator watches namespaces."""
    name = f"{namespace[:50]}-jobs"
    local_cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while "default" not in local_cluster.kubectl("get", "sa", "-n", name, "-o", "name"):
        assert time.monotonic() < deadline, "no default ServiceAccount"
        time.sleep(0.2)
    try:
        yield name
    finally:
        local_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _free_port() -> int:
    """The local pod runner shares the host's ports: never take the fixed 8080/8081."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _deployment(cluster: LocalCluster, rel: Release) -> dict:
    out = cluster.kubectl(
        "get",
        "deploy",
        "-n",
        rel.namespace,
        "-l",
        f"app.kubernetes.io/instance={rel.name}",
        "-o",
        "json",
    )
    items = json.loads(out)["items"]
    assert len(items) == 1
    return dict(items[0])


def _operator_logs(cluster: LocalCluster, rel: Release, want: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    logs = ""
    while time.monotonic() < deadline:
        logs = cluster.kubectl(
            "logs",
            "-n",
            rel.namespace,
            "-l",
            f"app.kubernetes.io/instance={rel.name}",
            "--tail=-1",
            check=False,
        )
        if want in logs:
            return logs
        time.sleep(1)
    raise AssertionError(f"operator never logged {want!r}:\n{logs[-3000:]}")


def test_namespaced_install_runs_the_operator_with_least_privilege(
    local_cluster: LocalCluster, release: Release, jobs_namespace: str
) -> None:
    ns = release.namespace
    # The release namespace enforces the `restricted` Pod Security Standard: the operator pod
    # is admitted, runs (the local pod runner maps the image to this checkout) and is Ready.
    progress_port, health_port = _free_port(), _free_port()
    release.install(
        f"watchNamespaces={{{jobs_namespace}}}",
        f"service.port={progress_port}",
        f"healthPort={health_port}",
        "leaderElection.enabled=true",
        wait=True,
    )
    dep = _deployment(local_cluster, release)
    assert dep["status"].get("availableReplicas") == 1
    sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
    operator = f"system:serviceaccount:{ns}:{sa}"

    # kopf's watches of FineTuneJobs, Jobs and pods start under the chart's RBAC alone.
    logs = _operator_logs(local_cluster, release, f"listening on 0.0.0.0:{progress_port}")
    time.sleep(3)  # let kopf's watchers start
    logs = _operator_logs(local_cluster, release, "progress endpoint listening")
    assert "Forbidden" not in logs and "Not enough permissions" not in logs, logs[-3000:]
    # Leader election works with the release namespace's Role: the pod holds the Lease
    # (named after the release), as its name (POD_NAME, the downward API) and a suffix.
    lease_name = dep["metadata"]["name"]
    lease = json.loads(local_cluster.kubectl("get", "lease", lease_name, "-n", ns, "-o", "json"))
    pod = local_cluster.kubectl(
        "get", "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={release.name}", "-o", "name"
    )
    assert lease["spec"]["holderIdentity"].startswith(pod.strip().removeprefix("pod/") + "_")
    assert "acquired lease" in logs
    lease_res = "leases.coordination.k8s.io"
    for verb in ("get", "update"):
        assert can_i(local_cluster, operator, verb, f"{lease_res}/{lease_name}", ns)
        assert not can_i(local_cluster, operator, verb, f"{lease_res}/other", ns)
    assert can_i(local_cluster, operator, "create", lease_res, ns)
    assert not can_i(local_cluster, operator, "delete", f"{lease_res}/{lease_name}", ns)
    assert not can_i(local_cluster, operator, "create", lease_res, jobs_namespace)

    for verb, res in NAMESPACED_ALLOWED:
        assert can_i(local_cluster, operator, verb, res, jobs_namespace), (verb, res)
    for verb, res in CLUSTER_ALLOWED:
        assert can_i(local_cluster, operator, verb, res, None), (verb, res)
    for verb, res in [("list", "namespaces"), ("watch", "namespaces")]:
        assert can_i(local_cluster, operator, verb, res, None), (verb, res)
    for verb, res in NAMESPACED_DENIED:
        assert not can_i(local_cluster, operator, verb, res, jobs_namespace), (verb, res)
    for verb, res in CLUSTER_DENIED:
        assert not can_i(local_cluster, operator, verb, res, None), (verb, res)
    # Nothing at all outside the watched namespaces, its own included.
    for verb, res in NAMESPACED_ALLOWED:
        assert not can_i(local_cluster, operator, verb, res, ns), (verb, res)
    assert not can_i(local_cluster, operator, "list", "finetunejobs.kubetune.io", "default")

    # The trainer ServiceAccount exists in the watched namespace and holds only what every
    # authenticated identity holds: its rules equal a fresh ServiceAccount's.
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    trainer = env["KUBETUNE_TRAINER_SERVICE_ACCOUNT"]
    local_cluster.kubectl("get", "serviceaccount", trainer, "-n", jobs_namespace)
    local_cluster.kubectl("create", "serviceaccount", "nobody", "-n", jobs_namespace)
    trainer_user = f"system:serviceaccount:{jobs_namespace}:{trainer}"
    assert rules_of(local_cluster, trainer_user, jobs_namespace) == rules_of(
        local_cluster, f"system:serviceaccount:{jobs_namespace}:nobody", jobs_namespace
    )
    listing = rules_of(local_cluster, trainer_user, jobs_namespace)
    assert all("finetunejobs" not in line and "pods" not in line for line in listing)
    for verb, res in [("get", "pods"), ("patch", "finetunejobs.kubetune.io/status")]:
        assert not can_i(local_cluster, trainer_user, verb, res, jobs_namespace)
    svc = dep["metadata"]["name"]
    assert env["KUBETUNE_PROGRESS_URL"] == f"http://{svc}.{ns}.svc:{progress_port}"


def test_cluster_wide_install_rbac(local_cluster: LocalCluster, release: Release) -> None:
    # replicas=0: a cluster-wide operator would act on other tests' jobs.
    release.install("replicas=0", "leaderElection.enabled=true")
    ns = release.namespace
    operator = f"system:serviceaccount:{ns}:{release.name}-kubetune"
    local_cluster.kubectl("get", "serviceaccount", f"{release.name}-kubetune", "-n", ns)
    for verb, res in NAMESPACED_ALLOWED:
        assert can_i(local_cluster, operator, verb, res, "default"), (verb, res)
    for verb, res in CLUSTER_ALLOWED:
        assert can_i(local_cluster, operator, verb, res, None), (verb, res)
    for verb, res in NAMESPACED_DENIED:
        assert not can_i(local_cluster, operator, verb, res, "default"), (verb, res)
    for verb, res in CLUSTER_DENIED:
        assert not can_i(local_cluster, operator, verb, res, None), (verb, res)
    # Cluster-wide kopf never lists namespaces.
    assert not can_i(local_cluster, operator, "list", "namespaces", None)
    # Leader election: its own Lease in its own namespace only, even cluster-wide.
    lease = f"leases.coordination.k8s.io/{release.name}-kubetune"
    for verb in ("get", "update"):
        assert can_i(local_cluster, operator, verb, lease, ns)
        assert not can_i(local_cluster, operator, verb, lease, "default")
        assert not can_i(local_cluster, operator, verb, "leases.coordination.k8s.io/other", ns)
    assert can_i(local_cluster, operator, "create", "leases.coordination.k8s.io", ns)
    assert not can_i(local_cluster, operator, "create", "leases.coordination.k8s.io", "default")
    assert not can_i(local_cluster, operator, "delete", lease, ns)


def test_install_refuses_wrong_values(local_cluster: LocalCluster, release: Release) -> None:
    with pytest.raises(HelmError, match=r"at '/replicas': got string, want integer"):
        release.install("replicas=two")
    assert release.name not in release.helm("list", "-q")
