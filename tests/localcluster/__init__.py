"""A real local Kubernetes control plane for tests and the demo.

etcd + kube-apiserver + kube-controller-manager + kube-scheduler built from source, fake GPU
nodes kept Ready by :mod:`tests.localcluster.nodes`, and a stand-in kubelet
(:mod:`tests.localcluster.podrunner`) that runs pods as local processes. See docs/testing.md.
"""

from tests.localcluster.cluster import LocalCluster, leftover_processes
from tests.localcluster.nodes import NodePool, load_pools

__all__ = ["LocalCluster", "NodePool", "leftover_processes", "load_pools"]
