"""Locate (building on first use) the pinned Kubernetes binaries, etcd and helm.

The heavy lifting is in hack/build-k8s.sh so `make k8s-bins` and the fixtures share one
cached, version-keyed build under $KUBETUNE_CACHE; this module only calls it when a binary
is missing, so a warm machine pays nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-k8s.sh"
K8S_VERSION = os.environ.get("KUBETUNE_K8S_VERSION", "v1.35.4")
HELM_VERSION = os.environ.get("KUBETUNE_HELM_VERSION", "v3.22.0")
K8S_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


def cache_dir() -> Path:
    """The cache shared with the Makefile (KUBETUNE_CACHE, default ~/.cache/kubetune)."""
    return Path(os.environ.get("KUBETUNE_CACHE") or Path.home() / ".cache" / "kubetune")


def k8s_bin_dir() -> Path:
    return cache_dir() / f"k8s-{K8S_VERSION}" / "bin"


def helm_bin_dir() -> Path:
    return cache_dir() / f"helm-{HELM_VERSION}" / "bin"


def _run_build(what: str) -> None:
    env = {**os.environ, "KUBETUNE_K8S_VERSION": K8S_VERSION, "KUBETUNE_HELM_VERSION": HELM_VERSION}
    # stdout is just the bin dir; the build log goes to stderr so the user sees progress.
    subprocess.run([str(BUILD_SCRIPT), what], check=True, env=env, stdout=subprocess.DEVNULL)


def ensure_k8s_binaries() -> Path:
    """Return the bin dir holding etcd and the control-plane binaries, building if needed."""
    bin_dir = k8s_bin_dir()
    if not all(os.access(bin_dir / b, os.X_OK) for b in K8S_BINARIES):
        _run_build("k8s")
    return bin_dir


NODE_BINARIES = ("kubelet", "kube-proxy", "pause")


def ensure_node_binaries() -> tuple[Path, Path]:
    """(k8s bin dir with kubelet, kube-proxy and pause; node add-ons bin dir with coredns and
    fakegpu), building what is missing and installing containerd, runc and the CNI plugins.
    The script is always run: it is instant when everything is cached, and only it knows the
    add-ons' cache key (a hash of hack/nodeaddons)."""
    env = {**os.environ, "KUBETUNE_K8S_VERSION": K8S_VERSION}
    r = subprocess.run(
        [str(BUILD_SCRIPT), "node"], check=True, env=env, stdout=subprocess.PIPE, text=True
    )
    k8s_bin, addons_bin = r.stdout.split()
    return Path(k8s_bin), Path(addons_bin)


def ensure_helm() -> Path:
    """Return the path of the cached helm binary, building it if needed."""
    helm = helm_bin_dir() / "helm"
    if not os.access(helm, os.X_OK):
        _run_build("helm")
    return helm
