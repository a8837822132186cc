"""The operator's pure builders: what a FineTuneJob turns into."""

from __future__ import annotations

from typing import Any

import yaml

from kubetune import contract as c
from kubetune.api import FineTuneJob
from kubetune.api.status import Plan
from kubetune.api.trainer_config import TrainerConfig
from kubetune.operator import manifests, naming
from kubetune.operator.settings import Settings

JOB = manifests.JobMeta(
    name="tiny", namespace="team-a", uid="u-1", labels={c.KUEUE_QUEUE_LABEL: "gpu"}
)
SETTINGS = Settings(progress_url="http://kubetune.kubetune-system.svc:8081")


def spec(extra: str = "") -> Any:
    doc = f"""
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata: {{name: tiny}}
spec:
  model:
    hf: {{repo: org/model, tokenSecretRef: {{name: hf, key: tok}}}}
  dataset:
    train: {{pvc: {{claimName: data, path: train.jsonl}}}}
    replay:
      source: {{s3: {{uri: s3://b/general.jsonl, credentialsSecretRef: {{name: aws}}}}}}
  output:
    pvc: {{claimName: out, path: runs/tiny, size: 10Gi}}
  resources:
    tolerations: [{{key: team, operator: Exists}}]
    nodeSelector: {{zone: a}}
{extra}
"""
    return FineTuneJob.model_validate(yaml.safe_load(doc)).spec


PLAN = Plan.model_validate(
    {
        "method": "lora",
        "pool": "h100",
        "gpuType": "H100-80GB",
        "gpuMemoryGiB": 80,
        "nodes": 2,
        "gpusPerNode": 8,
        "totalGPUs": 16,
        "microBatchSize": 4,
        "gradientAccumulationSteps": 1,
        "globalBatchSize": 64,
        "gradientCheckpointing": False,
        "precision": "bf16",
        "learningRate": 2e-4,
        "maxSeqLength": 2048,
        "parameters": 8_000_000_000,
        "trainableParameters": 40_000_000,
        "predictedPeakGiB": 30.0,
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
)


def job_manifest() -> dict[str, Any]:
    return manifests.trainer_job(JOB, spec(), PLAN, SETTINGS, attempt=2)


def test_indexed_job_one_pod_per_node_gang_failed() -> None:
    job = job_manifest()
    assert job["metadata"]["name"] == "tiny-a2"
    s = job["spec"]
    assert (s["completionMode"], s["completions"], s["parallelism"]) == ("Indexed", 2, 2)
    assert s["backoffLimit"] == 0
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    assert job["metadata"]["labels"][c.LABEL_ATTEMPT] == "2"


def test_kueue_label_carried_and_job_created_suspended() -> None:
    job = job_manifest()
    assert job["metadata"]["labels"][c.KUEUE_QUEUE_LABEL] == "gpu"
    assert job["spec"]["suspend"] is True
    plain = manifests.trainer_job(
        manifests.JobMeta("tiny", "team-a", "u"), spec(), PLAN, SETTINGS, 1
    )
    assert plain["spec"]["suspend"] is False


def test_rendezvous_env_and_gpu_requests() -> None:
    pod = job_manifest()["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MASTER_ADDR"]["value"] == "tiny-a2-0.tiny.team-a.svc"
    assert env["NNODES"]["value"] == "2" and env["NPROC_PER_NODE"]["value"] == "8"
    assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "tok"}
    assert pod["subdomain"] == naming.service_name("tiny")
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "8"
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "aws"}}]


def test_placement_comes_from_the_plan_merged_with_the_spec() -> None:
    """The plan carries the pool's selector and tolerations: launching needs no pool
    list, so a pool renamed or gone since planning cannot drop them."""
    pod = job_manifest()["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "zone": "a"}
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == ["nvidia.com/gpu", "team"]


def test_restricted_pod_security() -> None:
    pod = job_manifest()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False


def test_volumes_claims_shm_and_token() -> None:
    pod = job_manifest()["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[f"{c.PVC_ROOT}/data"]["readOnly"] is True
    assert mounts[f"{c.PVC_ROOT}/out"]["readOnly"] is False
    assert "/dev/shm" in mounts and c.TOKEN_DIR in mounts
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    token = next(v for v in pod["volumes"] if v["name"] == "kubetune-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "kubetune"


def test_headless_service_publishes_not_ready() -> None:
    svc = manifests.headless_service(JOB, SETTINGS)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"][c.LABEL_JOB] == "tiny"


def test_output_claim_is_not_owned_so_outputs_survive_deletion() -> None:
    pvc = manifests.output_claim(JOB, spec(), PLAN)
    assert pvc is not None
    assert "ownerReferences" not in pvc["metadata"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"


def test_multi_node_output_claim_is_read_write_many() -> None:
    """Every node writes checkpoints (each rank its ZeRO shards) to the output claim: a
    ReadWriteOnce claim would attach to the first node only and the job would hang."""
    two_nodes = manifests.output_claim(JOB, spec(), PLAN)
    one_node = manifests.output_claim(JOB, spec(), PLAN.model_copy(update={"nodes": 1}))
    assert two_nodes is not None and one_node is not None
    assert two_nodes["spec"]["accessModes"] == ["ReadWriteMany"]
    assert one_node["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_launch_objects_are_what_one_attempt_creates() -> None:
    objs = manifests.launch_objects(JOB, spec(), PLAN, SETTINGS, attempt=2)
    assert [o["kind"] for o in objs] == ["Service", "PersistentVolumeClaim", "ConfigMap", "Job"]
    assert objs[-1] == job_manifest()


def test_config_map_holds_a_valid_trainer_config() -> None:
    cm = manifests.config_map(JOB, spec(), PLAN, SETTINGS, attempt=2)
    assert cm["immutable"] is True
    cfg = TrainerConfig.model_validate(yaml.safe_load(cm["data"][c.CONFIG_FILE]))
    assert cfg.job.attempt == 2 and cfg.plan.nodes == 2
    assert cfg.paths.output_dir == f"{c.PVC_ROOT}/out/runs/tiny"
    assert cfg.progress.url == "http://kubetune.kubetune-system.svc:8081/v1/progress"


def test_probe_pod_reads_only_the_model() -> None:
    pod = manifests.model_probe(JOB, spec(), SETTINGS)
    container = pod["spec"]["containers"][0]
    assert container["args"][0] == "inspect-model"
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert pod["spec"]["restartPolicy"] == "Never"


def test_builders_are_deterministic() -> None:
    assert job_manifest() == job_manifest()


def test_every_kubetune_env_var_on_a_trainer_pod_is_read_by_the_trainer() -> None:
    """main set KUBETUNE_JOB_NAME, KUBETUNE_NAMESPACE, KUBETUNE_ATTEMPT and the progress
    URL and token as env on every pod, and the trainer read them from its config instead."""
    from pathlib import Path

    trainer = Path(__file__).resolve().parents[2] / "trainer-image" / "kubetune_trainer"
    source = "\n".join(p.read_text() for p in trainer.rglob("*.py"))
    constants = {v: k for k, v in vars(c).items() if k.startswith("ENV_") and isinstance(v, str)}
    container = job_manifest()["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == list(c.TRAINER_ENTRYPOINT)
    assert container["args"] == list(c.TRAINER_LAUNCH_ARGS)
    for env in container["env"]:
        if env["name"].startswith("KUBETUNE_"):
            name = constants.get(env["name"])
            assert name is not None, f"{env['name']} is not a contract constant"
            assert name in source, f"{env['name']} ({name}) is set but the trainer never reads it"


def test_the_spec_hash_survives_the_trip_to_the_trainer_and_ignores_suspend() -> None:
    """One function computes it (contract.spec_hash); the trainer reads the operator's
    figure and gets the same one from the spec it was handed."""
    cm = manifests.config_map(JOB, spec(), PLAN, SETTINGS, attempt=1)
    cfg = TrainerConfig.model_validate(yaml.safe_load(cm["data"][c.CONFIG_FILE]))
    assert cfg.job.uid == JOB.uid and cfg.job.spec_hash == c.spec_hash(spec())
    assert c.spec_hash(cfg.spec) == cfg.job.spec_hash
    assert c.spec_hash(spec().model_copy(update={"suspend": True})) == cfg.job.spec_hash
    changed = spec().model_copy(update={"max_restarts": spec().max_restarts + 1})
    assert c.spec_hash(changed) != cfg.job.spec_hash


def test_children_carry_the_job_uid_and_ownership_is_by_uid() -> None:
    objs = manifests.launch_objects(JOB, spec(), PLAN, SETTINGS, attempt=1)
    job = objs[-1]
    assert job["spec"]["template"]["metadata"]["labels"][c.LABEL_JOB_UID] == JOB.uid
    assert manifests.owned_by(job, JOB.uid)
    assert not manifests.owned_by(job, "another-uid")
