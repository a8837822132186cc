"""Node pools: the YAML file, the shipped catalog, discovery from node labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune.planner import PoolConfigError, default_pools, discover_pools, load_pools
from kubetune.planner.pools import merge_pools, parse_pools

from .test_planner_helpers import FIXTURES


def node(
    product: str,
    mem_mib: int | None,
    gpus: str,
    *,
    taints: list[dict] | None = None,
    unschedulable: bool = False,
    memory: str = "2013265920Ki",
) -> dict[str, Any]:
    labels = {"nvidia.com/gpu.product": product, "kubernetes.io/hostname": "n"}
    if mem_mib:
        labels["nvidia.com/gpu.memory"] = str(mem_mib)
    return {
        "metadata": {"name": "n", "labels": labels},
        "spec": {"taints": taints or [], "unschedulable": unschedulable},
        "status": {"allocatable": {"nvidia.com/gpu": gpus, "memory": memory, "cpu": "96"}},
    }


def test_fixture_pools_load_with_camel_case_fields() -> None:
    pools = load_pools(FIXTURES / "pools.yaml")
    h100 = pools[0]
    assert (h100.name, h100.gpus_per_node, h100.max_nodes, h100.max_gpus) == ("h100", 8, 2, 16)
    assert h100.cost_per_gpu_hour == 4.0 and h100.gpu_memory_gi_b == 79.6
    assert h100.tolerations[0].key == "nvidia.com/gpu"
    assert h100.to_k8s()["costPerGPUHour"] == 4.0


def test_default_catalog_ships_with_the_package() -> None:
    names = {p.name for p in default_pools()}
    assert {"h100-80gb", "a100-80gb", "a100-40gb", "l4-24gb-x1", "a10g-24gb"} <= names


def test_helm_values_shape_is_accepted() -> None:
    pools = parse_pools(
        {
            "nodePools": [
                {"name": "a", "gpuType": "NVIDIA-L4", "gpuMemoryGiB": 22.5, "gpusPerNode": 1}
            ]
        }
    )
    assert pools[0].max_nodes == 1


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("pools: []", "non-empty"),
        ("other: 1", "non-empty"),
        ("pools:\n- {name: a, gpuType: x, gpuMemoryGiB: 0, gpusPerNode: 1}", r"pools\[0\]"),
        ("pools:\n- {name: a, gpuType: x, gpuMemoryGiB: 8, gpusPerNode: 1, typo: 1}", "typo"),
        (
            "pools:\n- {name: a, gpuType: x, gpuMemoryGiB: 8, gpusPerNode: 1}\n"
            "- {name: a, gpuType: y, gpuMemoryGiB: 8, gpusPerNode: 1}",
            "duplicate",
        ),
    ],
)
def test_bad_pool_files_are_refused(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "pools.yaml"
    f.write_text(text)
    with pytest.raises(PoolConfigError, match=match):
        load_pools(f)


def test_missing_pool_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PoolConfigError, match="cannot read"):
        load_pools(tmp_path / "absent.yaml")


def test_discovery_groups_nodes_by_gpu_and_taints() -> None:
    gpu_taint = [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
    nodes = [
        node("NVIDIA-H100-80GB-HBM3", 81559, "8", taints=gpu_taint),
        node("NVIDIA-H100-80GB-HBM3", 81559, "8", taints=gpu_taint, memory="1000Gi"),
        node("NVIDIA-H100-80GB-HBM3", 81559, "8", unschedulable=True),
        node(
            "NVIDIA-L4",
            23034,
            "1",
            taints=[
                {"key": "team", "value": "ml", "effect": "NoExecute"},
                {"key": "soft", "effect": "PreferNoSchedule"},
            ],
        ),
        node("NVIDIA-A100-SXM4-40GB", None, "4"),
        node("NVIDIA-L4", 23034, "0"),
        {"metadata": {"labels": {}}, "status": {"allocatable": {"cpu": "8"}}},
    ]
    pools = {p.gpu_type: p for p in discover_pools(nodes)}
    h100 = pools["NVIDIA-H100-80GB-HBM3"]
    assert (h100.gpus_per_node, h100.max_nodes) == (8, 2)
    assert h100.gpu_memory_gi_b == pytest.approx(79.65, abs=0.01)
    assert h100.host_memory_gi_b == pytest.approx(1000)
    assert h100.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert [(t.key, t.operator, t.effect) for t in h100.tolerations] == [
        ("nvidia.com/gpu", "Exists", "NoSchedule")
    ]
    l4 = pools["NVIDIA-L4"]
    assert [(t.key, t.operator, t.value) for t in l4.tolerations] == [("team", "Equal", "ml")]
    assert pools["NVIDIA-A100-SXM4-40GB"].gpu_memory_gi_b == pytest.approx(37.25, abs=0.01)
    assert len(pools) == 3


def test_same_gpu_different_taints_become_separate_pools() -> None:
    nodes = [
        node("NVIDIA-L4", 23034, "1"),
        node("NVIDIA-L4", 23034, "1", taints=[{"key": "x", "effect": "NoSchedule"}]),
    ]
    names = [p.name for p in discover_pools(nodes)]
    assert len(names) == 2 and len(set(names)) == 2


def test_merge_prefers_configured_pools() -> None:
    configured = load_pools(FIXTURES / "pools.yaml")
    discovered = discover_pools(
        [node("NVIDIA-H100-80GB-HBM3", 81559, "8"), node("NVIDIA-B200", 183359, "8")]
    )
    merged = merge_pools(configured, discovered)
    assert [p.name for p in merged][: len(configured)] == [p.name for p in configured]
    assert sum(p.gpu_type == "NVIDIA-H100-80GB-HBM3" for p in merged) == 1
    assert any(p.gpu_type == "NVIDIA-B200" for p in merged)
