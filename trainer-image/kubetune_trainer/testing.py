"""Building TrainerConfigs by hand: a FineTuneJob YAML plus a hand-written Plan.

For tests and local runs without the operator or the planner. Only the fields a test
cares about need to be given; the rest get a small, CPU-friendly default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kubetune.api.finetunejob import FineTuneJob
from kubetune.api.status import Plan
from kubetune.api.trainer_config import JobRef, ProgressTarget, RuntimePaths, TrainerConfig
from kubetune.capabilities import capability

PLAN_DEFAULTS: dict[str, Any] = {
    "zeroStage": 0,
    "offload": "none",
    "pool": "cpu",
    "gpuType": "none",
    "gpuMemoryGiB": 0.0,
    "nodes": 1,
    "gpusPerNode": 1,
    "microBatchSize": 8,
    "gradientAccumulationSteps": 1,
    "gradientCheckpointing": False,
    "precision": "fp32",
    "maxSeqLength": 128,
    "parameters": 0,
    "trainableParameters": 0,
    "predictedPeakGiB": 0.0,
}


def make_plan(method: str, **overrides: Any) -> Plan:
    """A Plan for `method`; overrides use the wire (camelCase) names."""
    doc = PLAN_DEFAULTS | {"method": method} | overrides
    doc.setdefault("learningRate", capability(method).default_learning_rate)
    doc.setdefault("totalGPUs", doc["nodes"] * doc["gpusPerNode"])
    doc.setdefault(
        "globalBatchSize",
        doc["microBatchSize"] * doc["gradientAccumulationSteps"] * doc["totalGPUs"],
    )
    return Plan.model_validate(doc)


def make_config(
    job_yaml: str | dict[str, Any],
    plan: Plan,
    output_dir: str | Path,
    scratch_dir: str | Path | None = None,
    pvc_root: str | Path = "/nonexistent",
    progress_url: str | None = None,
    token_file: str | None = None,
    interval_seconds: float = 5.0,
) -> TrainerConfig:
    """The TrainerConfig the operator would render for `job_yaml` with `plan`."""
    doc = yaml.safe_load(job_yaml) if isinstance(job_yaml, str) else job_yaml
    job = FineTuneJob.model_validate(doc)
    out = Path(output_dir)
    return TrainerConfig(
        job=JobRef(namespace=job.metadata.namespace or "default", name=job.metadata.name or "job"),
        spec=job.spec,
        plan=plan,
        paths=RuntimePaths(
            pvc_root=str(pvc_root),
            output_dir=str(out),
            scratch_dir=str(scratch_dir or out / ".scratch"),
        ),
        progress=ProgressTarget(
            url=progress_url, token_file=token_file, interval_seconds=interval_seconds
        ),
    )
