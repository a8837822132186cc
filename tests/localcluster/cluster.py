"""Start and stop one local control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the fake-kubelet agent, on loopback, in one temporary directory; with
`real_node=True`, also a real node (kubelet + containerd, :mod:`tests.localcluster.realnode`).

Every process it starts (and every pod process the agent starts) carries
KUBETUNE_LOCALCLUSTER=<dir> in its environment, so `stop()` can sweep anything left and tests
can assert that nothing is (see :func:`leftover_processes`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.localcluster.build import K8S_VERSION, REPO_ROOT, ensure_k8s_binaries
from tests.localcluster.certs import Pki, make_pki
from tests.localcluster.kube import api_client, raw
from tests.localcluster.podrunner import read_logs
from tests.localcluster.procs import die_with_parent, spawn, terminate, wait_until
from tests.localcluster.realnode import HOST_IP, RealNode

MARKER = "KUBETUNE_LOCALCLUSTER"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
START_TIMEOUT = 120.0
# `LocalCluster(audit=True)`: every request's metadata (user, verb, resource, namespace, name,
# response code), never bodies; RequestReceived is dropped, each request is logged once
# ResponseComplete (watches also at ResponseStarted).
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
"""


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held together so they differ from each other)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def leftover_processes(cluster_dir: str | Path) -> list[int]:
    """PIDs of live processes started by the cluster rooted at `cluster_dir` (pods included)."""
    needle = f"{MARKER}={cluster_dir}".encode() + b"\0"
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            env = (p / "environ").read_bytes()
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in env + b"\0":
            pids.append(int(p.name))
    return pids


class PodRunnerHandle:
    """What tests see of the pod runner (which runs in the agent process): its files."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def logs(self, namespace: str, pod: str, container: str | None = None) -> str:
        """A container's log; `kubectl logs` cannot work without a kubelet server."""
        return read_logs(self.state_dir, namespace, pod, container)


class LocalCluster:
    """One local Kubernetes control plane with fake GPU nodes and the pod runner.

    `detached=True` keeps the processes alive after this Python process exits (for
    `python -m tests.localcluster up`); otherwise they die with it even on a crash.
    `audit=True` starts kube-apiserver with a Metadata-level audit log at :attr:`audit_log`
    (JSON lines, one `audit.k8s.io/v1` Event per request).

    `real_node=True` adds the machine's one real node (:class:`RealNode`: kubelet, containerd,
    CNI, kube-proxy, CoreDNS, fake GPUs) and, by default, no fake nodes: pass `pools`/`cpu_nodes`
    to have both. The API server then binds the host end of the node's veth
    (:data:`HOST_IP`) instead of loopback, so pods reach it. `real_node_pools` is the pools file
    whose first pool the node stands in for; `images` builds and loads the operator and trainer
    images; `node_lock_timeout` is how long to wait for another real node on the machine, and
    `on_node_lock` is called once the lock is held (before the node changes anything).
    """

    def __init__(
        self,
        dir: str | Path | None = None,
        pools: str | Path | None = None,
        cpu_nodes: int | None = None,
        images: str | Path | None = None,
        detached: bool = False,
        audit: bool = False,
        real_node: bool = False,
        real_node_pools: str | Path | None = None,
        real_node_images: bool = True,
        node_lock_timeout: float = 3600.0,
        name: str = "",
        on_node_lock: Callable[[], None] | None = None,
    ) -> None:
        self.dir = Path(dir) if dir else Path(tempfile.mkdtemp(prefix="kubetune-localcluster-"))
        self.pools = pools
        self.cpu_nodes = (0 if real_node else 1) if cpu_nodes is None else cpu_nodes
        self.node: RealNode | None = None
        self.say: Callable[[str], None] = lambda msg: None
        self.host = "127.0.0.1"
        self.node_lock_timeout = node_lock_timeout
        if real_node:
            self.node = RealNode(
                self.dir,
                {MARKER: str(self.dir)},
                pools=real_node_pools,
                images=real_node_images,
                detached=detached,
                name=name,
                on_lock=on_node_lock,
            )
            self.host = HOST_IP
            if pools is None:
                self.pools = Path(__file__).with_name("no-pools.yaml")
        self.images = images
        self.detached = detached
        self.audit = audit
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pids: dict[str, int] = {}
        self.argv: dict[str, list[str]] = {}
        self._ready_ctx: ssl.SSLContext | None = None
        self.bin_dir = Path()
        self.startup_seconds = 0.0
        self.apiserver_port = 0
        self.pod_runner = PodRunnerHandle(self.dir / "agent")

    # ------------------------------------------------------------------ public API

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        """The apiserver's audit log (written only when the cluster runs with `audit=True`)."""
        return self.dir / "logs" / "audit.log"

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.apiserver_port}"

    def api_client(self) -> client.ApiClient:
        """A fresh admin ApiClient (system:masters)."""
        return api_client(str(self.kubeconfig))

    def env(self) -> dict[str, str]:
        """Environment for tools run against this cluster (KUBECONFIG, kubectl on PATH)."""
        path = f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """Run kubectl against the cluster and return stdout (raises on failure if check)."""
        r = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ start

    def start(self, say: Callable[[str], None] | None = None) -> LocalCluster:
        """Start everything; `say` hears about long steps (waiting for the machine's real
        node, building images)."""
        self.say = say or (lambda msg: print(f"localcluster: {msg}", file=sys.stderr, flush=True))
        self.bin_dir = ensure_k8s_binaries()
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _start(self) -> None:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "logs").mkdir(exist_ok=True)
        if self.node is not None:  # the API server binds the node link's host end
            self.node.network_up(self.node_lock_timeout, self.say)
            self._save_state()
        pki = make_pki(d / "pki", extra_ips=(self.host,) if self.node else ())
        etcd_port, peer_port, api_port, kcm_port, sched_port, kubelet_port = _free_ports(6)
        self.apiserver_port = api_port
        self._write_kubeconfigs(pki)
        # etcd's data lives in memory (tmpfs) when it can: fsync on a busy disk is the slowest
        # part of a small cluster and the data is throwaway.
        shm = Path("/dev/shm")
        etcd_data = (
            Path(tempfile.mkdtemp(prefix="kubetune-etcd-", dir=shm)) if shm.is_dir() else d / "etcd"
        )
        (d / "etcd-data").write_text(str(etcd_data))
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=default",
                f"--data-dir={etcd_data}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--log-level=warn",
                "--logger=zap",
            ],
        )
        self._wait("etcd", lambda: self._http_ok(f"http://127.0.0.1:{etcd_port}/health"), 30)
        cert, key = pki.pair("apiserver")
        audit: list[str] = []
        if self.audit:
            (d / "audit-policy.yaml").write_text(AUDIT_POLICY)
            audit = [
                f"--audit-policy-file={d / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
            ]
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
                f"--secure-port={api_port}",
                f"--cert-dir={d / 'apiserver-certs'}",
                f"--tls-cert-file={cert}",
                f"--tls-private-key-file={key}",
                f"--client-ca-file={pki.ca_crt}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--authorization-mode=Node,RBAC",
                # The default plugin set (NamespaceLifecycle, LimitRanger, ServiceAccount,
                # PodSecurity, Priority, DefaultTolerationSeconds, ResourceQuota, webhooks, ...)
                # plus what kubeadm adds.
                "--enable-admission-plugins=NodeRestriction",
                "--service-cluster-ip-range=10.96.0.0/16",
                # Reach the fake kubelet (logs only) at the node's InternalIP, 127.0.0.1.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--kubelet-client-certificate={pki.pair('apiserver-kubelet-client')[0]}",
                f"--kubelet-client-key={pki.pair('apiserver-kubelet-client')[1]}",
                "--allow-privileged=true",
                "--profiling=false",
                *audit,
                "--v=0",
            ],
        )
        ctx = ssl.create_default_context(cafile=str(pki.ca_crt))
        ctx.load_cert_chain(*map(str, pki.pair("admin")))
        self._ready_ctx = ctx
        self._wait(
            "kube-apiserver", lambda: self._http_ok(f"{self.server}/readyz", ctx), START_TIMEOUT
        )
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                *self._component_auth("controller-manager"),
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={d / 'kcm-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_crt}",
                f"--cluster-signing-cert-file={pki.ca_crt}",
                f"--cluster-signing-key-file={pki.ca_key}",
                "--cluster-name=kubetune-local",
                "--v=0",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                *self._component_auth("scheduler"),
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--cert-dir={d / 'scheduler-certs'}",
                "--leader-elect=false",
                "--v=0",
            ],
        )
        agent = [
            sys.executable,
            "-m",
            "tests.localcluster.agent",
            f"--kubeconfig={self.kubeconfig}",
            f"--state-dir={d / 'agent'}",
            f"--apiserver-port={api_port}",
            f"--cpu-nodes={self.cpu_nodes}",
            f"--kubelet-version={K8S_VERSION}",
            f"--kubelet-port={kubelet_port}",
            f"--kubelet-cert={pki.pair('kubelet')[0]}",
            f"--kubelet-key={pki.pair('kubelet')[1]}",
            f"--marker={MARKER}={d}",
        ]
        if self.pools:
            agent.append(f"--pools={self.pools}")
        if self.images:
            agent.append(f"--images={self.images}")
        self._spawn("agent", agent, cwd=REPO_ROOT)
        self._save_state()
        if self.node is not None:
            self.node.start(pki, self.server, self.say)
            self._save_state()
        api = self.api_client()
        try:
            core = client.CoreV1Api(api)
            if self.node is not None:
                self.node.wait_ready(api)
            self._wait("nodes Ready", lambda: self._nodes_ready(core), START_TIMEOUT)
            self._wait(
                "controller-manager (default ServiceAccount)",
                lambda: bool(raw(core.list_namespaced_service_account, "default")["items"]),
                START_TIMEOUT,
            )
        finally:
            api.close()

    def restart_apiserver(self, down: float = 0.0) -> float:
        """SIGKILL kube-apiserver (as a crashed control-plane host), keep it down `down`
        seconds, start it again with the same flags and port, and return once /readyz
        answers; returns the seconds it was unreachable. etcd keeps the state, and every
        client (controllers, the pod runner, the operator) must reconnect on its own: the
        chaos test (tests/integration/chaos.py) checks that they do."""
        argv, ctx = self.argv.get("kube-apiserver"), self._ready_ctx
        if argv is None or ctx is None:
            raise RuntimeError("restart_apiserver needs a cluster started by this process")
        t0 = time.monotonic()
        proc = self.procs["kube-apiserver"]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        time.sleep(down)
        self._spawn("kube-apiserver", argv)
        self._save_state()
        self._wait(
            "kube-apiserver (restarted)",
            lambda: self._http_ok(f"{self.server}/readyz", ctx),
            START_TIMEOUT,
        )
        return time.monotonic() - t0

    def _component_auth(self, name: str) -> list[str]:
        kc = self.dir / f"{name}.kubeconfig"
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
        ]

    def _write_kubeconfigs(self, pki: Pki) -> None:
        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        for name, path in (
            ("admin", self.kubeconfig),
            ("controller-manager", self.dir / "controller-manager.kubeconfig"),
            ("scheduler", self.dir / "scheduler.kubeconfig"),
        ):
            cert, key = pki.pair(name)
            kc: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "kubetune-local",
                        "cluster": {
                            "server": self.server,
                            "certificate-authority-data": b64(pki.ca_crt),
                        },
                    }
                ],
                "users": [
                    {
                        "name": name,
                        "user": {
                            "client-certificate-data": b64(cert),
                            "client-key-data": b64(key),
                        },
                    }
                ],
                "contexts": [
                    {
                        "name": "kubetune-local",
                        "context": {"cluster": "kubetune-local", "user": name},
                    }
                ],
                "current-context": "kubetune-local",
            }
            path.write_text(yaml.safe_dump(kc))
            path.chmod(0o600)

    def _spawn(self, name: str, argv: list[str], cwd: Path | None = None) -> None:
        env = {**os.environ, MARKER: str(self.dir)}
        if name == "agent":
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])
            )
        p = spawn(
            argv,
            self.dir / "logs" / f"{name}.log",
            env,
            cwd or self.dir,
            None if self.detached else die_with_parent,
        )
        self.procs[name] = p
        self.pids[name] = p.pid
        self.argv[name] = argv

    def _wait(self, what: str, ok: Callable[[], bool], timeout: float) -> None:
        wait_until(
            f"{what} ({self.dir})",
            ok,
            timeout,
            self.procs,
            lambda name: self.dir / "logs" / f"{name}.log",
        )

    @staticmethod
    def _http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
        with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
            return bool(r.status == 200)

    @staticmethod
    def _nodes_ready(core: client.CoreV1Api) -> bool:
        nodes = raw(core.list_node)["items"]
        if not nodes:
            return False
        for n in nodes:
            conds = {c["type"]: c["status"] for c in n.get("status", {}).get("conditions", [])}
            taints = {t["key"] for t in n.get("spec", {}).get("taints") or []}
            if conds.get("Ready") != "True" or "node.kubernetes.io/not-ready" in taints:
                return False
        return True

    # ------------------------------------------------------------------ state (CLI)

    def _save_state(self) -> None:
        state: dict[str, Any] = {
            "pids": self.pids,
            "apiserver_port": self.apiserver_port,
            "bin_dir": str(self.bin_dir),
            "host": self.host,
        }
        if self.node is not None:
            state["node"] = self.node.state()
        (self.dir / "state.json").write_text(json.dumps(state))

    @classmethod
    def attach(cls, dir: str | Path) -> LocalCluster:
        """A handle on a running cluster started elsewhere (e.g. by `up`)."""
        c = cls(dir=dir, detached=True)
        state = json.loads((c.dir / "state.json").read_text())
        c.pids = {k: int(v) for k, v in state["pids"].items()}
        c.apiserver_port = state["apiserver_port"]
        c.bin_dir = Path(state["bin_dir"])
        c.host = state.get("host", "127.0.0.1")
        if "node" in state:
            c.node = RealNode.attach(c.dir, {MARKER: str(c.dir)}, state["node"])
        return c

    # ------------------------------------------------------------------ stop

    def stop(self, remove: bool = True) -> None:
        """Stop everything (the real node and the agent first, so they can kill pods) and
        sweep leftovers."""
        if self.node is not None:
            self.node.stop()
        order = ["agent", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]
        for name in order:
            pid = self.pids.get(name)
            if pid is None:
                continue
            self._terminate(name, pid, timeout=10 if name == "agent" else 5)
        for pid in leftover_processes(self.dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while leftover_processes(self.dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.pids.clear()
        self.procs.clear()
        if remove:
            with contextlib.suppress(OSError):
                etcd = Path((self.dir / "etcd-data").read_text())
                if etcd.is_relative_to("/dev/shm"):
                    shutil.rmtree(etcd, ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)

    def _terminate(self, name: str, pid: int, timeout: float) -> None:
        terminate(pid, self.procs.get(name), timeout)
