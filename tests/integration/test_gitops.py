"""GitOps on a real API server: server-side apply of the CRD and of every example is
idempotent, so Argo CD and Flux see no drift from a re-sync."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.localcluster.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds/finetunejob.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _apply(cluster: LocalCluster, path: Path, ns: str, manager: str) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "apply",
        "--server-side",
        f"--field-manager={manager}",
        "-n",
        ns,
        "-f",
        str(path),
        "-o",
        "json",
        "--show-managed-fields",
    )
    obj = json.loads(out)
    return list(obj["items"]) if obj.get("kind") == "List" else [obj]


def _spec_managers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """managedFields entries for the object itself, not its status: an operator running
    in the same test worker may write status between two applies, which is no drift."""
    return [m for m in obj["metadata"]["managedFields"] if m.get("subresource") != "status"]


def _fingerprint(objs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            o["kind"],
            o["metadata"]["name"],
            o["metadata"].get("generation"),
            json.dumps(_spec_managers(o), sort_keys=True),
            json.dumps(o.get("spec"), sort_keys=True),
        )
        for o in objs
    ]


def test_crd_server_side_apply_is_idempotent(local_cluster: LocalCluster, crd: None) -> None:
    def get() -> tuple[str, str]:
        o = json.loads(
            local_cluster.kubectl(
                "get", "crd", "finetunejobs.kubetune.io", "-o", "json", "--show-managed-fields"
            )
        )
        return o["metadata"]["resourceVersion"], json.dumps(o["metadata"]["managedFields"])

    before = get()
    local_cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    # The chart ships the same file; applying it is a no-op too.
    local_cluster.kubectl(
        "apply", "--server-side", "-f", str(ROOT / "charts/kubetune/crds/finetunejob.yaml")
    )
    assert get() == before


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
@pytest.mark.parametrize("manager", ["kubectl", "argocd-controller"])
def test_example_server_side_apply_twice_changes_nothing(
    local_cluster: LocalCluster, crd: None, namespace: str, example: Path, manager: str
) -> None:
    first = _apply(local_cluster, example, namespace, manager)
    assert first and all(o["kind"] == "FineTuneJob" for o in first)
    second = _apply(local_cluster, example, namespace, manager)
    assert _fingerprint(second) == _fingerprint(first), "re-applying the example changed it"
    # And what a GitOps tool diffs before syncing: nothing.
    diff = subprocess.run(
        [
            str(local_cluster.bin_dir / "kubectl"),
            "--kubeconfig",
            str(local_cluster.kubeconfig),
            "diff",
            "--server-side",
            f"--field-manager={manager}",
            "-n",
            namespace,
            "-f",
            str(example),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=local_cluster.env(),
    )
    assert diff.returncode == 0, diff.stdout + diff.stderr
    # One manager owns the spec, and nothing but that manager wrote the object.
    managers = {m["manager"] for o in second for m in _spec_managers(o)}
    assert managers == {manager}
