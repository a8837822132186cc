"""Wrong FineTuneJobs that the CRD cannot catch alone: each ends Failed or Valid=False
with a message naming the cause, and none is retried (no second attempt, no restarts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubetune.api import GROUP, PLURAL, VERSION
from tests.integration.harness import (
    OperatorProcess,
    apply_job,
    condition,
    hostpath_claim,
    phase_is,
    wait_for,
)

LLAMA_8B = (
    "architecture: {numLayers: 32, hiddenSize: 4096, intermediateSize: 14336,"
    " numAttentionHeads: 32, numKeyValueHeads: 8, vocabSize: 128256, modelType: llama}"
)
LLAMA_70B = (
    "architecture: {numLayers: 80, hiddenSize: 8192, intermediateSize: 28672,"
    " numAttentionHeads: 64, numKeyValueHeads: 8, vocabSize: 128256, modelType: llama}"
)


def job(name: str, model: str, extra: str = "", train: str = "{pvc: {claimName: data}}") -> str:
    return f"""
metadata: {{name: {name}}}
spec:
  model: {model}
  dataset:
    train: {train}
{extra}
"""


# (name, manifest, reason, text the message must contain)
CASES: list[tuple[str, str, str, str]] = [
    (
        "unknown-gpu",
        job("unknown-gpu", f"{{hf: {{repo: a/b}}, {LLAMA_8B}}}", "  resources: {gpuType: TPU-v5e}"),
        "NothingFits",
        "TPU-v5e",
    ),
    (
        "full-70b-two-gpus",
        job(
            "full-70b-two-gpus",
            f"{{hf: {{repo: a/b}}, {LLAMA_70B}}}",
            "  method: full\n  resources: {maxGPUs: 2}",
        ),
        "NothingFits",
        "full",
    ),
    (
        "too-many-gpus",
        job("too-many-gpus", f"{{hf: {{repo: a/b}}, {LLAMA_8B}}}", "  resources: {minGPUs: 64}"),
        "NothingFits",
        "64",
    ),
    (
        "tiny-memory-fraction",
        job(
            "tiny-memory-fraction",
            f"{{hf: {{repo: a/b}}, {LLAMA_70B}}}",
            "  method: lora\n  resources: {maxGPUMemoryFraction: 0.11, maxNodes: 1}",
        ),
        "NothingFits",
        "lora",
    ),
    (
        "h100-one-node-16",
        job(
            "h100-one-node-16",
            f"{{hf: {{repo: a/b}}, {LLAMA_8B}}}",
            "  resources: {gpuType: H100, minGPUs: 16, maxNodes: 1}",
        ),
        "NothingFits",
        "H100",
    ),
    (
        "l4-too-many-nodes",
        job(
            "l4-too-many-nodes",
            f"{{hf: {{repo: a/b}}, {LLAMA_8B}}}",
            "  resources: {gpuType: L4-24GB, minGPUs: 8}",
        ),
        "NothingFits",
        "L4",
    ),
    (
        "bad-architecture",
        job(
            "bad-architecture",
            "{hf: {repo: a/b}, architecture: {numLayers: 2, hiddenSize: 100,"
            " numAttentionHeads: 3, vocabSize: 10}}",
        ),
        "ModelConfigInvalid",
        "architecture",
    ),
    (
        "reserved-label",
        """
metadata: {name: reserved-label, labels: {kubetune.io/job: other}}
spec:
  model: {hf: {repo: a/b}}
  dataset: {train: {pvc: {claimName: data}}}
""",
        "InvalidSpec",
        "kubetune.io/job",
    ),
    (
        "no-config-json",
        job("no-config-json", "{pvc: {claimName: models, path: empty}}"),
        "ModelConfigUnreadable",
        "config.json",
    ),
    (
        "config-not-a-model",
        job("config-not-a-model", "{pvc: {claimName: models, path: notamodel}}"),
        "ModelConfigUnreadable",
        "config.json",
    ),
    (
        "model-claim-missing",
        job("model-claim-missing", "{pvc: {claimName: no-such-claim, path: m}}"),
        "VolumeNotFound",
        "no-such-claim",
    ),
    (
        "model-dir-missing",
        job("model-dir-missing", "{pvc: {claimName: models, path: nowhere}}"),
        "ModelConfigUnreadable",
        "nowhere",
    ),
    (
        "hub-token-missing",
        job("hub-token-missing", "{hf: {repo: a/b, tokenSecretRef: {name: no-such-token}}}"),
        "ConfigError",
        "no-such-token",
    ),
    (
        "data-claim-missing",
        job(
            "data-claim-missing",
            f"{{hf: {{repo: a/b}}, {LLAMA_8B}}}",
            train="{pvc: {claimName: no-such-data}}",
        ),
        "VolumeNotFound",
        "no-such-data",
    ),
    (
        "output-claim-missing",
        job(
            "output-claim-missing",
            f"{{hf: {{repo: a/b}}, {LLAMA_8B}}}",
            "  output: {pvc: {claimName: no-such-output}}",
        ),
        "VolumeNotFound",
        "no-such-output",
    ),
    (
        "forgetting-claim-missing",
        job(
            "forgetting-claim-missing",
            f"{{hf: {{repo: a/b}}, {LLAMA_8B}}}",
            "  evaluation: {forgetting: {source: {pvc: {claimName: no-such-general}}}}",
        ),
        "VolumeNotFound",
        "no-such-general",
    ),
    (
        "s3-secret-missing",
        job(
            "s3-secret-missing",
            f"{{hf: {{repo: a/b}}, {LLAMA_8B}}}",
            train="{s3: {uri: s3://b/t.jsonl, credentialsSecretRef: {name: no-such-aws}}}",
        ),
        "ConfigError",
        "no-such-aws",
    ),
    (
        "lora-unknown-module",
        job(
            "lora-unknown-module",
            f"{{hf: {{repo: a/b}}, {LLAMA_8B}}}",
            "  method: lora\n  lora: {targetModules: [attn_qkv_proj]}",
        ),
        "NothingFits",
        "attn_qkv_proj",
    ),
    (
        "full-70b-on-l4",
        job(
            "full-70b-on-l4",
            f"{{hf: {{repo: a/b}}, {LLAMA_70B}}}",
            "  method: full\n  resources: {gpuType: L4}",
        ),
        "NothingFits",
        "L4",
    ),
    (
        "image-invalid",
        job(
            "image-invalid", f"{{hf: {{repo: a/b}}, {LLAMA_8B}}}", "  image: 'Not A Valid Image:::'"
        ),
        "InvalidImageName",
        "image",
    ),
]


@pytest.fixture
def claims(k8s: client.ApiClient, namespace: str, tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "empty").mkdir(parents=True)
    (models / "notamodel").mkdir()
    (models / "notamodel" / "config.json").write_text(json.dumps({"just": "json"}))
    hostpath_claim(k8s, namespace, "models", models)
    hostpath_claim(k8s, namespace, "data")


def _ended(body: dict[str, Any]) -> bool:
    return phase_is("Failed")(body) or condition(body, "Valid").get("status") == "False"


def test_wrong_jobs_fail_with_the_cause_and_are_not_retried(
    operator: OperatorProcess, k8s: client.ApiClient, namespace: str, claims: None
) -> None:
    assert len(CASES) >= 20
    for _, manifest, _, _ in CASES:
        apply_job(k8s, namespace, manifest)
    problems = []
    for name, _, reason, text in CASES:
        body = wait_for(k8s, namespace, name, _ended, stall=120, what="Failed")
        st = body["status"]
        failed = condition(body, "Failed")
        if failed.get("reason") != reason or text.lower() not in st.get("message", "").lower():
            problems.append(f"{name}: {failed.get('reason')}: {st.get('message')}")
        if st.get("restarts", 0) != 0 or st.get("attempt", 0) > 1:
            problems.append(f"{name}: retried (attempt {st.get('attempt')})")
        # The probe's message and the operator's prefix once said it all twice.
        twice = [
            p for p in ("cannot read config.json", "pvc models:/") if st["message"].count(p) > 1
        ]
        if twice:
            problems.append(f"{name}: says {twice} twice: {st['message']}")
    assert problems == []


def test_a_refused_job_is_planned_again_once_its_spec_is_fixed(
    operator: OperatorProcess, k8s: client.ApiClient, namespace: str, claims: None
) -> None:
    """NothingFits before launch, then the user fixes the spec (never launched, so CEL lets
    it change): the job is planned again and goes on, and its conditions are the new
    generation's only: no Failed=True or NothingFits beside the new phase."""
    extra = "  method: full\n  resources: {gpuType: L4}\n  suspend: true"
    apply_job(k8s, namespace, job("fixable", f"{{hf: {{repo: a/b}}, {LLAMA_70B}}}", extra))
    body = wait_for(k8s, namespace, "fixable", _ended, stall=120, what="Failed")
    assert condition(body, "Failed")["reason"] == "NothingFits"
    api = client.CustomObjectsApi(k8s)
    fix = {"spec": {"method": "lora", "resources": None}}
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "fixable", fix)
    body = wait_for(k8s, namespace, "fixable", phase_is("Suspended"), 60, "Suspended")
    st = body["status"]
    assert st["observedGeneration"] == body["metadata"]["generation"] == 2
    assert condition(body, "Failed")["status"] == "False"
    assert condition(body, "Planned")["status"] == "True"
    assert condition(body, "Stalled")["status"] == "False"
    stale = [x for x in st["conditions"] if x["reason"] == "NothingFits"]
    assert stale == [], stale
    assert {x["observedGeneration"] for x in st["conditions"]} == {2}
    resume = {"spec": {"suspend": False}}
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "fixable", resume)
    body = wait_for(
        k8s,
        namespace,
        "fixable",
        lambda b: condition(b, "Launched").get("status") == "True",
        60,
        "the launch",
    )
    assert condition(body, "Failed")["status"] == "False"
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "fixable")
