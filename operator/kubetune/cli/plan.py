"""`kubetune plan JOB.yaml`: show how kubetune would fine-tune this job, and why.

Exit codes: 0 a plan, 2 a refusal or missing input (message on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kubetune.api import FineTuneJob, Plan

if TYPE_CHECKING:
    from kubetune.planner import Arch, NodePool


def add_plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="plan method, ZeRO stage and GPUs for a FineTuneJob",
        description="Plan a FineTuneJob offline: method, DeepSpeed ZeRO stage, node pool,"
        " GPUs and batch split, with the predicted memory per GPU. Exit code 2 when"
        " nothing fits.",
    )
    add_planning_args(p)
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    p.set_defaults(func=plan_command)


def add_planning_args(p: argparse.ArgumentParser) -> None:
    """What planning needs, for `plan` and `render` alike."""
    p.add_argument("job", metavar="JOB", help="YAML file holding a FineTuneJob")
    p.add_argument(
        "--pools",
        metavar="FILE",
        help="pools YAML (top-level `pools:` list); default: the catalog shipped with kubetune",
    )
    p.add_argument(
        "--model-config",
        metavar="FILE",
        help="the model's config.json; default: spec.model.architecture",
    )
    p.add_argument(
        "--dataset-size",
        type=int,
        metavar="N",
        help="training examples, when known (enables the full-fine-tuning and small-data rules)",
    )
    p.add_argument(
        "--dataset-tokens",
        type=int,
        metavar="N",
        help="training tokens, when known (shown with the dataset size in the plan)",
    )


def _fail(msg: str, command: str = "plan") -> int:
    print(f"kubetune {command}: {msg}", file=sys.stderr)
    return 2


def _load_job(path: str) -> FineTuneJob:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict) and doc.get("kind") == "FineTuneJob":
            return FineTuneJob.model_validate(doc)
    raise ValueError(f"{path}: no FineTuneJob document")


@dataclass(frozen=True)
class Planned:
    """A job file planned offline, as the operator would plan it."""

    job: FineTuneJob
    arch: Arch
    pools: list[NodePool]
    plan: Plan


def plan_job(args: argparse.Namespace, command: str = "plan") -> Planned | int:
    """Load the job, model shape and pools named by `args` and plan; an exit code (2, with
    the reason on stderr) when an input is missing or nothing fits."""
    from pydantic import ValidationError

    from kubetune.planner import (
        ArchitectureError,
        DatasetSize,
        PlanRefused,
        PoolConfigError,
        default_pools,
        load_config,
        load_pools,
        plan,
    )
    from kubetune.planner.architecture import from_spec

    try:
        job = _load_job(args.job)
    except (OSError, ValueError, yaml.YAMLError) as err:  # ValidationError is a ValueError
        detail = str(err) if not isinstance(err, ValidationError) else f"invalid job: {err}"
        return _fail(detail, command)
    spec = job.spec
    name = job.metadata.name or "job"
    try:
        if args.model_config:
            arch = load_config(args.model_config)
        elif spec.model.architecture is not None:
            arch = from_spec(spec.model.architecture, name=_model_name(job))
        else:
            return _fail(
                "the model's shape is unknown: pass --model-config config.json or set"
                " spec.model.architecture",
                command,
            )
        pools = load_pools(args.pools) if args.pools else default_pools()
    except (ArchitectureError, PoolConfigError) as err:
        return _fail(str(err), command)
    size = (
        DatasetSize(rows=args.dataset_size, tokens=args.dataset_tokens)
        if args.dataset_size is not None
        else None
    )
    try:
        result = plan(spec, arch, pools, dataset_size=size)
    except PlanRefused as refused:
        print(f"kubetune {command}: {name}: refused: {refused.reason}", file=sys.stderr)
        for alt in refused.alternatives:
            where = f"{alt.pool} " if alt.pool else ""
            print(f"  - {alt.method} {where}: {alt.reason}", file=sys.stderr)
        return 2
    return Planned(job, arch, pools, result)


def plan_command(args: argparse.Namespace) -> int:
    planned = plan_job(args)
    if isinstance(planned, int):
        return planned
    result = planned.plan
    if args.output == "json":
        print(json.dumps(result.to_k8s(), indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(result.to_k8s(), sort_keys=False), end="")
    else:
        source = args.pools or "the built-in pool catalog (pass --pools for yours)"
        name = planned.job.metadata.name or "job"
        print(render_table(name, planned.arch.describe(), source, result))
    return 0


def _model_name(job: FineTuneJob) -> str:
    m = job.spec.model
    if m.hf is not None:
        return m.hf.repo
    return m.path or (m.pvc.path if m.pvc else None) or "model"


def render_table(name: str, model: str, pools_source: str, p: Plan) -> str:
    """A human-readable plan: the decision, the memory arithmetic, the reasons."""
    rows: list[tuple[str, Any]] = [
        ("job", name),
        ("model", model),
        ("pools", pools_source),
        ("method", f"{p.method} ({p.trainable_parameters:,} trainable parameters)"),
        ("pool", f"{p.pool} ({p.gpu_type}, {p.gpu_memory_gi_b:g} GiB)"),
        ("GPUs", f"{p.nodes} node(s) x {p.gpus_per_node} = {p.total_gpus}"),
        ("ZeRO", f"stage {p.zero_stage}, offload {p.offload}"),
        (
            "batch",
            f"micro {p.micro_batch_size} x accumulation {p.gradient_accumulation_steps}"
            f" x {p.total_gpus} = {p.global_batch_size}",
        ),
        (
            "precision",
            f"{p.precision}, gradient checkpointing {'on' if p.gradient_checkpointing else 'off'}",
        ),
        ("learning rate", f"{p.learning_rate:g}"),
        (
            "predicted",
            f"{p.predicted_peak_gi_b:.1f} GiB per GPU, headroom {p.headroom_gi_b:.1f} GiB",
        ),
    ]
    if p.host_memory_gi_b:
        rows.append(("host RAM", f"{p.host_memory_gi_b:.0f} GiB per node"))
    if p.cost_per_hour is not None:
        rows.append(("cost", f"{p.cost_per_hour:.2f} per hour"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("")
    lines.append("memory per GPU (GiB):")
    for term, gib in p.breakdown_gi_b.items():
        lines.append(f"  {term:<12} {gib:8.2f}")
    lines.append(f"  {'total':<12} {p.predicted_peak_gi_b:8.2f}")
    for title, items in (("reasons", p.reasons), ("warnings", p.warnings)):
        if items:
            lines += ["", f"{title}:"] + [f"  - {r}" for r in items]
    if p.alternatives:
        lines += ["", "rejected:"]
        for alt in p.alternatives:
            where = f" {alt.pool}" if alt.pool else ""
            gpus = f" ({alt.gpus} GPUs)" if alt.gpus else ""
            lines.append(f"  - {alt.method}{where}{gpus}: {alt.reason}")
    return "\n".join(lines)
