"""Operator settings, read once from the environment (documented in docs/operator.md)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from kubetune import contract

DEFAULT_IMAGE = "ghcr.io/kubetune/trainer:0.1.0"


class Settings(BaseModel):
    """What a platform team configures through the Helm chart's values."""

    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch; empty means cluster-wide."""
    trainer_image: str = DEFAULT_IMAGE
    """Image for trainer pods unless the job sets spec.image."""
    image_pull_policy: str = "IfNotPresent"
    trainer_service_account: str = "default"
    """ServiceAccount of trainer pods. It needs no RBAC (progress goes to our endpoint),
    so the namespace's `default` works; the chart creates a dedicated one per watched
    namespace."""
    pools_file: Path | None = None
    """Node pools (GPU catalog) YAML; without it pools are discovered from node labels."""
    discover_pools: bool = True
    """Also discover pools from nodes' GPU Feature Discovery labels."""
    progress_interval_seconds: float = 5.0
    """At most one progress status patch per job per this many seconds."""
    progress_listen: str = "0.0.0.0:8081"
    """Where the progress endpoint listens."""
    progress_url: str | None = None
    """URL trainer pods use to reach the endpoint (e.g. http://kubetune.kubetune-system.svc:8081)."""
    master_port: int = contract.DEFAULT_MASTER_PORT
    """Rendezvous port of the trainer pods (torchrun's MASTER_PORT)."""
    max_concurrent_launches: int = 10
    resync_seconds: float = 30.0
    """Reconcile each job at least this often, even without events."""
    retry_backoff_seconds: float = 10.0
    """First retry delay; doubles per restart (capped at 10 minutes)."""
    shm_size: str = "8Gi"
    termination_grace_seconds: int = 120
    """Time a trainer gets to checkpoint after SIGTERM (suspend, preemption)."""
    image_pull_timeout_seconds: float = 300.0
    """ErrImagePull/ImagePullBackOff for longer than this fails the attempt."""
    capacity_grace_seconds: float = Field(default=1800.0, ge=0)
    """Trainer pods the scheduler cannot place (e.g. Insufficient nvidia.com/gpu, while a
    cluster autoscaler adds nodes) or a Job queued by Kueue are progress, not a failure,
    for this long; after it the job reads Stalled (Flux: Failed, Argo CD: Degraded) while
    it keeps waiting. 0 waits without ever stalling."""
    probe_timeout_seconds: float = 300.0
    """How long the model-config probe pod may take."""
    leader_election: bool = False
    """Run kopf only while holding the Lease (several replicas); see leader.py."""
    lease_name: str = "kubetune"
    lease_namespace: str = ""
    """Namespace of the Lease; empty means the pod's own (from its ServiceAccount mount)."""
    lease_duration_seconds: float = 15.0
    """A standby takes the Lease once its holder has not renewed it for this long."""
    lease_renew_deadline_seconds: float = 10.0
    """The leader exits when it could not renew for this long (less than the duration)."""
    lease_retry_period_seconds: float = 2.0
    """How often the leader renews and a standby retries."""

    @model_validator(mode="after")
    def _lease_timings(self) -> Settings:
        # The leader must give up before a standby may take over (controller-runtime's rule).
        if not (
            self.lease_duration_seconds
            > self.lease_renew_deadline_seconds
            > self.lease_retry_period_seconds
            > 0
        ):
            raise ValueError("need lease duration > renew deadline > retry period > 0")
        return self

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        mapping = {
            "KUBETUNE_NAMESPACES": "namespaces",
            "KUBETUNE_TRAINER_IMAGE": "trainer_image",
            "KUBETUNE_IMAGE_PULL_POLICY": "image_pull_policy",
            "KUBETUNE_TRAINER_SERVICE_ACCOUNT": "trainer_service_account",
            "KUBETUNE_POOLS_FILE": "pools_file",
            "KUBETUNE_DISCOVER_POOLS": "discover_pools",
            "KUBETUNE_PROGRESS_INTERVAL_SECONDS": "progress_interval_seconds",
            "KUBETUNE_PROGRESS_LISTEN": "progress_listen",
            "KUBETUNE_PROGRESS_URL": "progress_url",
            "KUBETUNE_MASTER_PORT": "master_port",
            "KUBETUNE_MAX_CONCURRENT_LAUNCHES": "max_concurrent_launches",
            "KUBETUNE_RESYNC_SECONDS": "resync_seconds",
            "KUBETUNE_RETRY_BACKOFF_SECONDS": "retry_backoff_seconds",
            "KUBETUNE_SHM_SIZE": "shm_size",
            "KUBETUNE_TERMINATION_GRACE_SECONDS": "termination_grace_seconds",
            "KUBETUNE_IMAGE_PULL_TIMEOUT_SECONDS": "image_pull_timeout_seconds",
            "KUBETUNE_CAPACITY_GRACE_SECONDS": "capacity_grace_seconds",
            "KUBETUNE_PROBE_TIMEOUT_SECONDS": "probe_timeout_seconds",
            "KUBETUNE_LEADER_ELECTION": "leader_election",
            "KUBETUNE_LEASE_NAME": "lease_name",
            "KUBETUNE_LEASE_NAMESPACE": "lease_namespace",
            "KUBETUNE_LEASE_DURATION_SECONDS": "lease_duration_seconds",
            "KUBETUNE_LEASE_RENEW_DEADLINE_SECONDS": "lease_renew_deadline_seconds",
            "KUBETUNE_LEASE_RETRY_PERIOD_SECONDS": "lease_retry_period_seconds",
        }
        for var, field in mapping.items():
            if var in e and e[var] != "":
                raw = e[var]
                if field == "namespaces":
                    values[field] = [n.strip() for n in raw.split(",") if n.strip()]
                elif field in ("discover_pools", "leader_election"):
                    values[field] = raw.lower() in ("1", "true", "yes", "on")
                else:
                    values[field] = raw
        return cls.model_validate(values)
