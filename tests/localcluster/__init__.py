"""A real local Kubernetes control plane for tests and the demo.

etcd + kube-apiserver + kube-controller-manager + kube-scheduler built from source, and either
the machine's one real node (:mod:`tests.localcluster.realnode`: kubelet, containerd, CNI,
kube-proxy, CoreDNS, fake GPUs from a device plugin) or fake GPU nodes kept Ready by
:mod:`tests.localcluster.nodes` with a stand-in kubelet (:mod:`tests.localcluster.podrunner`)
that runs pods as local processes. See docs/testing.md.
"""

from tests.localcluster.cluster import LocalCluster, leftover_processes
from tests.localcluster.nodes import NodePool, load_pools

__all__ = ["LocalCluster", "NodePool", "leftover_processes", "load_pools"]
