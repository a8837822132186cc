"""`evaluation.previous.job`: the operator finds the other job's output, waits while it
runs, refuses one that cannot serve, and mounts the claim the trainer reads it from."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import Plan
from kubetune.operator import manifests, previous
from kubetune.operator.settings import Settings
from kubetune_trainer.testing import make_plan


def other_job(phase: str = "Succeeded", method: str = "lora", **output: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "v1", "namespace": "team"},
        "spec": {
            "model": {"pvc": {"claimName": "models", "path": "llama"}},
            "dataset": {"train": {"path": "/d.jsonl"}},
            "output": output or {"pvc": {"claimName": "runs", "path": "/support/v1/"}},
        },
        "status": {"phase": phase, "plan": {"method": method}},
    }


def test_an_adapter_job_resolves_to_its_base_and_adapter_on_the_claim() -> None:
    found = previous.resolve("team", "v1", other_job())
    assert found.model.pvc is not None and found.model.pvc.claim_name == "models"
    assert found.adapter is not None and found.adapter.pvc is not None
    assert (found.adapter.pvc.claim_name, found.adapter.pvc.path) == ("runs", "support/v1/adapter")
    assert found.description == "job team/v1 (lora adapter)"
    assert previous.claims(found) == ["models", "runs"]


def test_a_full_fine_tune_resolves_to_its_model_folder_in_the_store() -> None:
    found = previous.resolve(
        "team", "v1", other_job(method="full", s3={"uri": "s3://bucket/runs/v1/"})
    )
    assert found.adapter is None and found.model.s3 is not None
    assert found.model.s3.uri == "s3://bucket/runs/v1/model"
    assert previous.claims(found) == []


@pytest.mark.parametrize(
    ("body", "error", "words"),
    [
        (None, previous.PreviousInvalid, "does not exist"),
        (other_job("Failed"), previous.PreviousInvalid, "failed"),
        (other_job("Running"), previous.PreviousNotReady, "is Running; waiting"),
        (other_job(hf={"repo": "org/x"}), previous.PreviousInvalid, "pod scratch space"),
    ],
)
def test_jobs_that_cannot_serve_say_why(
    body: dict[str, Any] | None, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words) as caught:
        previous.resolve("team", "v1", body)
    assert str(caught.value).startswith("spec.evaluation.previous.job: FineTuneJob team/v1")


def test_the_trainer_pod_mounts_the_previous_claims_read_only_and_gets_the_location() -> None:
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"hf": {"repo": "org/base"}},
            "dataset": {"train": {"pvc": {"claimName": "data", "path": "t.jsonl"}}},
            "evaluation": {"previous": {"job": "v1"}},
        }
    )
    found = previous.resolve("team", "v1", other_job())
    meta = manifests.JobMeta(name="v2", namespace="team", uid="u")
    plan: Plan = make_plan("lora")
    job = manifests.trainer_job(meta, spec, plan, Settings(), 1, previous=found)
    pod = job["spec"]["template"]["spec"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"data": True, "models": True, "runs": True}
    config = manifests.trainer_config(meta, spec, plan, Settings(), 1, found)
    assert config.previous == found
    without = manifests.trainer_job(meta, spec, plan, Settings(), 1)
    assert "runs" not in str(without["spec"]["template"]["spec"]["volumes"])
