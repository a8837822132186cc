"""Fake nodes that look like real GPU nodes, kept Ready with status and Lease heartbeats.

Each node carries what the NVIDIA device plugin and GPU Feature Discovery put on a real GPU
node (the `nvidia.com/gpu` extended resource and `nvidia.com/gpu.*` labels) and the taint GPU
pools carry, so the real scheduler places pods by resources, selectors and tolerations.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.localcluster.kube import MERGE, SMP, Obj, is_status, now, now_micro, raw

log = logging.getLogger("localcluster.nodes")

DEFAULT_POOLS = Path(__file__).with_name("pools.yaml")
POOL_LABEL = "localcluster.kubetune.io/pool"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
LEASE_NS = "kube-node-lease"
LEASE_SECONDS = 40

# GPU Feature Discovery's product names and memory (MiB) for the types we model.
_GFD: dict[str, tuple[str, int]] = {
    "H100-80GB": ("NVIDIA-H100-80GB-HBM3", 81559),
    "H100": ("NVIDIA-H100-80GB-HBM3", 81559),
    "A100-80GB": ("NVIDIA-A100-SXM4-80GB", 81920),
    "A100-40GB": ("NVIDIA-A100-SXM4-40GB", 40960),
    "L4-24GB": ("NVIDIA-L4", 23034),
    "L4": ("NVIDIA-L4", 23034),
    "A10G-24GB": ("NVIDIA-A10G", 23028),
    "T4-16GB": ("Tesla-T4", 15360),
}


@dataclass
class NodePool:
    """One entry of the node-pools file (the operator's config shape)."""

    name: str
    gpuType: str
    gpuMemoryGiB: float
    gpusPerNode: int
    maxNodes: int
    nodeSelector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def gfd_product(self) -> str:
        """GFD's product label; `gpuType` may be our short name or already GFD's name."""
        if self.gpuType in _GFD:
            return _GFD[self.gpuType][0]
        if self.gpuType.startswith(("NVIDIA-", "Tesla-")):
            return self.gpuType
        return f"NVIDIA-{self.gpuType}"

    @property
    def gfd_memory_mib(self) -> int:
        known = {product: mib for product, mib in _GFD.values()}
        return known.get(self.gfd_product) or round(self.gpuMemoryGiB * 1024)

    def taints(self) -> list[Obj]:
        """Taints that the pool's tolerations answer (the GPU taint when none are given)."""
        taints = []
        for t in self.tolerations:
            if not (t.get("key") and t.get("effect")):
                continue
            taint = {"key": t["key"], "effect": t["effect"]}
            # An `Exists` toleration names no value; the GPU taint's is "present".
            value = t.get("value") or ("present" if t["key"] == GPU_TAINT["key"] else "")
            if value:
                taint["value"] = value
            taints.append(taint)
        return taints or ([dict(GPU_TAINT)] if self.gpusPerNode else [])


def load_pools(path: str | Path | None = None) -> list[NodePool]:
    """Parse a pools YAML; unknown keys are ignored so the operator may add its own."""
    data = yaml.safe_load(Path(path or DEFAULT_POOLS).read_text()) or {}
    known = set(NodePool.__dataclass_fields__)
    return [NodePool(**{k: v for k, v in p.items() if k in known}) for p in data.get("pools", [])]


def node_manifests(
    pools: list[NodePool],
    cpu_nodes: int = 1,
    kubelet_version: str = "v1.35.4",
    kubelet_port: int = 10250,
) -> list[tuple[Obj, Obj]]:
    """(Node object, Node status) for every fake node: pools' GPU nodes plus CPU-only nodes."""
    out: list[tuple[Obj, Obj]] = []
    specs: list[tuple[str, NodePool | None]] = [
        (f"{p.name}-{i}", p) for p in pools for i in range(p.maxNodes)
    ]
    specs += [(f"cpu-{i}", None) for i in range(cpu_nodes)]
    for name, pool in specs:
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": f"localcluster-{pool.name if pool else 'cpu'}",
            POOL_LABEL: pool.name if pool else "cpu",
        }
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "500Gi"}
        taints: list[Obj] = []
        if pool is not None and pool.gpusPerNode:
            labels.update(gfd_labels(pool, pool.gpusPerNode))
            capacity.update(
                {
                    "cpu": str(max(16, 12 * pool.gpusPerNode)),
                    "memory": f"{max(64, round(2 * pool.gpuMemoryGiB * pool.gpusPerNode))}Gi",
                    "nvidia.com/gpu": str(pool.gpusPerNode),
                }
            )
        if pool is not None:
            labels.update(pool.nodeSelector)
            taints = pool.taints()
        node: Obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints} if taints else {},
        }
        status: Obj = {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, name).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": "localcluster",
                "osImage": "kubetune localcluster",
                "containerRuntimeVersion": "localcluster://0.1",
                "kubeletVersion": kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        out.append((node, status))
    return out


def gfd_labels(pool: NodePool, count: int) -> dict[str, str]:
    """The labels GPU Feature Discovery puts on a node with `count` GPUs of the pool's type."""
    return {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": pool.gfd_product,
        "nvidia.com/gpu.memory": str(pool.gfd_memory_mib),
        "nvidia.com/gpu.count": str(count),
        "nvidia.com/gpu.family": _family(pool.gpuType),
        "nvidia.com/gpu.machine": "localcluster",
    }


def _family(gpu_type: str) -> str:
    t = gpu_type.upper()
    return "hopper" if "H100" in t else "ampere" if "A100" in t or "A10" in t else "ada-lovelace"


def _conditions() -> list[Obj]:
    ts = now()
    conds = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ("Ready", "True", "KubeletReady"),
    ]
    return [
        {
            "type": t,
            "status": s,
            "reason": r,
            "message": "localcluster fake kubelet",
            "lastHeartbeatTime": ts,
            "lastTransitionTime": ts,
        }
        for t, s, r in conds
    ]


class NodeAgent:
    """Registers the fake nodes and heartbeats them as a kubelet would (Lease + status)."""

    def __init__(self, api: client.ApiClient, manifests: list[tuple[Obj, Obj]]) -> None:
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)
        self.manifests = manifests
        self.names = [n["metadata"]["name"] for n, _ in manifests]
        self._stop = threading.Event()
        self._uids: dict[str, str] = {}

    def register(self) -> None:
        for node, status in self.manifests:
            name = node["metadata"]["name"]
            try:
                created = raw(self.core.create_node, node)
            except Exception as e:
                if not is_status(e, 409):
                    raise
                created = raw(self.core.patch_node, name, node, _content_type=SMP)
            self._uids[name] = created["metadata"]["uid"]
            self._post_status(name, status)
            self._renew_lease(name)

    def _post_status(self, name: str, status: Obj | None = None) -> None:
        body = {"status": {**(status or {}), "conditions": _conditions()}}
        raw(self.core.patch_node_status, name, body, _content_type=SMP)

    def _renew_lease(self, name: str) -> None:
        body: Obj = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": LEASE_NS,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": name, "uid": self._uids[name]}
                ],
            },
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": now_micro(),
            },
        }
        try:
            raw(self.coord.patch_namespaced_lease, name, LEASE_NS, body, _content_type=MERGE)
        except Exception as e:
            if not is_status(e, 404):
                raise
            raw(self.coord.create_namespaced_lease, LEASE_NS, body)

    def run(self, lease_every: float = 10.0, status_every: float = 60.0) -> None:
        """Heartbeat until stop(): Lease every 10 s, full status every minute."""
        ticks = 0
        while not self._stop.wait(lease_every):
            ticks += 1
            for name in self.names:
                try:
                    self._renew_lease(name)
                    if ticks * lease_every >= status_every:
                        self._post_status(name)
                except Exception as e:  # keep beating; a transient error is not fatal
                    log.warning("heartbeat for %s failed: %s", name, e)
            if ticks * lease_every >= status_every:
                ticks = 0

    def stop(self) -> None:
        self._stop.set()


PROVISIONER = "localcluster.kubetune.io/hostpath"


class HostPathProvisioner:
    """Binds PVCs of the default `standard` StorageClass to hostPath PVs under a local dir.

    Without it PVC-backed pods would stay unschedulable; real clusters have a CSI driver.
    """

    def __init__(self, api: client.ApiClient, root: Path) -> None:
        self.core = client.CoreV1Api(api)
        self.storage = client.StorageV1Api(api)
        self.root = root
        self._stop = threading.Event()

    def ensure_storage_class(self) -> None:
        sc = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": "standard",
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }
        try:
            raw(self.storage.create_storage_class, sc)
        except Exception as e:
            if not is_status(e, 409):
                raise

    def run(self, every: float = 1.0) -> None:
        while not self._stop.wait(every):
            try:
                self._sync()
            except Exception as e:
                log.warning("provisioner: %s", e)

    def _sync(self) -> None:
        pvcs = raw(self.core.list_persistent_volume_claim_for_all_namespaces)["items"]
        for pvc in pvcs:
            md, spec = pvc["metadata"], pvc.get("spec", {})
            if pvc.get("status", {}).get("phase") != "Pending" or spec.get("volumeName"):
                continue
            if spec.get("storageClassName") != "standard":
                continue
            pv_name = f"pvc-{md['uid']}"
            path = self.root / pv_name
            path.mkdir(parents=True, exist_ok=True)
            pv = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {
                    "name": pv_name,
                    "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
                },
                "spec": {
                    "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": "standard",
                    "volumeMode": spec.get("volumeMode", "Filesystem"),
                    "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                    "claimRef": {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "namespace": md["namespace"],
                        "name": md["name"],
                        "uid": md["uid"],
                    },
                },
            }
            try:
                raw(self.core.create_persistent_volume, pv)
            except Exception as e:
                if not is_status(e, 409):
                    raise

    def stop(self) -> None:
        self._stop.set()
