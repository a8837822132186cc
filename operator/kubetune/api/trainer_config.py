"""The resolved config the operator hands the trainer (mounted from a ConfigMap).

The validated spec plus the plan plus what the runtime resolved. Versioned: a trainer
refuses a config whose `version` it does not know instead of guessing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import ApiModel
from .common import ModelSource
from .spec import FineTuneJobSpec
from .status import Plan

TRAINER_CONFIG_VERSION = 1


class JobRef(ApiModel):
    """Which FineTuneJob (and attempt) this run belongs to."""

    namespace: str
    name: str
    uid: str = ""
    attempt: int = 0
    spec_hash: str = ""
    """contract.spec_hash of the spec: with the UID, whose checkpoints a run may resume."""


class RuntimePaths(ApiModel):
    """Paths inside the trainer pod."""

    pvc_root: str = "/mnt/kubetune/pvc"
    """Each PVC the spec names is mounted at pvcRoot/<claimName>."""
    output_dir: str = "/mnt/kubetune/output"
    """Checkpoints, adapter, merged model and reports go here."""
    scratch_dir: str = "/tmp/kubetune"
    """Downloads (object-store models and data) and temporary files."""


class ProgressTarget(ApiModel):
    """Where rank 0 reports progress; empty url disables reporting."""

    url: str | None = None
    token_file: str | None = None
    interval_seconds: float = Field(default=5.0, gt=0)


class PreviousModel(ApiModel):
    """The earlier fine-tune scored as the `previous` baseline, as the operator resolved
    `spec.evaluation.previous.job` (the other job's output location)."""

    model: ModelSource
    """The model to load; for an adapter, the base it was trained on."""
    adapter: ModelSource | None = None
    """The adapter, when the earlier job trained one."""
    description: str
    """What it is, for status (e.g. `job ns/name (lora adapter)`)."""


class TrainerConfig(ApiModel):
    """Everything the trainer needs, in one file."""

    version: Literal[1] = 1
    job: JobRef
    spec: FineTuneJobSpec
    plan: Plan
    paths: RuntimePaths = Field(default_factory=RuntimePaths)
    progress: ProgressTarget = Field(default_factory=ProgressTarget)
    previous: PreviousModel | None = None
    """The resolved previous-run baseline (spec.evaluation.previous.job)."""
