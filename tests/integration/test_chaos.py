"""Chaos on the local control plane (tests/integration/chaos.py): real tiny jobs while the
operator, trainers, pods, kube-apiserver and the jobs themselves are hit at random points;
then the invariants of issue 16. The short run is part of `make test`; the long one runs
only when asked for (`pytest -m chaos_long`). `KUBETUNE_CHAOS_SEED` replays a run's choices.

Each test starts a cluster of its own: restarting kube-apiserver must not disturb the
session cluster's other tests, and no other operator may watch these jobs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.demo_volume import write_demo_volume
from tests.integration.chaos import CLAIM, Chaos, Scenario, seed_from_env
from tests.integration.harness import OperatorProcess, hostpath_claim, install_crd
from tests.localcluster.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.trainer, pytest.mark.slow]
NAMESPACE = "default"
SHORT = Scenario(jobs=2, epochs=4, faults=5)
LONG = Scenario(jobs=4, epochs=10, faults=16, pause=(3.0, 15.0))


@pytest.fixture
def chaos_cluster() -> Iterator[LocalCluster]:
    if os.environ.get("KUBETUNE_SKIP_CLUSTER"):
        pytest.skip("KUBETUNE_SKIP_CLUSTER is set")
    cluster = LocalCluster()
    cluster.start()
    try:
        install_crd(cluster)
        yield cluster
    finally:
        cluster.stop()


def run_chaos(cluster: LocalCluster, tmp_path: Path, scenario: Scenario) -> None:
    files = write_demo_volume(tmp_path / "demo-volume", rows=200)
    api = cluster.api_client()
    claim = hostpath_claim(api, NAMESPACE, CLAIM, files)
    env = {"KUBETUNE_NAMESPACES": NAMESPACE}
    operator = OperatorProcess(cluster.kubeconfig, tmp_path / "operator.log", env).start()
    chaos = Chaos(cluster, api, NAMESPACE, claim, operator, scenario, seed_from_env())
    try:
        chaos.run()
    finally:
        operator.stop()
    problems = chaos.check()
    figures = chaos.figures(problems)
    print(f"chaos figures:\n{figures}", flush=True)
    out = os.environ.get("KUBETUNE_CHAOS_FIGURES")
    if out:
        with open(out, "a") as fh:
            fh.write(figures + "\n\n")
    api.close()
    assert not problems, "invariants violated:\n" + "\n".join(problems) + f"\n\n{figures}"


def test_chaos_short(chaos_cluster: LocalCluster, tmp_path: Path) -> None:
    """One fault of each kind on two jobs and a planted bad input."""
    run_chaos(chaos_cluster, tmp_path, SHORT)


@pytest.mark.chaos_long
def test_chaos_long(chaos_cluster: LocalCluster, tmp_path: Path) -> None:
    """Sixteen faults on four longer jobs and a planted bad input."""
    run_chaos(chaos_cluster, tmp_path, LONG)
