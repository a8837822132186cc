"""Pure builders for the objects a FineTuneJob owns: dicts in, dicts out, no I/O.

Everything here is derived from (job metadata, spec, plan, settings, attempt), so
reconciling twice builds the same objects and creation is idempotent by name. The plan
carries everything placement needs (the pool's selector and tolerations), so
`launch_objects` is what the operator creates and what `kubetune render` prints.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import yaml

from kubetune import contract as c
from kubetune.api import API_VERSION, KIND
from kubetune.api.spec import DataSource, FineTuneJobSpec, ModelSpec
from kubetune.api.status import Plan
from kubetune.api.trainer_config import (
    JobRef,
    PreviousModel,
    ProgressTarget,
    RuntimePaths,
    TrainerConfig,
)

from . import naming
from .previous import claims as previous_claims
from .settings import Settings

TRAINER_CONTAINER = "trainer"
GCS_SECRET_ROOT = "/var/run/secrets/kubetune-gcs"
GCS_KEY_FILE = "key.json"


@dataclass(frozen=True)
class JobMeta:
    """The identity of a FineTuneJob, as read from its metadata."""

    name: str
    namespace: str
    uid: str
    generation: int = 1
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> JobMeta:
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation", 1)),
            labels=dict(meta.get("labels") or {}),
        )


@dataclass(frozen=True)
class Placement:
    """Where the chosen pool's nodes are: its selector and the taints it carries."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, plan: Plan) -> Placement:
        """The placement the plan recorded when it chose the pool."""
        return cls(dict(plan.node_selector), [t.to_k8s() for t in plan.tolerations])


def owner_reference(job: JobMeta) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(job: JobMeta, attempt: int | None = None, component: str = "trainer") -> dict[str, str]:
    out = {
        c.LABEL_JOB: job.name,
        c.LABEL_COMPONENT: component,
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
    }
    if job.uid:
        out[c.LABEL_JOB_UID] = job.uid
    if attempt is not None:
        out[c.LABEL_ATTEMPT] = str(attempt)
    return out


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    """True when `obj` names the FineTuneJob (or Job) with `uid` among its owners: a child
    found by name alone may be a deleted namesake's, not yet garbage-collected."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def _metadata(name: str, job: JobMeta, attempt: int | None, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": labels(job, attempt, component),
        "ownerReferences": [owner_reference(job)],
    }


# --------------------------------------------------------------------------- volumes
def claims(spec: FineTuneJobSpec, previous: PreviousModel | None = None) -> dict[str, bool]:
    """Every PVC the job reads or writes → whether it must be writable (with the claims of
    a previous job's output scored as a baseline)."""
    out: dict[str, bool] = {}
    for src in spec.sources():
        if src.pvc is not None:
            out.setdefault(src.pvc.claim_name, False)
    for claim in previous_claims(previous):
        out.setdefault(claim, False)
    if spec.output and spec.output.pvc:
        out[spec.output.pvc.claim_name] = True
    return out


def output_dir(spec: FineTuneJobSpec) -> str:
    """Where the trainer writes: inside the output claim, else pod scratch space."""
    if spec.output and spec.output.pvc:
        pvc = spec.output.pvc
        return posixpath.join(c.PVC_ROOT, pvc.claim_name, pvc.path.strip("/"))
    return c.OUTPUT_DIR


def _credentials(spec: FineTuneJobSpec) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(env, S3 secrets for envFrom, GCS secrets to mount) for the sources' credentials."""
    env: list[dict[str, Any]] = []
    hf_ref = spec.model.hf.token_secret_ref if spec.model.hf else None
    for src in (spec.dataset.train, spec.dataset.validation, spec.dataset.test):
        if hf_ref is None and src is not None and src.hf is not None:
            hf_ref = src.hf.token_secret_ref
    if hf_ref is not None:
        env.append(_secret_env(c.ENV_HF_TOKEN, hf_ref.name, hf_ref.key))
    if spec.output and spec.output.hf and spec.output.hf.token_secret_ref:
        ref = spec.output.hf.token_secret_ref
        env.append(_secret_env(c.ENV_HF_PUSH_TOKEN, ref.name, ref.key))
    s3: list[str] = []
    gcs: list[str] = []
    for store in spec.object_stores():
        if store.credentials_secret_ref is None:
            continue
        target = s3 if store.uri.startswith("s3://") else gcs
        if store.credentials_secret_ref.name not in target:
            target.append(store.credentials_secret_ref.name)
    if gcs:
        path = posixpath.join(GCS_SECRET_ROOT, gcs[0], GCS_KEY_FILE)
        env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": path})
    return env, s3, gcs


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


# --------------------------------------------------------------------------- config
def progress_endpoint(settings: Settings) -> str | None:
    """The full URL trainer pods post progress to."""
    if not settings.progress_url:
        return None
    return settings.progress_url.rstrip("/") + c.PROGRESS_PATH


def trainer_config(
    job: JobMeta,
    spec: FineTuneJobSpec,
    plan: Plan,
    settings: Settings,
    attempt: int,
    previous: PreviousModel | None = None,
) -> TrainerConfig:
    return TrainerConfig(
        previous=previous,
        job=JobRef(
            namespace=job.namespace,
            name=job.name,
            uid=job.uid,
            attempt=attempt,
            spec_hash=c.spec_hash(spec),
        ),
        spec=spec,
        plan=plan,
        paths=RuntimePaths(pvc_root=c.PVC_ROOT, output_dir=output_dir(spec)),
        progress=ProgressTarget(
            url=progress_endpoint(settings),
            token_file=posixpath.join(c.TOKEN_DIR, c.TOKEN_FILE) if settings.progress_url else None,
            interval_seconds=settings.progress_interval_seconds,
        ),
    )


def config_map(
    job: JobMeta,
    spec: FineTuneJobSpec,
    plan: Plan,
    settings: Settings,
    attempt: int,
    previous: PreviousModel | None = None,
) -> dict[str, Any]:
    cfg = trainer_config(job, spec, plan, settings, attempt, previous)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(naming.config_name(job.name, attempt), job, attempt, "config"),
        "immutable": True,
        "data": {c.CONFIG_FILE: yaml.safe_dump(cfg.to_k8s(), sort_keys=False)},
    }


# --------------------------------------------------------------------------- service
def headless_service(job: JobMeta, settings: Settings) -> dict[str, Any]:
    """Rendezvous DNS: publishes not-ready pods so workers resolve rank 0 at once."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(naming.service_name(job.name), job, None, "rendezvous"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {c.LABEL_JOB: job.name, c.LABEL_COMPONENT: "trainer"},
            "ports": [{"name": "rendezvous", "port": settings.master_port}],
        },
    }


SHARED_ACCESS = "ReadWriteMany"


def output_access_modes(plan: Plan) -> list[str]:
    """One node writes through ReadWriteOnce; several nodes all write checkpoints (every
    rank its ZeRO shards) to the same claim, which only ReadWriteMany allows."""
    return [SHARED_ACCESS] if plan.nodes > 1 else ["ReadWriteOnce"]


def output_claim(job: JobMeta, spec: FineTuneJobSpec, plan: Plan) -> dict[str, Any] | None:
    """The output PVC when the spec asks kubetune to create it.

    Deliberately NOT owned by the FineTuneJob: deleting the job must never delete the
    trained model. It carries the job label so users can find it.
    """
    if not (spec.output and spec.output.pvc and spec.output.pvc.size):
        return None
    pvc = spec.output.pvc
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": pvc.claim_name,
            "namespace": job.namespace,
            "labels": labels(job, None, "output"),
        },
        "spec": {
            "accessModes": output_access_modes(plan),
            "resources": {"requests": {"storage": pvc.size}},
        },
    }
    if pvc.storage_class_name:
        body["spec"]["storageClassName"] = pvc.storage_class_name
    return body


# --------------------------------------------------------------------------- workload
def _env(job: JobMeta, plan: Plan, settings: Settings, attempt: int) -> list[dict[str, Any]]:
    index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    env: list[dict[str, Any]] = [
        {"name": c.ENV_CONFIG, "value": posixpath.join(c.CONFIG_DIR, c.CONFIG_FILE)},
        {"name": c.ENV_PVC_ROOT, "value": c.PVC_ROOT},
        {
            "name": c.ENV_MASTER_ADDR,
            "value": naming.master_address(job.name, job.namespace, attempt),
        },
        {"name": c.ENV_MASTER_PORT, "value": str(settings.master_port)},
        {"name": c.ENV_NNODES, "value": str(plan.nodes)},
        {"name": c.ENV_NODE_RANK, "valueFrom": {"fieldRef": {"fieldPath": index}}},
        {"name": c.ENV_NPROC_PER_NODE, "value": str(plan.gpus_per_node)},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": posixpath.join(c.SCRATCH_DIR, "hf")},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    return env


def _volumes(
    job: JobMeta,
    spec: FineTuneJobSpec,
    settings: Settings,
    attempt: int,
    gcs: list[str],
    previous: PreviousModel | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    shm = spec.resources.shm_size or settings.shm_size
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": naming.config_name(job.name, attempt)}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": c.CONFIG_DIR, "readOnly": True},
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    writable = claims(spec, previous)
    if not (spec.output and spec.output.pvc):
        volumes.append({"name": "output", "emptyDir": {}})
        mounts.append({"name": "output", "mountPath": c.OUTPUT_DIR})
    for i, (claim, rw) in enumerate(sorted(writable.items())):
        volumes.append(
            {"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": not rw}}
        )
        mounts.append(
            {"name": f"pvc-{i}", "mountPath": posixpath.join(c.PVC_ROOT, claim), "readOnly": not rw}
        )
    _mount_gcs_secrets(gcs, volumes, mounts)
    if settings.progress_url:
        volumes.append(
            {
                "name": "kubetune-token",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": c.TOKEN_AUDIENCE,
                                "expirationSeconds": 3600,
                                "path": c.TOKEN_FILE,
                            }
                        }
                    ]
                },
            }
        )
        mounts.append({"name": "kubetune-token", "mountPath": c.TOKEN_DIR, "readOnly": True})
    return volumes, mounts


def _mount_gcs_secrets(
    secrets: list[str], volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]
) -> None:
    """GCS service-account keys are files (GOOGLE_APPLICATION_CREDENTIALS), not env."""
    for i, secret in enumerate(secrets):
        volumes.append({"name": f"gcs-{i}", "secret": {"secretName": secret}})
        mounts.append(
            {
                "name": f"gcs-{i}",
                "mountPath": posixpath.join(GCS_SECRET_ROOT, secret),
                "readOnly": True,
            }
        )


def _tolerations(spec: FineTuneJobSpec, placement: Placement) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = list(placement.tolerations)
    for t in spec.resources.tolerations or []:
        item = t.to_k8s()
        if item not in out:
            out.append(item)
    return out


RESTRICTED_POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def _trainer_image_container(
    name: str,
    args: list[str],
    env: list[dict[str, Any]],
    resources: dict[str, Any],
    mounts: list[dict[str, Any]],
    spec: FineTuneJobSpec,
    settings: Settings,
    s3_secrets: list[str],
) -> dict[str, Any]:
    """A container of the trainer image under the restricted profile; the trainer's
    JSON summary (or, failing that, its last log lines) is the termination message."""
    container: dict[str, Any] = {
        "name": name,
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(c.TRAINER_ENTRYPOINT),
        "args": args,
        "env": env,
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "terminationMessagePath": c.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if s3_secrets:
        container["envFrom"] = [{"secretRef": {"name": n}} for n in s3_secrets]
    return container


def trainer_job(
    job: JobMeta,
    spec: FineTuneJobSpec,
    plan: Plan,
    settings: Settings,
    attempt: int,
    previous: PreviousModel | None = None,
) -> dict[str, Any]:
    """One attempt's Indexed Job: one pod per node, gang-failed as a whole.

    `backoffLimit: 0`: a failed rank fails the Job at once and the operator starts a new
    attempt of all ranks from the latest checkpoint, so no rank is left hanging in NCCL.
    """
    env_creds, s3, gcs = _credentials(spec)
    volumes, mounts = _volumes(job, spec, settings, attempt, gcs, previous)
    placement = Placement.of(plan)
    resources: dict[str, Any] = {"limits": {}, "requests": {}}
    if plan.gpus_per_node > 0:
        resources["limits"]["nvidia.com/gpu"] = str(plan.gpus_per_node)
        resources["requests"]["nvidia.com/gpu"] = str(plan.gpus_per_node)
    if spec.resources.cpu:
        resources["requests"]["cpu"] = spec.resources.cpu
    if spec.resources.memory:
        resources["requests"]["memory"] = spec.resources.memory
        resources["limits"]["memory"] = spec.resources.memory
    container = _trainer_image_container(
        TRAINER_CONTAINER,
        list(c.TRAINER_LAUNCH_ARGS),
        _env(job, plan, settings, attempt) + env_creds,
        {k: v for k, v in resources.items() if v},
        mounts,
        spec,
        settings,
        s3,
    )
    container["ports"] = [{"name": "rendezvous", "containerPort": settings.master_port}]
    pod_spec: dict[str, Any] = {
        "subdomain": naming.service_name(job.name),
        "restartPolicy": "Never",
        "serviceAccountName": settings.trainer_service_account,
        "automountServiceAccountToken": False,
        "securityContext": RESTRICTED_POD_SECURITY,
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "containers": [container],
        "volumes": volumes,
    }
    selector = {**placement.node_selector, **(spec.resources.node_selector or {})}
    if selector:
        pod_spec["nodeSelector"] = selector
    tolerations = _tolerations(spec, placement)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.resources.affinity:
        pod_spec["affinity"] = spec.resources.affinity
    if spec.resources.priority_class_name:
        pod_spec["priorityClassName"] = spec.resources.priority_class_name
    meta = _metadata(naming.workload_name(job.name, attempt), job, attempt, "trainer")
    queue = job.labels.get(c.KUEUE_QUEUE_LABEL)
    if queue:
        meta["labels"][c.KUEUE_QUEUE_LABEL] = queue
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": plan.nodes,
            "parallelism": plan.nodes,
            "backoffLimit": 0,
            # Kueue admits a suspended Job by unsuspending it; without Kueue run at once.
            "suspend": bool(queue),
            "template": {
                "metadata": {
                    "labels": labels(job, attempt, "trainer"),
                    "annotations": {c.LABEL_ATTEMPT: str(attempt)},
                },
                "spec": pod_spec,
            },
        },
    }


def launch_objects(
    job: JobMeta,
    spec: FineTuneJobSpec,
    plan: Plan,
    settings: Settings,
    attempt: int,
    previous: PreviousModel | None = None,
) -> list[dict[str, Any]]:
    """Everything one attempt's launch creates, in creation order: the rendezvous Service,
    the output claim (when the spec sizes one), the trainer config, the Job. `previous` is
    the resolved `evaluation.previous.job` baseline (its output, mounted read-only)."""
    objects = [headless_service(job, settings)]
    claim = output_claim(job, spec, plan)
    if claim is not None:
        objects.append(claim)
    objects.append(config_map(job, spec, plan, settings, attempt, previous))
    objects.append(trainer_job(job, spec, plan, settings, attempt, previous))
    return objects


# --------------------------------------------------------------------------- probe
def model_probe(job: JobMeta, spec: FineTuneJobSpec, settings: Settings) -> dict[str, Any]:
    """A short CPU pod that reads what planning needs where it lives, with the trainer's
    own credentials, and returns it as its termination message: the model's config.json
    (PVC, S3, GCS, Hub, image) unless the spec gives the architecture, and a count of the
    training data. The operator itself then needs no access to Secrets or storage."""
    env_creds, s3, gcs = _credentials(spec)
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    read_config = spec.model.architecture is None
    sources: list[ModelSpec | DataSource] = [spec.dataset.train]
    if read_config:
        sources.append(spec.model)
    probed = sorted({src.pvc.claim_name for src in sources if src.pvc is not None})
    for i, claim in enumerate(probed):
        volumes.append(
            {"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append(
            {"name": f"pvc-{i}", "mountPath": posixpath.join(c.PVC_ROOT, claim), "readOnly": True}
        )
    _mount_gcs_secrets(gcs, volumes, mounts)
    args = ["inspect-model", "--dataset", json.dumps(spec.dataset.to_k8s())]
    if read_config:
        args += ["--model", json.dumps(spec.model.to_k8s())]
    container = _trainer_image_container(
        "probe",
        args,
        [
            {"name": c.ENV_PVC_ROOT, "value": c.PVC_ROOT},
            {"name": "HOME", "value": "/tmp"},
            {"name": "HF_HOME", "value": posixpath.join(c.SCRATCH_DIR, "hf")},
            *env_creds,
        ],
        {"requests": {"cpu": "100m", "memory": "256Mi"}},
        mounts,
        spec,
        settings,
        s3,
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(naming.probe_name(job.name, job.generation), job, None, "probe"),
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": settings.trainer_service_account,
            "automountServiceAccountToken": False,
            "securityContext": RESTRICTED_POD_SECURITY,
            "activeDeadlineSeconds": int(settings.probe_timeout_seconds),
            "containers": [container],
            "volumes": volumes,
        },
    }
