"""pytest fixtures for the local cluster: `local_cluster` (session), `namespace`, `k8s`.

One cluster per pytest process, so one per xdist worker that runs cluster tests (startup is
~10 s, cheaper than coordinating a shared one). Set
KUBETUNE_LOCALCLUSTER_DIR to a running `python -m tests.localcluster up` cluster's directory to
reuse it instead, or KUBETUNE_SKIP_CLUSTER=1 to skip cluster tests.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.localcluster.cluster import LocalCluster, leftover_processes
from tests.localcluster.kube import raw

CLUSTER_FIXTURES = {"local_cluster", "namespace", "k8s"}
_started: list[Path] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use the cluster fixtures are `cluster` tests even if not marked so."""
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    if os.environ.get("KUBETUNE_SKIP_CLUSTER"):
        pytest.skip("KUBETUNE_SKIP_CLUSTER is set")
    reuse = os.environ.get("KUBETUNE_LOCALCLUSTER_DIR")
    if reuse:
        yield LocalCluster.attach(reuse)
        return
    cluster = LocalCluster()
    _started.append(cluster.dir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any process of a cluster this session started is still alive."""
    left = {str(d): leftover_processes(d) for d in _started}
    left = {d: pids for d, pids in left.items() if pids}
    if left:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"localcluster: processes left behind: {left}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def k8s(local_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    """An admin ApiClient for the session cluster."""
    api = local_cluster.api_client()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, k8s: client.ApiClient) -> Iterator[str]:
    """A fresh namespace enforcing PodSecurity `restricted`, with its default ServiceAccount
    (and kube-root-ca.crt) already made by the controller-manager, deleted afterwards."""
    core = client.CoreV1Api(k8s)
    slug = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())
    name = f"{slug[:40].strip('-')}-{secrets.token_hex(3)}"
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    raw(core.create_namespace, {"metadata": {"name": name, "labels": labels}})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sas = raw(core.list_namespaced_service_account, name)["items"]
        cms = raw(core.list_namespaced_config_map, name)["items"]
        if sas and any(c["metadata"]["name"] == "kube-root-ca.crt" for c in cms):
            break
        time.sleep(0.1)
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):  # the cluster may be going away: nothing to do
            raw(core.delete_namespace, name)
