"""The trainer's summary reaches the FineTuneJob's status unchanged, through a real API
server: a real tiny training (adapter, merged model, a copy on S3 via moto's server)
writes its termination summary, the operator's own code turns it into status and writes
it through the status subresource, and what is read back holds every part as the trainer
reported it. On main a real API server pruned the output keys the schema lacked (model,
objectStore, hub), and the operator re-derived the forgetting verdict."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubetune.api.status import FineTuneJobStatus
from kubetune.operator.kube import Kube
from kubetune.operator.reconcile import _apply_summary
from kubetune.operator.statusdiff import merge_patch
from kubetune_trainer.config import dump_config
from kubetune_trainer.testing import make_config, make_plan
from tests.fixtures.tiny_model import cached_tiny_base, make_instruction_rows
from tests.integration.harness import apply_job, get_job
from tests.integration.test_s3 import BUCKET, S3, start_s3
from tests.integration.test_training import LORA, job, run_trainer

pytestmark = [pytest.mark.trainer, pytest.mark.slow]
GENERAL = [
    "The library opens at nine and closes at six on weekdays.",
    "Rain is expected in the north this evening, clearing by the morning.",
    "The train to the coast leaves from platform four every half hour.",
]


@pytest.fixture(scope="module")
def s3_store() -> Iterator[S3]:
    server, s3 = start_s3()
    try:
        yield s3
    finally:
        server.stop()


def test_a_real_summary_reaches_status_unchanged(
    crd: None,
    k8s: client.ApiClient,
    namespace: str,
    s3_store: S3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_instruction_rows(96, seed=1)))
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"text": t}) + "\n" for t in GENERAL))
    doc = job({"model": cached_tiny_base(), "data": data}, "lora", 1, LORA)
    doc["spec"]["output"] = {"s3": {"uri": f"s3://{BUCKET}/jobs/seam"}, "mergeAdapter": True}
    doc["spec"]["evaluation"] |= {
        "maxTestSamples": 8,
        "forgetting": {"source": {"path": str(general)}},
    }
    plan = make_plan("lora", learningRate=3e-3, microBatchSize=16)
    config = dump_config(make_config(doc, plan, tmp_path / "out"), tmp_path / "cfg.json")
    code, summary = run_trainer(config, tmp_path, env=s3_store.env())
    assert code == 0 and summary is not None, summary
    out = summary.output
    assert out is not None and out.adapter and out.merged
    assert out.object_store == f"s3://{BUCKET}/jobs/seam"
    assert summary.evaluation is not None and summary.evaluation.forgetting is not None

    # The FineTuneJob, created through the API, gets the status the operator computes.
    body: dict[str, Any] = {
        "metadata": {"name": "seam"},
        "spec": {
            "model": {"path": "/models/tiny"},
            "dataset": {"train": {"path": "/data/train.jsonl"}},
            "method": "lora",
        },
    }
    apply_job(k8s, namespace, body)
    status: dict[str, Any] = {"phase": "Running", "progress": {"step": 3}}
    kube = Kube(k8s)
    kube.patch_status(namespace, "seam", status)
    before = get_job(k8s, namespace, "seam")["status"]
    after = json.loads(json.dumps(before))
    _apply_summary(after, summary)
    kube.patch_status(namespace, "seam", merge_patch(before, after))
    stored = get_job(k8s, namespace, "seam")["status"]

    assert stored["output"] == out.to_k8s()  # nothing pruned: model paths and the S3 copy
    assert stored["evaluation"] == summary.evaluation.to_k8s()  # the trainer's verdict
    assert stored["checkpoints"] == summary.checkpoints.to_k8s()  # type: ignore[union-attr]
    assert stored["data"] == summary.data
    typed = FineTuneJobStatus.model_validate(stored)
    assert typed.output == out and typed.evaluation == summary.evaluation
    assert typed.progress is not None and typed.progress.step == summary.step
