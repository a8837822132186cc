"""A real Kubernetes node for the local cluster: kubelet, containerd 1.6 + runc, a CNI bridge
with host-local IPAM, kube-proxy, CoreDNS and a fake-GPU device plugin, all built or installed
by hack/build-k8s.sh (`node`) and cached by version.

Everything the node changes stays in namespaces of its own, so it leaves the machine as it
found it and cannot disturb the host or other local clusters:

* **network**: the node's processes run in a fresh network namespace joined to the host by one
  veth pair (host `10.213.0.1/30`, node `10.213.0.2/30`). The pod bridge, pod routes, the
  iptables rules of the kubelet, kube-proxy and the CNI plugins, and the per-namespace sysctls
  (`ip_forward`, `bridge-nf-call-iptables`, `route_localnet`) all live there and vanish with
  it. The namespace has no default route and the host does not forward, so pod traffic stays
  inside the machine: pods reach each other, Services (kube-proxy), cluster DNS (CoreDNS) and
  the API server, which binds the host end of the veth.
* **mounts**: they also run in a private mount namespace (a slave of the host's) with a tmpfs
  on /run and private /var/log and /var/lib, so container root filesystems, volume tmpfs,
  netns pins, runc state and container logs never appear on the host and are gone when the
  last node process is.
* **processes**: the node's processes are in the cgroup /kubetune-node (every hierarchy); the
  kubelet's `cgroupRoot` is the same, so pod containers are below it too. Stopping kills
  everything in that cgroup and removes it.
* **global sysctls**: the kubelet sets six (`vm.overcommit_memory`, `kernel.panic`, ...);
  their values are recorded before it starts and restored after it stops.

One real node runs on a machine at a time: `NodeLock` is a `flock` on
`$KUBETUNE_CACHE/realnode.lock`, held by the node's processes themselves, so it is released
however they end. Images live in a containerd store under `$KUBETUNE_CACHE`, kept between runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.localcluster.build import REPO_ROOT, cache_dir, ensure_node_binaries
from tests.localcluster.certs import Pki, issue_client_cert
from tests.localcluster.kube import raw
from tests.localcluster.nodes import NodePool, gfd_labels, load_pools
from tests.localcluster.ociarchive import write_image_archive
from tests.localcluster.procs import alive, die_with_parent, spawn, terminate, wait_until

HOST_IP = "10.213.0.1"
NODE_IP = "10.213.0.2"
LINK_PREFIX = 30
HOST_VETH = "kt-node0"
POD_CIDR = "10.214.0.0/24"
CLUSTER_DNS = "10.96.0.10"
NODE_NAME = "realnode-0"
CGROUP = "kubetune-node"
CGROUP_FS = Path("/sys/fs/cgroup")
POOLS = Path(__file__).with_name("realnode-pools.yaml")
IMAGES_SCRIPT = REPO_ROOT / "hack" / "build-images.sh"
# What the kubelet sets on the host at start (pkg/kubelet/cm: setupKernelTunables).
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
START_TIMEOUT = 180.0


def coredns_version() -> str:
    """The CoreDNS release hack/nodeaddons builds (its go.mod is the one place it is pinned)."""
    gomod = (REPO_ROOT / "hack" / "nodeaddons" / "go.mod").read_text()
    match = re.search(r"github.com/coredns/coredns (v\S+)", gomod)
    assert match, "hack/nodeaddons/go.mod does not require CoreDNS"
    return match.group(1)


def _run(*argv: str, check: bool = True, input: str | None = None) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, input=input, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


# --------------------------------------------------------------------------- cgroups
def _unified() -> bool:
    """A cgroup v2-only machine (this project is tested on v1 hybrid machines like this one)."""
    return (CGROUP_FS / "cgroup.controllers").exists()


def _hierarchies() -> list[Path]:
    """The mounted cgroup hierarchies: v1's (cpu, memory, pids, name=systemd, ...) and, on a
    hybrid machine, the v2 one at /sys/fs/cgroup/unified (runc creates its cgroups there too);
    on a v2-only machine, the one tree."""
    if _unified():
        return [CGROUP_FS]
    return sorted(
        p
        for p in CGROUP_FS.iterdir()
        if p.is_dir() and not p.is_symlink() and (p / "cgroup.procs").exists()
    )


def _pids_tree() -> Path:
    """Where the node's processes are listed and joined: the pids hierarchy (or v2's tree)."""
    return CGROUP_FS if _unified() else CGROUP_FS / "pids"


def _make_cgroup(rel: str) -> None:
    for h in _hierarchies():
        path = h
        for part in rel.strip("/").split("/"):
            parent, path = path, path / part
            if not path.is_dir():
                path.mkdir()
                # A new cpuset cgroup has no CPUs or memory nodes until given its parent's.
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if (path / f).exists() and not (path / f).read_text().strip():
                        (path / f).write_text((parent / f).read_text())


def cgroup_pids(rel: str = CGROUP) -> list[int]:
    """Every process in the cgroup subtree `rel` (read from the pids hierarchy)."""
    root = _pids_tree() / rel
    pids: list[int] = []
    if root.is_dir():
        for procs in root.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids += [int(p) for p in procs.read_text().split()]
    return [p for p in pids if alive(p)]


def _remove_cgroup(rel: str) -> list[str]:
    """rmdir the subtree in every hierarchy, deepest first; returns what could not go."""
    left = []
    for h in _hierarchies():
        top = h / rel
        if not top.is_dir():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        try:
            top.rmdir()
        except OSError:
            left.append(str(top))
    return left


def _kill_cgroup(rel: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        pids = cgroup_pids(rel)
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


# --------------------------------------------------------------------------- sysctls
def read_sysctls(keys: tuple[str, ...] = KUBELET_SYSCTLS) -> dict[str, str]:
    out = {}
    for key in keys:
        with contextlib.suppress(OSError):
            out[key] = (Path("/proc/sys") / key).read_text().strip()
    return out


def restore_sysctls(saved: dict[str, str]) -> None:
    for key, value in saved.items():
        path = Path("/proc/sys") / key
        with contextlib.suppress(OSError):
            if path.read_text().strip() != value:
                path.write_text(value)


# --------------------------------------------------------------------------- the machine
# Host paths a node must not leave behind: the defaults of the kubelet, containerd, CNI and
# kube-proxy, which the node's configuration and private mounts redirect.
HOST_PATHS = (
    "/run/netns",
    "/run/containerd",
    "/var/run/netns",
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/lib/cni",
    "/var/log/pods",
    "/var/log/containers",
    "/etc/cni",
    "/opt/cni",
    "/opt/containerd",
    "/run/xtables.lock",
)


def machine_snapshot() -> dict[str, str]:
    """What a real node could change on the host and must put back: global sysctls, the host
    network namespace's links, routes, sysctls and iptables, mounts, cgroups, processes in
    the node's cgroup, and the daemons' default paths."""
    snap = {f"sysctl {k}": v for k, v in read_sysctls().items()}
    host_net = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables")
    snap.update({f"sysctl {k}": v for k, v in read_sysctls(host_net).items()})
    snap["links"] = " ".join(
        sorted(line.split(":")[1].strip().split("@")[0] for line in _ip("-o", "link").splitlines())
    )
    snap["routes"] = _ip("route").strip()
    with contextlib.suppress(FileNotFoundError):
        rules = _run("iptables-save", check=False)
        snap["iptables"] = "\n".join(r for r in rules.splitlines() if not r.startswith("#"))
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    snap["mounts"] = "\n".join(
        sorted(m.split(" - ")[0].split(" ", 4)[4] for m in mounts if _ours(m))
    )
    snap["cgroups"] = " ".join(str(h / CGROUP) for h in _hierarchies() if (h / CGROUP).exists())
    snap["node processes"] = " ".join(map(str, cgroup_pids(CGROUP)))
    snap["paths"] = " ".join(p for p in HOST_PATHS if os.path.lexists(p))
    return snap


def _ip(*args: str) -> str:
    return _run("ip", *args, check=False)


def _ours(mountinfo_line: str) -> bool:
    return any(k in mountinfo_line for k in ("kubetune", "containerd", "kubelet", "netns", "cni"))


# --------------------------------------------------------------------------- the lock
class NodeLock:
    """The machine-wide lock for the one real node, and a note of who holds it.

    The flock is on an open file that the node's processes inherit, so it is released when the
    last of them ends, even if the Python process that started them is long gone (`up`) or
    crashed. The note (`realnode.json`) names the holder and carries what a crashed holder
    left to undo (the sysctls it changed).
    """

    def __init__(self) -> None:
        self.path = cache_dir() / "realnode.lock"
        self.note = cache_dir() / "realnode.json"
        self.fd: int | None = None

    def holder(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(self.note.read_text()))
        return {}

    def acquire(
        self,
        owner: dict[str, Any],
        timeout: float,
        fail_if_detached: bool = False,
        say: Callable[[str], None] | None = None,
    ) -> int:
        """Block until the lock is free (at most `timeout` s); then undo what a holder that
        died without stopping left behind, and write `owner` as the note."""
        cache_dir().mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        next_note = 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                held = self.holder()
                where = f"the local cluster in {held.get('dir', '?')}"
                if fail_if_detached and held.get("detached"):
                    os.close(fd)
                    raise RuntimeError(
                        f"the machine's one real node is held by {where}, a long-lived cluster"
                        " (`make demo-down` or `python -m tests.localcluster down --name "
                        f"{held.get('name', 'demo')}` frees it)"
                    ) from None
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise TimeoutError(
                        f"the machine's one real node is still held by {where}"
                    ) from None
                if say and time.monotonic() >= next_note:
                    say(f"waiting for the machine's one real node, held by {where}")
                    next_note = time.monotonic() + 60
                time.sleep(1)
        stale = self.holder()
        if stale:  # its holder ended without stopping cleanly: undo what it left
            restore_sysctls(stale.get("sysctls") or {})
            _kill_cgroup(CGROUP)
            _remove_cgroup(CGROUP)
        self.fd = fd
        self.write(owner)
        return fd

    def write(self, owner: dict[str, Any]) -> None:
        self.note.write_text(json.dumps(owner))

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.note.unlink()
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------- the node
class RealNode:
    """One real node: call `network_up()` before the API server starts (it binds the host
    end of the node's veth), `start()` once the control plane serves, `stop()` at the end.

    `gpus` fake GPUs are advertised as `nvidia.com/gpu` by the device plugin, and the node
    gets the GPU Feature Discovery labels of the first pool in `pools` (one node stands in for
    that pool). `images=True` builds the operator and trainer images (hack/build-images.sh)
    and hands any that changed to the node's containerd.
    """

    def __init__(
        self,
        cluster_dir: Path,
        marker: dict[str, str],
        pools: str | Path | None = None,
        gpus: int = 2,
        images: bool = True,
        detached: bool = False,
        name: str = "",
        on_lock: Callable[[], None] | None = None,
    ) -> None:
        self.dir = cluster_dir / "node"
        self.cluster_dir = cluster_dir
        self.marker = marker
        self.pool: NodePool = load_pools(pools or POOLS)[0]
        self.gpus = gpus
        self.images = images
        self.detached = detached
        self.name = name
        self.lock = NodeLock()
        self.on_lock = on_lock
        self.pids: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.sysctls: dict[str, str] = {}
        self.bin_dir = Path()
        self.addons_dir = Path()
        self.store = cache_dir() / "containerd-node"

    # ------------------------------------------------------------------ paths
    @property
    def containerd_sock(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet"

    def log(self, name: str) -> Path:
        return self.cluster_dir / "logs" / f"{name}.log"

    # ------------------------------------------------------------------ state (attach)
    def state(self) -> dict[str, Any]:
        return {"pids": self.pids, "sysctls": self.sysctls}

    @classmethod
    def attach(cls, cluster_dir: Path, marker: dict[str, str], state: dict[str, Any]) -> RealNode:
        node = cls(cluster_dir, marker, images=False, detached=True)
        node.pids = {k: int(v) for k, v in state.get("pids", {}).items()}
        node.sysctls = dict(state.get("sysctls") or {})
        return node

    # ------------------------------------------------------------------ start
    def network_up(self, lock_timeout: float, say: Callable[[str], None]) -> None:
        """Take the machine's real-node lock, build what is missing, and make the node's
        network and mount namespaces joined to the host by the veth pair."""
        self.lock.acquire(
            {
                "dir": str(self.cluster_dir),
                "name": self.name,
                "detached": self.detached,
                "pid": os.getpid(),
                "since": time.time(),
            },
            lock_timeout,
            fail_if_detached=not self.detached,
            say=say,
        )
        if self.on_lock:  # e.g. the tests' snapshot of the machine, taken once no other node runs
            self.on_lock()
        self.bin_dir, self.addons_dir = ensure_node_binaries()
        for sub in ("var-log", "var-lib", "cni", "cni-ipam", "containerd-state", "opt"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        _remove_cgroup(CGROUP)
        _make_cgroup(f"{CGROUP}/node")
        # The holder of the namespaces: every node process joins them with nsenter.
        self._spawn(
            "netns-holder",
            ["unshare", "--net", "--mount", "--propagation", "slave", "--", "sleep", "infinity"],
            enter=False,
        )
        holder = self.pids["netns-holder"]
        deadline = time.monotonic() + 10
        own = os.readlink("/proc/self/ns/net")
        while os.readlink(f"/proc/{holder}/ns/net") == own:
            if time.monotonic() > deadline:
                raise RuntimeError("unshare did not make the node's network namespace")
            time.sleep(0.05)
        _run("ip", "link", "del", HOST_VETH, check=False)  # from a crashed earlier node
        _run(
            "ip",
            "link",
            "add",
            HOST_VETH,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            str(holder),
        )
        _run("ip", "addr", "add", f"{HOST_IP}/{LINK_PREFIX}", "dev", HOST_VETH)
        _run("ip", "link", "set", HOST_VETH, "up")
        inside = f"""
set -e
ip link set lo up
ip addr add {NODE_IP}/{LINK_PREFIX} dev eth0
ip link set eth0 up
# Per network namespace: Service traffic between pods on the bridge goes through iptables.
sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
sysctl -qw net.ipv4.ip_forward=1
mount -t tmpfs -o mode=0755 kubetune-node-run /run
mount --bind {self.dir / "var-log"} /var/log
mount --bind {self.dir / "var-lib"} /var/lib
"""
        _run("nsenter", f"--target={holder}", "--net", "--mount", "--", "sh", "-c", inside)

    def start(self, pki: Pki, server: str, say: Callable[[str], None]) -> None:
        """Start containerd, load the images, then the kubelet, the device plugin,
        kube-proxy and CoreDNS; return once the node is Ready with its GPUs and DNS serves."""
        self._write_configs(pki, server)
        self._spawn("containerd", ["containerd", "--config", str(self.dir / "containerd.toml")])
        self._wait("containerd", lambda: self._ctr("version", check=False) != "", 60)
        self._clear_old_containers()
        self._import_node_images()
        if self.images:
            self.build_and_import_images(say)
        self.sysctls = read_sysctls()
        self.lock.write({**self.lock.holder(), "sysctls": self.sysctls})
        self._spawn(
            "kubelet",
            [
                str(self.bin_dir / "kubelet"),
                f"--config={self.dir / 'kubelet.yaml'}",
                f"--kubeconfig={self.dir / 'kubelet.kubeconfig'}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.dir / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                f"--node-labels={','.join(f'{k}={v}' for k, v in self.labels().items())}",
                "--v=1",
            ],
        )
        # The device plugin directory is fixed (/var/lib/kubelet/device-plugins, whatever the
        # root dir); in the node's mount namespace /var/lib is the node's own var-lib.
        plugins = self.dir / "var-lib" / "kubelet" / "device-plugins" / "kubelet.sock"
        self._wait("the kubelet's device plugin socket", plugins.exists, 60)
        self._spawn(
            "fakegpu",
            [
                str(self.addons_dir / "fakegpu"),
                "--dir=/var/lib/kubelet/device-plugins",
                f"--count={self.gpus}",
            ],
        )
        self._spawn(
            "kube-proxy",
            [str(self.bin_dir / "kube-proxy"), f"--config={self.dir / 'kube-proxy.yaml'}"],
        )

    def wait_ready(self, api: client.ApiClient) -> None:
        """The node Ready with its GPUs allocatable, then cluster DNS deployed and available."""
        core = client.CoreV1Api(api)

        def node_ok() -> bool:
            node = raw(core.read_node, NODE_NAME)
            conds = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            gpus = node["status"].get("allocatable", {}).get("nvidia.com/gpu")
            return conds.get("Ready") == "True" and gpus == str(self.gpus)

        self._wait(
            f"node {NODE_NAME} Ready with {self.gpus} nvidia.com/gpu", node_ok, START_TIMEOUT
        )
        self._deploy_coredns(api)
        apps = client.AppsV1Api(api)

        def dns_ok() -> bool:
            dep = raw(apps.read_namespaced_deployment, "coredns", "kube-system")
            return int(dep.get("status", {}).get("availableReplicas") or 0) >= 1

        self._wait("CoreDNS available", dns_ok, START_TIMEOUT)

    def labels(self) -> dict[str, str]:
        """What GPU Feature Discovery and the pool's selector put on a node of the pool."""
        return {
            **gfd_labels(self.pool, self.gpus),
            **self.pool.nodeSelector,
            "localcluster.kubetune.io/pool": self.pool.name,
            "node.kubernetes.io/instance-type": f"localcluster-{self.pool.name}-real",
        }

    # ------------------------------------------------------------------ images
    def build_and_import_images(self, say: Callable[[str], None]) -> list[str]:
        """Build the operator and trainer images (cached: seconds when nothing changed) and
        hand those whose ID changed to the node's containerd."""
        say(
            "building the operator and trainer images (hack/build-images.sh: cached, a few"
            " seconds when nothing changed; a cold build takes 10-20 min)"
        )
        env = {
            **os.environ,
            "KUBETUNE_IMPORT_ADDRESS": str(self.containerd_sock),
            "KUBETUNE_IMPORT_STATE": str(self.store / "imported"),
        }
        with open(self.log("build-images"), "ab") as logf:
            r = subprocess.run(
                [str(IMAGES_SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=logf, check=False
            )
        if r.returncode != 0:
            raise RuntimeError(
                f"hack/build-images.sh failed; log: {self.log('build-images')}\n"
                + self.log("build-images").read_text()[-3000:]
            )
        return r.stdout.decode().split()

    def pause_image(self) -> str:
        version = (self.bin_dir.parent / "pause-version").read_text().strip()
        return f"registry.k8s.io/pause:{version}"

    def coredns_image(self) -> str:
        return f"kubetune.local/coredns:{coredns_version()}"

    def _import_node_images(self) -> None:
        """The pause and CoreDNS images: one static binary each, archived here, imported
        when containerd lacks them."""
        wanted = {
            self.pause_image(): (
                {"/pause": (self.bin_dir / "pause", 0o755)},
                {"Entrypoint": ["/pause"], "User": "65535:65535"},
            ),
            self.coredns_image(): (
                {"/coredns": (self.addons_dir / "coredns", 0o755)},
                {"Entrypoint": ["/coredns"], "User": "65532:65532"},
            ),
        }
        have = set(self._ctr("images", "ls", "-q").split())
        for ref, (files, config) in wanted.items():
            if ref in have:
                continue
            archive = self.dir / f"{ref.replace('/', '_').replace(':', '_')}.tar"
            write_image_archive(archive, ref, files, config)
            self._ctr("images", "import", str(archive))
            archive.unlink()

    def _clear_old_containers(self) -> None:
        """Containers an earlier node left in the kept store (it was killed, not stopped)."""
        for task in self._ctr("tasks", "ls", "-q", check=False).split():
            self._ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
            self._ctr("tasks", "rm", "-f", task, check=False)
        ids = self._ctr("containers", "ls", "-q", check=False).split()
        if ids:
            self._ctr("containers", "rm", *ids, check=False)

    def _ctr(self, *args: str, check: bool = True) -> str:
        return _run("ctr", "-a", str(self.containerd_sock), "-n", "k8s.io", *args, check=check)

    # ------------------------------------------------------------------ configs
    def _write_configs(self, pki: Pki, server: str) -> None:
        d = self.dir
        self.store.mkdir(parents=True, exist_ok=True)
        (d / "containerd.toml").write_text(
            f"""version = 2
root = "{self.store / "root"}"
state = "{d / "containerd-state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.containerd_sock}"
[ttrpc]
  address = "{self.containerd_sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.pause_image()}"
  # The machine's root lacks CAP_SYS_RESOURCE: never lower a process's oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d / "cni"}"
    max_conf_num = 1
"""
        )
        (d / "cni" / "10-kubetune.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "kubetune",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "kt0",
                            "isGateway": True,
                            "ipMasq": True,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(d / "cni-ipam"),
                            },
                        }
                    ],
                },
                indent=2,
            )
        )
        for name, subject in (
            ("kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}"),
            ("kube-proxy", "/CN=system:kube-proxy"),
        ):
            cert, key = issue_client_cert(pki, name, subject)
            kubeconfig(d / f"{name}.kubeconfig", server, pki.ca_crt, cert, key)
        (d / "resolv.conf").write_text("")  # pods get cluster DNS only; nothing leaves
        kubelet_cfg: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This machine: cgroup v1 (1.35 refuses it unless told), cgroupfs, swap allowed.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP}",
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_sock}",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki.ca_crt)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDomain": "cluster.local",
            "clusterDNS": [CLUSTER_DNS],
            "resolvConf": str(d / "resolv.conf"),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "staticPodPath": "",
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            # A shared development disk: never evict pods or collect images for disk usage.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.inodesFree": "1%",
            },
            "maxPods": 110,
            "shutdownGracePeriod": "0s",
        }
        (d / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_cfg, sort_keys=False))
        proxy_cfg = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(d / "kube-proxy.kubeconfig")},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # 0: leave the conntrack sysctls alone (some are global, not per namespace).
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        (d / "kube-proxy.yaml").write_text(yaml.safe_dump(proxy_cfg, sort_keys=False))

    def _deploy_coredns(self, api: client.ApiClient) -> None:
        docs = coredns_manifests(self.coredns_image())
        env = {**os.environ, "KUBECONFIG": str(self.cluster_dir / "kubeconfig")}
        subprocess.run(
            [str(self.bin_dir / "kubectl"), "apply", "--server-side", "-f", "-"],
            input=yaml.safe_dump_all(docs).encode(),
            env=env,
            capture_output=True,
            check=True,
        )

    # ------------------------------------------------------------------ processes
    def _spawn(self, name: str, argv: list[str], enter: bool = True) -> None:
        if enter:
            holder = self.pids["netns-holder"]
            argv = ["nsenter", f"--target={holder}", "--net", "--mount", "--", *argv]
        env = {**os.environ, **self.marker, "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '')}"}

        def preexec() -> None:
            # Join the node's cgroup (children inherit it), then die with the test process.
            (_pids_tree() / CGROUP / "node" / "cgroup.procs").write_text(str(os.getpid()))
            if not self.detached:
                die_with_parent()

        pass_fds = (self.lock.fd,) if self.lock.fd is not None else ()
        p = spawn(argv, self.log(name), env, self.dir, preexec, pass_fds)
        self.procs[name] = p
        self.pids[name] = p.pid

    def _wait(self, what: str, ok: Callable[[], bool], timeout: float) -> None:
        wait_until(what, ok, timeout, self.procs, self.log, every=0.5)

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Stop the kubelet, kill every container, stop the daemons, then undo the rest: the
        cgroups, the sysctls, the namespaces (they go with their last process) and the lock.
        A node that never got the machine's lock (another one runs) has nothing to stop."""
        if self.lock.fd is None and self.lock.holder().get("dir") != str(self.cluster_dir):
            return
        self._terminate("kubelet", 10)
        _kill_cgroup(f"{CGROUP}/kubepods")
        if self.pids.get("containerd") and alive(self.pids["containerd"]):
            with contextlib.suppress(Exception):
                self._clear_old_containers()
        for name in ("fakegpu", "kube-proxy", "containerd"):
            self._terminate(name, 10)
        _kill_cgroup(CGROUP)
        self._terminate("netns-holder", 5)
        self.pids.clear()
        self.procs.clear()
        left = _remove_cgroup(CGROUP)
        restore_sysctls(self.sysctls)
        if _run("ip", "link", "show", HOST_VETH, check=False):
            _run("ip", "link", "del", HOST_VETH, check=False)
        if not left:
            self.lock.release()
            with contextlib.suppress(OSError):
                if self.lock.holder().get("dir") == str(self.cluster_dir):
                    self.lock.note.unlink()

    def leftovers(self) -> list[int]:
        """Processes still in the node's cgroup (none once stopped)."""
        return cgroup_pids(CGROUP)

    def _terminate(self, name: str, timeout: float) -> None:
        pid = self.pids.get(name)
        if pid is not None:
            terminate(pid, self.procs.get(name), timeout)


def kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path) -> None:
    """A kubeconfig for one client certificate identity (files referenced, not embedded)."""
    kc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {"name": "user", "user": {"client-certificate": str(cert), "client-key": str(key)}}
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "user"}}],
        "current-context": "local",
    }
    path.write_text(yaml.safe_dump(kc))
    path.chmod(0o600)


COREFILE = """\
.:1053 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    cache 30
}
"""


def coredns_manifests(image: str) -> list[dict[str, Any]]:
    """Cluster DNS as kubeadm deploys it (ServiceAccount, RBAC, Corefile, Deployment and the
    kube-dns Service at the kubelet's clusterDNS address), without a `forward`: names outside
    the cluster get no answer, as nothing may leave the machine. It listens on 1053 so it
    needs no capability; the Service maps port 53 to it."""
    labels = {"k8s-app": "kube-dns"}
    ns = "kube-system"
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "coredns", "namespace": ns},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": ns}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": ns},
            "data": {"Corefile": COREFILE},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": ns, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "tolerations": [{"operator": "Exists"}],
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "coredns",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"name": "dns", "containerPort": 1053, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 1053, "protocol": "TCP"},
                                ],
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "70Mi"},
                                    "limits": {"memory": "170Mi"},
                                },
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": 8181},
                                    "periodSeconds": 2,
                                },
                                "livenessProbe": {
                                    "httpGet": {"path": "/health", "port": 8080},
                                    "initialDelaySeconds": 10,
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [
                                    {
                                        "name": "config",
                                        "mountPath": "/etc/coredns",
                                        "readOnly": True,
                                    }
                                ],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": ns, "labels": labels},
            "spec": {
                "clusterIP": CLUSTER_DNS,
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "targetPort": 1053, "protocol": "TCP"},
                ],
            },
        },
    ]
