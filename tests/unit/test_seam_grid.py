"""The seam from plan to pods, over a grid: every plan the planner makes is rendered by
the operator's own builders (`manifests.launch_objects`), and the trainer's
`launch --dry-run`, given the rendered ConfigMap and each pod's environment, accepts it
and says it will run exactly that plan: ZeRO stage, offload, processes, quantisation.

Grid: every method x 6 real architectures (0.5B to 70B, an MoE) x 5 pool shapes (1x24 GB
to 8x80 GB) x 1-4 nodes. The representative runs on the CPU (tests/integration/
test_training.py, `test_grid_layouts_train_through_the_launcher`) train layouts taken
from this grid through the same launcher.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune import contract as c
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import Plan
from kubetune.capabilities import CAPABILITIES, METHODS
from kubetune.operator import manifests
from kubetune.operator.settings import Settings
from kubetune.planner import NodePool, PlanRefused, plan
from kubetune_trainer.cli import main as trainer_main

from .test_planner_helpers import arch, pool, spec

pytestmark = pytest.mark.trainer

ARCHS = (
    "qwen2.5-0.5b",
    "llama-3.2-1b",
    "phi-3-mini-4k",
    "llama-3.1-8b",
    "mixtral-8x7b",
    "llama-3.1-70b",
)
POOLS: dict[str, NodePool] = {
    "1x24GB": pool("l4", "NVIDIA-L4", 22.5, per_node=1, nodes=4, host_memory_gi_b=180),
    "4x24GB": pool("a10g", "NVIDIA-A10G", 22.5, per_node=4, nodes=4),
    "2x48GB": pool("l40s", "NVIDIA-L40S", 45, per_node=2, nodes=4),
    "8x40GB": pool("a100", "NVIDIA-A100-SXM4-40GB", 40, per_node=8, nodes=4),
    "8x80GB": pool(
        "h100", "NVIDIA-H100-80GB-HBM3", 79.6, per_node=8, nodes=4, host_memory_gi_b=1900
    ),
}
NODES = (1, 2, 3, 4)
SETTINGS = Settings(progress_url="http://kubetune.kubetune-system.svc:8081")


def job_spec(method: str, nodes: int, per_node: int) -> FineTuneJobSpec:
    """The method on exactly `nodes` nodes (one node: any GPU count on it)."""
    extra: dict[str, Any] = {}
    if method in ("prompt-tuning", "prefix-tuning"):
        extra["promptTuning"] = {"numVirtualTokens": 16}
    resources: dict[str, Any] = {"maxNodes": nodes}
    if nodes > 1:
        resources["minGPUs"] = nodes * per_node
    return spec(
        method=method,
        training={"maxSeqLength": 2048, "globalBatchSize": 48},
        resources=resources,
        output={"pvc": {"claimName": "out", "path": "runs/grid", "size": "100Gi"}},
        **extra,
    )


def rendered(s: FineTuneJobSpec, p: Plan) -> tuple[str, list[dict[str, str]]]:
    """The trainer config the operator would mount, and each pod's environment."""
    meta = manifests.JobMeta(name="grid", namespace="team", uid="u-1")
    objects = manifests.launch_objects(meta, s, p, SETTINGS, attempt=1)
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"][c.CONFIG_FILE]
    job = next(o for o in objects if o["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == list(c.TRAINER_LAUNCH_ARGS)
    envs = []
    for rank in range(job["spec"]["completions"]):
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env[c.ENV_NODE_RANK] = str(rank)  # the Job's completion index, via fieldRef
        envs.append(env)
    return config, envs


def dry_run(
    config: str, env: dict[str, str], tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> tuple[int, dict[str, Any] | str]:
    path = tmp / "trainer-config.yaml"
    path.write_text(config)
    for name in (c.ENV_NNODES, c.ENV_NODE_RANK, c.ENV_NPROC_PER_NODE, c.ENV_MASTER_ADDR):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv(c.ENV_MASTER_PORT, env[c.ENV_MASTER_PORT])
    code = trainer_main(["launch", "--config", str(path), "--dry-run"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else err


def mismatches(p: Plan, launch: dict[str, Any], rank: int) -> list[str]:
    """How what the dry run will run differs from the plan (empty: it is the plan)."""
    got = launch["processes"]
    cap = CAPABILITIES[p.method]
    want_quant = cap.quantised_base
    quant = launch["quantisation"]
    checks = {
        "nodes": (got["nodes"], p.nodes),
        "processes per node": (got["perNode"], p.gpus_per_node),
        "processes": (got["total"], p.total_gpus),
        "node rank": (got["nodeRank"], rank),
        "ZeRO stage": (launch["zeroStage"], p.zero_stage),
        "offload": (launch["offload"], p.offload),
        "DeepSpeed": (launch["deepspeed"], p.zero_stage > 0),
        "quantised": (quant is not None, want_quant),
        "mode": (got["mode"], "in-process" if p.total_gpus == 1 else "accelerate"),
    }
    if p.zero_stage:
        zero = launch["deepspeedConfig"]["zero_optimization"]
        checks["DeepSpeed stage"] = (zero["stage"], p.zero_stage)
        checks["optimizer offload"] = ("offload_optimizer" in zero, p.offload != "none")
        checks["parameter offload"] = ("offload_param" in zero, "parameters" in p.offload)
    if want_quant and quant is not None:
        storage = launch["loadDtype"] if p.zero_stage == 3 else "uint8"
        checks["4-bit storage"] = (quant["storage"], storage)
    return [f"{k}: ran {a!r}, planned {b!r}" for k, (a, b) in checks.items() if a != b]


@pytest.mark.parametrize("method", METHODS)
def test_every_plan_renders_and_the_trainer_runs_exactly_it(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    problems: list[str] = []
    layouts: Counter[tuple[int, str, str]] = Counter()
    plans = refused = 0
    for model in ARCHS:
        a = arch(model)
        for shape, gpus in POOLS.items():
            for nodes in NODES:
                s = job_spec(method, nodes, gpus.gpus_per_node)
                try:
                    p = plan(s, a, [gpus])
                except PlanRefused:
                    refused += 1
                    continue
                plans += 1
                where = f"{method} {model} on {shape} x{nodes}: {p.nodes}x{p.gpus_per_node}"
                if nodes > 1 and p.nodes != nodes:
                    problems.append(f"{where}: asked for exactly {nodes} nodes")
                layouts[(p.zero_stage, p.offload, "multi-node" if p.nodes > 1 else "1 node")] += 1
                config, envs = rendered(s, p)
                for rank in sorted({0, len(envs) - 1}):
                    code, launch = dry_run(config, envs[rank], tmp_path, monkeypatch, capsys)
                    if code != 0:
                        problems.append(f"{where}, rank {rank}: refused ({code}): {launch}")
                        continue
                    assert isinstance(launch, dict)
                    problems += [f"{where}, rank {rank}: {m}" for m in mismatches(p, launch, rank)]
    print(f"{method}: {plans} plans, {refused} refused; layouts {dict(layouts)}")
    assert not problems, "\n".join(problems[:20])
    assert plans >= 40, f"only {plans} of the grid's shapes fit {method}"
    assert any(nodes == "multi-node" for _, _, nodes in layouts), "no multi-node plan"
    stages = {stage for stage, _, _ in layouts}
    assert stages <= set(CAPABILITIES[method].zero_stages)
    if 3 in CAPABILITIES[method].zero_stages:
        assert 3 in stages, f"{method} never needed ZeRO-3 in the grid"
    if method == "full":
        # single-GPU plans with ZeRO (offload): they must run under DeepSpeed too
        assert any(stage and n == "1 node" for stage, off, n in layouts if off != "none")


def test_a_refused_config_exits_2_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """What the trainer would refuse, the dry run refuses the same way, before any pod."""
    s = job_spec("qlora", 1, 8)
    p = plan(s, arch("llama-3.1-8b"), [POOLS["8x80GB"]])
    config, envs = rendered(s, p)
    doc = yaml.safe_load(config)
    doc["plan"]["zeroStage"], doc["plan"]["offload"] = 2, "optimizer"
    code, err = dry_run(yaml.safe_dump(doc), envs[0], tmp_path, monkeypatch, capsys)
    assert code == c.ExitCode.BAD_INPUT
    assert "qlora runs with no ZeRO" in str(err) and "ZeRO-3" in str(err)
    envs[0][c.ENV_NPROC_PER_NODE] = "3"  # a pod that does not match its plan
    code, err = dry_run(config, envs[0], tmp_path, monkeypatch, capsys)
    assert code == c.ExitCode.BAD_INPUT and "NPROC_PER_NODE" in str(err)
