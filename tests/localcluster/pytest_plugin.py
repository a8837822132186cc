"""pytest fixtures for the local cluster: `local_cluster` (session), `namespace`, `k8s`, and
`real_cluster` (session: a cluster whose one node is the machine's real node).

One cluster per pytest process, so one per xdist worker that runs cluster tests (startup is
~10 s, cheaper than coordinating a shared one). Set
KUBETUNE_LOCALCLUSTER_DIR to a running `python -m tests.localcluster up` cluster's directory to
reuse it instead, or KUBETUNE_SKIP_CLUSTER=1 to skip cluster tests.

Only one real node may run on a machine (realnode.NodeLock), so every test that uses
`real_cluster` must live in a `test_realnode*.py` module: under xdist those modules go to a
single worker as one unit (`pytest_xdist_make_scheduler` below), and that worker starts the
one real cluster of the session. Set KUBETUNE_REALNODE_DIR to a running
`python -m tests.localcluster up --real-node` cluster to reuse it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.localcluster.build import ensure_node_binaries
from tests.localcluster.cluster import LocalCluster, leftover_processes
from tests.localcluster.kube import raw
from tests.localcluster.realnode import machine_snapshot

CLUSTER_FIXTURES = {"local_cluster", "namespace", "k8s", "real_cluster"}
REALNODE_MODULES = "test_realnode"
_started: list[Path] = []
_changed: list[str] = []


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown when xdist is not loaded
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`load` scheduling, except that the real-node modules form one unit for one worker.

    xdist's own `--dist loadgroup` cannot do this here: with pytest 9 it renames nodes through
    an attribute pytest no longer reads (`Item._nodeid`), so groups are silently ignored.
    """
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class RealNodeTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if Path(module).name.startswith(REALNODE_MODULES) else nodeid

    return RealNodeTogether(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use the cluster fixtures are `cluster` tests even if not marked so. The
    real-node modules go first: under xdist they are one long unit for one worker, best
    started while the other worker takes everything else."""
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)
    items.sort(key=lambda item: not item.path.name.startswith(REALNODE_MODULES))


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


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[LocalCluster]:
    """The machine's one real node in a cluster of its own, with an audit log (metadata of
    every request). Started once per session (by the one worker that runs the real-node
    modules); waits while another session's real node runs, and fails at once if a long-lived
    `up` cluster (`make demo`) holds it."""
    if os.environ.get("KUBETUNE_SKIP_CLUSTER"):
        pytest.skip("KUBETUNE_SKIP_CLUSTER is set")
    if os.geteuid() != 0:
        pytest.skip("the real node (kubelet, containerd, network namespaces) needs root")
    reuse = os.environ.get("KUBETUNE_REALNODE_DIR")
    if reuse:
        yield LocalCluster.attach(reuse)
        return
    ensure_node_binaries()  # installs packages: the snapshot is of the machine with them
    before: dict[str, str] = {}
    # Taken once the node lock is ours: while another session's node runs (a CI clone beside
    # a developer's run), the machine holds that node's changes, which it will undo.
    cluster = LocalCluster(
        real_node=True,
        audit=True,
        node_lock_timeout=3600,
        on_node_lock=lambda: before.update(machine_snapshot()),
    )
    _started.append(cluster.dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        # Without the lock it never changed anything, and there is nothing to compare.
        after = machine_snapshot() if before else {}
        changed = [
            f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
            for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)
        ]
        _changed.extend(changed)
        assert not changed, f"the real node left the machine changed: {changed}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any process of a cluster this session started is still alive, or if
    the real node left the machine different from how it found it."""
    left = {str(d): leftover_processes(d) for d in _started}
    left = {d: pids for d, pids in left.items() if pids}
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if left:
        if tr is not None:
            tr.write_line(f"localcluster: processes left behind: {left}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if _changed:
        if tr is not None:
            tr.write_line(f"localcluster: the real node changed the machine: {_changed}", red=True)
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
