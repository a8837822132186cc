"""GPU node pools: from the operator's configuration or discovered from node labels.

A pool is a set of identical GPU nodes the trainer can be scheduled onto. The operator
reads pools from its config file (the Helm chart's `nodePools` value) and/or groups the
cluster's nodes by their NVIDIA GPU Feature Discovery labels; both end up as `NodePool`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError

from kubetune.api.base import ApiModel
from kubetune.api.spec import Toleration

GPU_RESOURCE = "nvidia.com/gpu"
PRODUCT_LABEL = "nvidia.com/gpu.product"
MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB
COUNT_LABEL = "nvidia.com/gpu.count"
DEFAULT_POOLS_FILE = "default-pools.yaml"


class NodePool(ApiModel):
    """Identical GPU nodes the planner may place a job on."""

    name: Annotated[str, Field(min_length=1, max_length=63)]
    """Pool name, shown in the plan."""
    gpu_type: str = Field(alias="gpuType")
    """GPU product, e.g. `NVIDIA-H100-80GB-HBM3` or `H100-80GB`."""
    gpu_memory_gi_b: Annotated[float, Field(gt=0)] = Field(alias="gpuMemoryGiB")
    """Memory of one GPU, GiB."""
    gpus_per_node: Annotated[int, Field(ge=1, le=64)]
    """GPUs on each node."""
    max_nodes: Annotated[int, Field(ge=1, le=4096)] = 1
    """Nodes the pool can provide (or scale up to)."""
    cost_per_gpu_hour: Annotated[float, Field(ge=0)] | None = Field(
        default=None, alias="costPerGPUHour"
    )
    """Price of one GPU-hour, any currency, for cost-aware placement."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Labels that select the pool's nodes."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations for the pool's taints."""
    interconnect: str | None = None
    """Between nodes, e.g. `infiniband`, `efa`, `ethernet` (informs multi-node warnings)."""
    host_memory_gi_b: Annotated[float, Field(gt=0)] | None = Field(
        default=None, alias="hostMemoryGiB"
    )
    """Allocatable RAM per node, GiB (checked against CPU offload)."""

    @property
    def max_gpus(self) -> int:
        return self.gpus_per_node * self.max_nodes


class PoolConfigError(ValueError):
    """The pools file is missing, malformed or invalid."""


def parse_pools(data: Any, source: str = "pools") -> list[NodePool]:
    """Pools from a parsed YAML document: top-level `pools:` (or the chart's `nodePools:`)."""
    if isinstance(data, Mapping):
        data = data.get("pools", data.get("nodePools"))
    if not isinstance(data, list) or not data:
        raise PoolConfigError(f"{source}: expected a non-empty top-level `pools:` list")
    pools: list[NodePool] = []
    for i, item in enumerate(data):
        try:
            pools.append(NodePool.model_validate(item))
        except ValidationError as err:
            raise PoolConfigError(f"{source}: pools[{i}]: {err}") from err
    names = [p.name for p in pools]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PoolConfigError(f"{source}: duplicate pool names {dupes}")
    return pools


def load_pools(path: str | Path) -> list[NodePool]:
    """Read a pools YAML file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise PoolConfigError(f"cannot read {path}: {err}") from err
    return parse_pools(data, str(path))


def default_pools() -> list[NodePool]:
    """The catalog shipped with kubetune, for planning without a cluster."""
    text = resources.files("kubetune.planner").joinpath(DEFAULT_POOLS_FILE).read_text()
    return parse_pools(yaml.safe_load(text), DEFAULT_POOLS_FILE)


# --------------------------------------------------------------------- discovery
_SUFFIX = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def _quantity_bytes(q: str) -> float | None:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?|k)?", str(q).strip())
    if not m:
        return None
    return float(m.group(1)) * _SUFFIX.get(m.group(2) or "", 1)


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:50] or "gpu"


def _toleration(taint: Mapping[str, Any]) -> Toleration:
    value = taint.get("value")
    return Toleration(
        key=taint.get("key"),
        operator="Equal" if value else "Exists",
        value=value or None,
        effect=taint.get("effect"),
    )


def discover_pools(nodes: Iterable[Mapping[str, Any]]) -> list[NodePool]:
    """Group GPU nodes (Kubernetes API dicts) into pools by product, memory, count and taints.

    Unschedulable nodes and nodes without allocatable GPUs are skipped. The pool's
    tolerations are those for its nodes' NoSchedule/NoExecute taints (GPU nodes are
    usually tainted `nvidia.com/gpu`), and its selector is the GPU product label.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for node in nodes:
        spec = node.get("spec") or {}
        labels = (node.get("metadata") or {}).get("labels") or {}
        alloc = (node.get("status") or {}).get("allocatable") or {}
        gpus = _int(alloc.get(GPU_RESOURCE)) or _int(labels.get(COUNT_LABEL))
        if spec.get("unschedulable") or gpus <= 0 or PRODUCT_LABEL not in labels:
            continue
        taints = tuple(
            sorted(
                (t.get("key", ""), t.get("value") or "", t.get("effect", ""))
                for t in spec.get("taints") or []
                if t.get("effect") in ("NoSchedule", "NoExecute")
            )
        )
        key = (labels[PRODUCT_LABEL], _int(labels.get(MEMORY_LABEL)), gpus, taints)
        groups.setdefault(key, []).append(node)
    pools: list[NodePool] = []
    used: set[str] = set()
    for (product, mem_mib, gpus, taints), members in sorted(groups.items(), key=str):
        name = base = _slug(f"{product}-x{gpus}")
        n = 2
        while name in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name)
        host = [
            _quantity_bytes(((m.get("status") or {}).get("allocatable") or {}).get("memory", ""))
            for m in members
        ]
        known = [h for h in host if h]
        pools.append(
            NodePool(
                name=name,
                gpu_type=product,
                gpu_memory_gi_b=round(mem_mib / 1024, 2) if mem_mib else _memory_from_name(product),
                gpus_per_node=gpus,
                max_nodes=len(members),
                node_selector={PRODUCT_LABEL: product},
                tolerations=[
                    _toleration({"key": k, "value": v, "effect": e}) for k, v, e in taints
                ],
                host_memory_gi_b=round(min(known) / 2**30, 1) if known else None,
            )
        )
    return pools


def _memory_from_name(product: str) -> float:
    """GiB from a product name such as `NVIDIA-A100-SXM4-40GB`, when the label is missing."""
    m = re.search(r"(\d+)\s*GB", product.upper())
    return float(m.group(1)) * 1e9 / 2**30 if m else 16.0


def merge_pools(configured: list[NodePool], discovered: list[NodePool]) -> list[NodePool]:
    """Configured pools win; discovered ones whose GPU product no configured pool covers
    are added."""
    covered = {p.node_selector.get(PRODUCT_LABEL, p.gpu_type) for p in configured}
    return configured + [p for p in discovered if p.gpu_type not in covered]
