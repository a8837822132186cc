"""What the operator gives the planner, and what it refuses to launch, on the local control
plane: the probe pod counts the training data so `method: auto` picks full fine-tuning
only for a large dataset and warns on a tiny one; a multi-node job whose output claim only
one node can mount fails before anything is created. No training runs: the jobs are
suspended after planning, or refused before launch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.fixtures.tiny_model import cached_tiny_base, make_instruction_rows
from tests.integration.harness import (
    OperatorProcess,
    apply_job,
    condition,
    hostpath_claim,
    phase_is,
    wait_for,
)
from tests.localcluster.kube import raw

PLANNING_TIMEOUT = 180


def _job(name: str, rows: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "model": {"pvc": {"claimName": "inputs", "path": "tiny-llama"}},
            "dataset": {"train": {"pvc": {"claimName": "inputs", "path": rows}}},
            "training": {"maxSeqLength": 128, "globalBatchSize": 16},
            **spec,
        },
    }


@pytest.fixture
def inputs(k8s: client.ApiClient, namespace: str, tmp_path: Path) -> Path:
    """A claim with the tiny model, a large (60k rows) and a tiny (50 rows) dataset."""
    src = tmp_path / "inputs"
    (src / "data").mkdir(parents=True)
    import shutil

    shutil.copytree(cached_tiny_base(), src / "tiny-llama")
    rows = make_instruction_rows(400, seed=3)
    with (src / "data" / "large.jsonl").open("w") as fh:
        for i in range(60_000):
            fh.write(json.dumps(rows[i % len(rows)]) + "\n")
    (src / "data" / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:50]))
    return hostpath_claim(k8s, namespace, "inputs", src)


@pytest.mark.timeout(600)
def test_the_data_size_reaches_auto(
    operator: OperatorProcess, k8s: client.ApiClient, namespace: str, inputs: Path
) -> None:
    """main never gave the planner the dataset's size in a cluster, so `auto` never chose
    full fine-tuning and the small-data warnings never fired."""
    apply_job(k8s, namespace, _job("large", "data/large.jsonl", method="auto", suspend=True))
    apply_job(k8s, namespace, _job("tiny", "data/tiny.jsonl", method="auto", suspend=True))
    large = wait_for(k8s, namespace, "large", phase_is("Suspended", "Failed"), PLANNING_TIMEOUT)
    tiny = wait_for(k8s, namespace, "tiny", phase_is("Suspended", "Failed"), PLANNING_TIMEOUT)
    big = large["status"]["plan"]
    assert big["method"] == "full" and big["datasetRows"] == 60_000, big["reasons"]
    assert big["datasetTokens"] > 60_000
    assert any(
        "60,000 examples" in r and "full fine-tuning is tried first" in r for r in big["reasons"]
    )
    small = tiny["status"]["plan"]
    assert small["method"] == "lora" and small["datasetRows"] == 50
    assert any("only 50 examples" in w for w in small["warnings"])


@pytest.mark.timeout(600)
def test_a_multi_node_job_on_a_claim_one_node_can_mount_is_refused_before_launch(
    operator: OperatorProcess, k8s: client.ApiClient, namespace: str, inputs: Path
) -> None:
    """On main the operator launched it: the second node's pod could never attach the
    ReadWriteOnce claim and the job hung."""
    hostpath_claim(k8s, namespace, "rwo-out", access="ReadWriteOnce")
    apply_job(
        k8s,
        namespace,
        _job(
            "pair",
            "data/tiny.jsonl",
            method="lora",
            resources={"gpuType": "L4", "minGPUs": 2},
            output={"pvc": {"claimName": "rwo-out", "path": "runs/pair"}},
        ),
    )
    body = wait_for(k8s, namespace, "pair", phase_is("Failed", "Running"), PLANNING_TIMEOUT)
    st = body["status"]
    assert st["phase"] == "Failed" and st["plan"]["nodes"] == 2
    failed = condition(body, "Failed")
    assert failed["reason"] == "OutputClaimNotShared"
    assert "ReadWriteOnce" in failed["message"] and "ReadWriteMany" in failed["message"]
    jobs = raw(client.BatchV1Api(k8s).list_namespaced_job, namespace)["items"]
    assert not jobs, "nothing is launched"
