"""The generated CRD on a real API server: it installs, defaults, and its CEL rules
refuse what `kubetune validate` refuses; the spec freezes once the job has launched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune.api import GROUP, PLURAL, VERSION
from kubetune.api.validate import validate_file, validate_text
from tests.localcluster.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests/fixtures/bad-manifests"
# Mistakes the API server catches by schema or CEL, beside `kubetune validate`.
SERVER_CATCHES = [
    "01-negative-lr",
    "05-bad-method",
    "06-lora-with-full",
    "07-qlora-with-lora",
    "08-split-sum",
    "09-min-gt-max-gpus",
    "10-bad-quantity",
    "11-two-model-sources",
    "12-no-model-source",
    "13-missing-dataset",
    "17-name-too-long",
    "22-relative-path",
    "23-s3-scheme",
    "25-bad-toleration-effect",
    "27-steps-without-every",
    "28-lora-rank-zero",
    "34-architecture-incomplete",
    "35-merge-prompt-tuning",
]


def _doc(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "FineTuneJob"]
    return dict(docs[-1])


def _create(api: client.ApiClient, ns: str, body: dict[str, Any], dry_run: bool = True) -> Any:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, body, dry_run="All" if dry_run else None
    )


@pytest.mark.parametrize("stem", SERVER_CATCHES)
def test_server_refuses_what_validate_refuses(
    crd: None, k8s: client.ApiClient, namespace: str, stem: str
) -> None:
    path = BAD / f"{stem}.yaml"
    problems = validate_file(path).problems
    assert problems, "kubetune validate must refuse it too"
    with pytest.raises(ApiException) as err:
        _create(k8s, namespace, _doc(path))
    assert err.value.status == 422
    # ... and names the same field as the API server.
    causes = json.loads(err.value.body or "{}")["details"]["causes"]
    fields = {c.get("field") for c in causes}
    assert {p.path for p in problems} <= fields, causes


def test_every_example_is_accepted_and_defaulted(
    crd: None, k8s: client.ApiClient, namespace: str
) -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        created = _create(k8s, namespace, _doc(path))
        assert created["spec"]["training"]["maxSeqLength"] > 0, path.name
        assert created["spec"]["evaluation"]["strategy"] == "epoch" or path.name


def test_spec_is_frozen_after_launch_except_suspend(
    crd: None, k8s: client.ApiClient, namespace: str
) -> None:
    api = client.CustomObjectsApi(k8s)
    body = _doc(ROOT / "examples/lora-minimal.yaml")
    _create(k8s, namespace, body, dry_run=False)
    name = body["metadata"]["name"]

    def patch(spec: dict[str, Any]) -> Any:
        return api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"spec": spec}
        )

    patch({"training": {"epochs": 5}})  # before launch: allowed (re-planned)
    api.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        name,
        {"status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z"}},
    )
    with pytest.raises(ApiException) as err:
        patch({"training": {"epochs": 1}})
    assert err.value.status == 422
    assert "immutable once the job has launched" in str(err.value.body)
    assert patch({"suspend": True})["spec"]["suspend"] is True


def test_printer_columns(crd: None, local_cluster: LocalCluster, namespace: str) -> None:
    local_cluster.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples/lora-minimal.yaml"))
    header = local_cluster.kubectl("get", "ftj", "-n", namespace).splitlines()[0].split()
    assert header[:4] == ["NAME", "PHASE", "METHOD", "GPUS"]
    explain = local_cluster.kubectl("explain", "finetunejob.spec.training.learningRate")
    assert "unset takes the method's default" in explain


def test_references_take_any_valid_kubernetes_name(
    crd: None, k8s: client.ApiClient, namespace: str
) -> None:
    """Secret and claim names are DNS subdomains (dots, up to 253 characters)."""
    body = _doc(ROOT / "examples/demo-lora.yaml")
    body["spec"]["model"] = {"hf": {"repo": "org/m", "tokenSecretRef": {"name": "hf.token"}}}
    body["spec"]["dataset"]["train"]["pvc"]["claimName"] = "datasets.v2." + "a" * 200
    assert validate_text(yaml.safe_dump(body)).problems == []
    _create(k8s, namespace, body)
