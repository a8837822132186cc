"""A job whose base model lives on S3, through the operator: credentials and endpoint
from the job's Secret, and a store that is down when the job arrives.

The model probe cannot reach the store (the Secret's endpoint has nobody listening), so
the job must wait in Planning with the reason (condition and Event), probing again with a
backoff, instead of failing for good. Once the Secret points at a store that answers
(moto's S3 server, holding the model), the next probe pod reads it, and the job plans,
trains from the model the trainer pods download, and succeeds: an outage or a wrong
endpoint is fixed without re-creating the job.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.fixtures.tiny_model import cached_tiny_base
from tests.integration.harness import (
    OperatorProcess,
    apply_job,
    condition,
    free_port,
    wait_for,
)
from tests.integration.test_operator_lifecycle import (  # noqa: F401  (fixtures)
    demo_claim,
    demo_files,
    demo_job,
    finished,
    workloads,
)
from tests.integration.test_s3 import BUCKET, KEY, S3, SECRET, start_s3
from tests.localcluster.kube import raw

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


@pytest.fixture
def store() -> Iterator[S3]:
    """moto's S3 server with the bucket and the tiny base model, ready before any job
    can reach it."""
    server, s3 = start_s3()
    s3.upload_dir(cached_tiny_base(), "models/tiny")
    try:
        yield s3
    finally:
        server.stop()


def _credentials(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
    }


def test_model_store_down_then_back(
    operator: OperatorProcess,
    k8s: client.ApiClient,
    namespace: str,
    demo_claim: Path,  # noqa: F811
    store: S3,
) -> None:
    core = client.CoreV1Api(k8s)
    nobody = f"http://localhost:{free_port()}"
    secret = {"metadata": {"name": "model-store"}, "stringData": _credentials(nobody)}
    raw(core.create_namespaced_secret, namespace, secret)
    body = demo_job("s3-model", training={"epochs": 4})
    body["spec"]["model"] = {
        "s3": {
            "uri": f"s3://{BUCKET}/models/tiny",
            "credentialsSecretRef": {"name": "model-store"},
        }
    }
    apply_job(k8s, namespace, body)

    def unreachable(b: dict[str, Any]) -> bool:
        return condition(b, "Planned").get("reason") == "ModelSourceUnreachable"

    waiting = wait_for(k8s, namespace, "s3-model", unreachable, 120, "the probe to fail")
    st = waiting["status"]
    assert st["phase"] == "Planning", st
    assert "probing again" in st["message"] and "Could not connect" in st["message"]
    assert "plan" not in st and workloads(k8s, namespace, "s3-model") == []
    events = raw(client.CoreV1Api(k8s).list_namespaced_event, namespace)["items"]
    assert any(
        e["reason"] == "ModelSourceUnreachable" and e["type"] == "Warning"
        for e in events
        if e["involvedObject"]["name"] == "s3-model"
    )

    secret["stringData"] = _credentials(store.endpoint)
    raw(core.replace_namespaced_secret, "model-store", namespace, secret)
    st = finished(k8s, namespace, "s3-model")
    assert condition({"status": st}, "Planned")["status"] == "True"
    assert st["plan"]["method"] == "lora"
    ev = st["evaluation"]
    assert ev["final"]["exactMatch"] >= ev["baseline"]["exactMatch"] + 0.2
