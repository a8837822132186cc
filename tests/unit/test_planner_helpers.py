"""Builders shared by the planner tests (imported by test_planner_*.py), and their check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune.api.spec import FineTuneJobSpec
from kubetune.planner import Arch, NodePool, load_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CONFIGS = FIXTURES / "model-configs"


def arch(name: str) -> Arch:
    return load_config(CONFIGS / f"{name}.json")


def spec(**fields: Any) -> FineTuneJobSpec:
    base: dict[str, Any] = {
        "model": {"hf": {"repo": "org/model"}},
        "dataset": {"train": {"path": "/d"}},
    }
    base.update(fields)
    return FineTuneJobSpec.model_validate(base)


def pool(
    name: str = "gpu",
    gpu_type: str = "NVIDIA-H100-80GB-HBM3",
    gib: float = 79.6,
    per_node: int = 1,
    nodes: int = 1,
    cost: float | None = None,
    **extra: Any,
) -> NodePool:
    return NodePool(
        name=name,
        gpu_type=gpu_type,
        gpu_memory_gi_b=gib,
        gpus_per_node=per_node,
        max_nodes=nodes,
        cost_per_gpu_hour=cost,
        **extra,
    )


def test_fixtures_are_present() -> None:
    assert len(list(CONFIGS.glob("*.json"))) >= 9
    assert (FIXTURES / "pools.yaml").is_file()
