"""A stand-in kubelet: runs pods bound to the fake nodes as local processes.

Test infrastructure, not product. For every pod bound to one of its nodes it materialises the
pod's volumes as local directories, builds the container environment, and runs each
container's command in a private mount (and UTS) namespace (`unshare -mu`) where the volumes,
a generated /etc/hosts and the termination-log file are bind-mounted at the pod's own paths.
It reports pod and container status through the API and honours deletion like a kubelet.
Limits (no images, no cgroups, no probes, no kubelet server, ...) are in docs/testing.md.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import logging
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch

from tests.localcluster.kube import SMP, Obj, is_status, now, raw

log = logging.getLogger("localcluster.podrunner")

POD_IP = "127.0.0.1"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The Docker reference grammar (distribution/reference), enough to refuse what a
# kubelet refuses with InvalidImageName.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
MAX_TERMINATION_MESSAGE = 4096


# --------------------------------------------------------------------------- image mapping


@dataclass
class ImageRule:
    """How to run containers whose image name contains `match` ('' matches everything)."""

    match: str
    pathPrepend: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    workingDir: str = ""


def default_image_rules() -> list[ImageRule]:
    """kubetune images run with the project venv's python first on PATH; others use the host."""
    venv_bin = str(Path(sys.executable).parent)
    py = {"PYTHONUNBUFFERED": "1"}
    return [
        ImageRule("kubetune-trainer", [venv_bin], py),
        ImageRule("kubetune", [venv_bin], py),
        ImageRule(""),
    ]


def load_image_rules(path: str | None = None) -> list[ImageRule]:
    """Rules from YAML (`images: [{match, pathPrepend, env, entrypoint, workingDir}]`).

    The file comes from `path` or $KUBETUNE_LOCALCLUSTER_IMAGES; `{venv}` in values expands to
    the project venv prefix. Without a file, :func:`default_image_rules` apply.
    """
    path = path or os.environ.get("KUBETUNE_LOCALCLUSTER_IMAGES")
    if not path:
        return default_image_rules()
    text = Path(path).read_text().replace("{venv}", sys.prefix)
    rules = [ImageRule(**r) for r in (yaml.safe_load(text) or {}).get("images", [])]
    return [*rules, ImageRule("")]


def rule_for(image: str, rules: list[ImageRule]) -> ImageRule:
    return next((r for r in rules if r.match in image), ImageRule(""))


# --------------------------------------------------------------------------- helpers

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: `$$` escapes, unknown references stay as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, s)


_SUFFIX = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "": 1,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}


def parse_quantity(q: str | int | float) -> float:
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?\d+)?)([a-zA-Z]*)", str(q).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"bad quantity {q!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def _field_path(pod: Obj, path: str) -> str:
    md = pod["metadata"]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((md.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": md.get("name"),
        "metadata.namespace": md.get("namespace"),
        "metadata.uid": md.get("uid"),
        "spec.nodeName": pod["spec"].get("nodeName"),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName"),
        "status.hostIP": POD_IP,
        "status.hostIPs": POD_IP,
        "status.podIP": POD_IP,
        "status.podIPs": POD_IP,
    }
    if path in simple:
        return str(simple[path] or "")
    if path in ("metadata.labels", "metadata.annotations"):
        kv = md.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(kv.items()))
    raise ValueError(f"unsupported fieldRef {path}")


def _resource_field(pod: Obj, container: Obj, ref: Obj) -> str:
    name = ref.get("containerName")
    if name:
        container = next(c for c in pod["spec"]["containers"] if c["name"] == name)
    kind, res = ref["resource"].split(".", 1)
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(res)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(res)
    if value is None:  # a kubelet reports node allocatable; our nodes are nominal
        value = {"cpu": "16", "memory": "64Gi", "ephemeral-storage": "500Gi"}.get(res, "0")
    v = parse_quantity(value) / parse_quantity(ref.get("divisor") or "1")
    return str(int(-(-v // 1)))  # ceiling, as the kubelet rounds up


# --------------------------------------------------------------------------- the runner


class PodRunner:
    """Watches pods bound to `nodes` and runs them; one :class:`PodWorker` thread per pod."""

    def __init__(
        self,
        api: client.ApiClient,
        nodes: list[str],
        state_dir: Path,
        apiserver_port: int,
        image_rules: list[ImageRule] | None = None,
        use_namespaces: bool | None = None,
        marker_env: dict[str, str] | None = None,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.nodes = set(nodes)
        self.state_dir = state_dir
        self.pods_dir = state_dir / "pods"
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.hosts_file = state_dir / "hosts"
        self.apiserver_port = apiserver_port
        self.image_rules = image_rules or load_image_rules()
        self.use_namespaces = namespaces_available() if use_namespaces is None else use_namespaces
        self.marker_env = marker_env or {}
        self.workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._hosts: dict[str, set[str]] = {}  # pod uid -> names
        self._write_hosts()

    # -- /etc/hosts shared by all pods: pod hostname[.subdomain.ns.svc[.cluster.local]]

    def _write_hosts(self) -> None:
        names = sorted({n for ns in self._hosts.values() for n in ns})
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"127.0.0.1\t{n}" for n in names]
        # Rewrite in place (not rename): pods bind-mount this inode as their /etc/hosts.
        with open(self.hosts_file, "a+") as f:
            f.seek(0)
            f.truncate()
            f.write("\n".join(lines) + "\n")

    def _register_hostnames(self, pod: Obj) -> None:
        md, spec = pod["metadata"], pod["spec"]
        ns = md["namespace"]
        host = spec.get("hostname") or md["name"]
        names = {host}
        if spec.get("subdomain"):
            fqdn = f"{host}.{spec['subdomain']}.{ns}.svc"
            names |= {f"{host}.{spec['subdomain']}", fqdn, f"{fqdn}.cluster.local"}
        with self._lock:
            if self._hosts.get(md["uid"]) != names:
                self._hosts[md["uid"]] = names
                self._write_hosts()

    def _forget_hostnames(self, uid: str) -> None:
        with self._lock:
            if self._hosts.pop(uid, None) is not None:
                self._write_hosts()

    # -- watch loop

    def run(self) -> None:
        """List+watch pods (relisting on expiry) until stop()."""
        while not self._stop.is_set():
            try:
                listing = raw(
                    self.core.list_pod_for_all_namespaces, field_selector="spec.nodeName!="
                )
                seen = set()
                for pod in listing["items"]:
                    seen.add(pod["metadata"]["uid"])
                    self._handle("ADDED", pod)
                for uid in set(self.workers) - seen:
                    self._handle("DELETED", self.workers[uid].pod)
                rv = listing["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    w = watch.Watch()
                    for ev in w.stream(
                        self.core.list_pod_for_all_namespaces,
                        field_selector="spec.nodeName!=",
                        resource_version=rv,
                        timeout_seconds=30,
                        allow_watch_bookmarks=True,
                        deserialize=False,
                    ):
                        obj = ev["object"]
                        rv = obj["metadata"]["resourceVersion"]
                        if ev["type"] != "BOOKMARK":
                            self._handle(ev["type"], obj)
                        if self._stop.is_set():
                            w.stop()
            except Exception as e:
                if self._stop.is_set():
                    break
                if not is_status(e, 410):
                    log.warning("pod watch failed (%s); relisting", e)
                time.sleep(0.5)

    def _handle(self, kind: str, pod: Obj) -> None:
        if pod["spec"].get("nodeName") not in self.nodes:
            return
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if kind == "DELETED":
            self._forget_hostnames(uid)
            if worker:  # force-deleted: kill now, off the watch thread
                threading.Thread(target=worker.kill, args=(0.0, False), daemon=True).start()
                self.workers.pop(uid, None)
            return
        if worker is None:
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                if pod["metadata"].get("deletionTimestamp"):
                    self._force_delete(pod)
                return  # finished before we (re)started: nothing to run
            if pod["metadata"].get("deletionTimestamp"):
                self._force_delete(pod)
                return
            self._register_hostnames(pod)
            worker = PodWorker(self, pod)
            self.workers[uid] = worker
            worker.start()
        else:
            worker.update(pod)

    def _force_delete(self, pod: Obj) -> None:
        md = pod["metadata"]
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": md["uid"]}}
        try:
            raw(self.core.delete_namespaced_pod, md["name"], md["namespace"], body=body)
        except Exception as e:
            if not is_status(e, 404, 409) and not self._stop.is_set():
                # Again until the API server takes it (it may be restarting): a pod left
                # terminating forever would hold its Job, and its FineTuneJob, for good.
                log.warning("deleting %s/%s: %s; retrying in 1 s", md["namespace"], md["name"], e)
                retry = threading.Timer(1.0, self._force_delete, args=(pod,))
                retry.daemon = True
                retry.start()

    def stop(self, grace: float = 2.0) -> None:
        """Stop watching and kill every pod process (used when the cluster goes down)."""
        self._stop.set()
        for w in list(self.workers.values()):
            w.kill(grace=grace, report=False)
        for w in list(self.workers.values()):
            w.join(grace + 3)


def namespaces_available() -> bool:
    """True when `unshare -mu` with bind mounts works here (root, no seccomp veto)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    r = subprocess.run(
        ["unshare", "-mu", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return r.returncode == 0


def _tops_with_submounts() -> set[str]:
    """Top-level dirs with mounts below them: an overlay there would hide those mounts."""
    tops = {"proc", "sys", "dev"}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            parts = line.split()[4].strip("/").split("/")
            if len(parts) >= 2:
                tops.add(parts[0])
    return tops


def sandbox_script(
    root: Path, hostname: str, mounts: list[tuple[str, Path, bool]], workdir: str
) -> str:
    """Shell run inside `unshare -mu`: build a private root, mount volumes, chroot, exec.

    The root is a tmpfs at `root` whose top-level entries mirror the host's "/" (recursive
    bind mounts, same symlinks), so the container sees the host's tools and the project venv.
    Mount points the pod needs that do not exist on the host are made without touching the
    host: a missing top-level dir (/scratch, /workspace) lives in the tmpfs, and a missing
    path inside an existing top-level dir (/etc/config, /var/run/secrets/...) is made in a
    private overlay over that dir. Only dirs with mounts below them (/dev, /proc, /sys; often
    /run) cannot be overlaid; there the missing mount point is created on the host.
    """
    q = shlex.quote
    r = str(root)
    targets = [(os.path.realpath(t), src, ro) for t, src, ro in mounts]
    wd = os.path.realpath(workdir) if workdir else ""
    busy = _tops_with_submounts()
    overlay = set()
    for t in [*(t for t, _, _ in targets), wd]:
        top = t.strip("/").split("/")[0]
        if t and not os.path.lexists(t) and os.path.isdir("/" + top) and top not in busy:
            overlay.add(top)
    lines = [
        "set -e",
        f"hostname {q(hostname)}",
        f"mount -t tmpfs -o mode=0755 localcluster-root {q(r)}",
    ]
    for name in sorted(os.listdir("/")):
        host, inner = "/" + name, q(f"{r}/{name}")
        if os.path.islink(host):
            lines.append(f"ln -s {q(os.readlink(host))} {inner}")
        elif os.path.isdir(host):
            lines.append(f"mkdir {inner}")
            if name in overlay:
                up, work = q(f"{r}/.localcluster/{name}/up"), q(f"{r}/.localcluster/{name}/work")
                lines.append(f"mkdir -p {up} {work}")
                opts = q(
                    f"lowerdir={host},upperdir={r}/.localcluster/{name}/up,"
                    f"workdir={r}/.localcluster/{name}/work"
                )
                lines.append(
                    f"mount -t overlay overlay -o {opts} {inner} || mount --rbind {q(host)} {inner}"
                )
            else:
                lines.append(f"mount --rbind {q(host)} {inner}")
        elif os.path.isfile(host):
            lines.append(f": > {inner} && mount --bind {q(host)} {inner}")
    for target, src, ro in sorted(targets, key=lambda m: m[0].count("/")):
        t = q(r + target)
        if src.is_dir():
            lines.append(f"mkdir -p {t}")
        else:
            lines.append(f'[ -e {t} ] || {{ mkdir -p "$(dirname {t})"; : > {t}; }}')
        lines.append(f"mount --bind {q(str(src))} {t}")
        if ro:
            lines.append(f"mount -o remount,bind,ro {t}")
    if wd:
        lines.append(f"mkdir -p {q(r + wd)}")
    inner_script = f'cd {q(workdir or "/")} && exec "$@"'
    lines.append(f'exec chroot {q(r)} /bin/sh -c {q(inner_script)} sh "$@"')
    return "\n".join(lines)


def pod_dir_name(pod: Obj) -> str:
    md = pod["metadata"]
    return f"{md['namespace']}_{md['name']}_{md['uid']}"


def read_logs(state_dir: str | Path, namespace: str, pod: str, container: str | None = None) -> str:
    """A container's log (the newest pod of that name); the only container when not named.

    This stands in for `kubectl logs`, which needs a kubelet server we do not have.
    """
    pods = sorted(
        Path(state_dir, "pods").glob(f"{namespace}_{pod}_*"), key=lambda p: p.stat().st_mtime
    )
    if not pods:
        raise FileNotFoundError(f"no pod {namespace}/{pod} ran here")
    logs = sorted((pods[-1] / "logs").glob("*.log"))
    if container is None:
        if len(logs) != 1:
            raise ValueError(f"pod has containers {[p.stem for p in logs]}: name one")
        return logs[0].read_text(errors="replace")
    return (pods[-1] / "logs" / f"{container}.log").read_text(errors="replace")


def serve_logs(state_dir: Path, port: int, cert: str, key: str) -> http.server.ThreadingHTTPServer:
    """A kubelet's /containerLogs endpoint on 127.0.0.1:port, so `kubectl logs` works through
    the API server. Read-only and unauthenticated (loopback only); no follow, exec or attach."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "containerLogs":
                self.send_error(404, "localcluster kubelet serves only /containerLogs")
                return
            try:
                text = read_logs(state_dir, parts[1], parts[2], parts[3])
            except (OSError, ValueError) as e:
                self.send_error(404, str(e))
                return
            q = urllib.parse.parse_qs(url.query)
            if "tailLines" in q:
                n = int(q["tailLines"][0])
                text = "".join(text.splitlines(keepends=True)[-n:] if n else [])
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    return server


class PodWorker(threading.Thread):
    """Runs one pod: volumes, init containers in order, then the containers; reports status."""

    def __init__(self, runner: PodRunner, pod: Obj) -> None:
        md = pod["metadata"]
        super().__init__(name=f"pod-{md['namespace']}/{md['name']}", daemon=True)
        self.runner = runner
        self.core = runner.core
        self.pod = pod
        self.dir = runner.pods_dir / pod_dir_name(pod)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed = threading.Event()
        self.main_done = threading.Event()  # stops sidecar init containers
        self.sidecars: dict[str, threading.Thread] = {}
        self._kill_lock = threading.Lock()
        self._status_lock = threading.Lock()
        self.statuses: dict[str, Obj] = {}
        self.init_statuses: dict[str, Obj] = {}
        self.start_time = now()
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.ready = False
        self.initialized = False

    # ---------------------------------------------------------------- events

    def update(self, pod: Obj) -> None:
        self.pod = pod
        self.runner._register_hostnames(pod)
        dt = pod["metadata"].get("deletionTimestamp")
        if dt and not self.killed.is_set():
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            threading.Thread(target=self.kill, args=(float(grace),), daemon=True).start()

    def kill(self, grace: float, report: bool = True) -> None:
        """SIGTERM the pod's processes, SIGKILL after `grace`, then finish the deletion."""
        with self._kill_lock:
            first = not self.killed.is_set()
            self.killed.set()
        if not first:
            return
        procs = list(self.procs.values())
        for p in procs:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.poll() is None:
                _signal_group(p, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
        if report:
            self.join(10)
            if self.pod["metadata"].get("deletionTimestamp"):
                self.runner._force_delete(self.pod)

    # ---------------------------------------------------------------- main

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:
            log.exception("pod %s failed in the runner", self.name)
            self.phase, self.reason, self.message = "Failed", "RunnerError", str(e)[:1000]
            self._report()

    def _run(self) -> None:
        spec = self.pod["spec"]
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        for c in spec.get("initContainers", []):
            self.init_statuses[c["name"]] = _waiting(c, "PodInitializing")
        for c in spec["containers"]:
            self.statuses[c["name"]] = _waiting(c, "ContainerCreating")
        self._report()
        volumes = self._prepare_volumes()
        if volumes is None:
            return
        restart = spec.get("restartPolicy", "Always")
        for c in spec.get("initContainers", []):
            if c.get("restartPolicy") == "Always":  # sidecar: started, not awaited
                t = threading.Thread(
                    target=self._loop, args=(c, volumes, "Always", True), daemon=True
                )
                self.sidecars[c["name"]] = t
                t.start()
                continue
            code = self._loop(c, volumes, "Never" if restart == "Never" else "OnFailure", True)
            if code != 0 or self.killed.is_set():
                if not self.killed.is_set():
                    self.phase, self.reason = "Failed", None
                self._finish()
                return
        self.initialized = True
        threads = [
            threading.Thread(target=self._loop, args=(c, volumes, restart, False), daemon=True)
            for c in spec["containers"]
        ]
        for t in threads:
            t.start()
        deadline = spec.get("activeDeadlineSeconds")
        t0 = time.monotonic()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)
            if deadline and time.monotonic() - t0 > deadline and not self.killed.is_set():
                self.reason, self.message = "DeadlineExceeded", "Pod was active too long"
                self.kill(grace=float(spec.get("terminationGracePeriodSeconds", 30)), report=False)
        self._stop_sidecars(float(spec.get("terminationGracePeriodSeconds", 30)))
        self._finish()

    def _stop_sidecars(self, grace: float) -> None:
        """Main containers are done: terminate sidecars, as the kubelet does."""
        self.main_done.set()
        procs = [self.procs[n] for n in self.sidecars if n in self.procs]
        for p in procs:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
        for t in self.sidecars.values():
            t.join(5)

    def _finish(self) -> None:
        codes = [
            st.get("state", {}).get("terminated", {}).get("exitCode")
            for name, st in [*self.init_statuses.items(), *self.statuses.items()]
            if name not in self.sidecars  # a sidecar's exit code does not decide the phase
        ]
        if self.reason == "DeadlineExceeded" or any(c not in (0, None) for c in codes):
            self.phase = "Failed"
        elif self.phase != "Failed":
            self.phase = "Succeeded"
        self.ready = False
        self._report()
        if self.killed.is_set() and self.pod["metadata"].get("deletionTimestamp"):
            self.runner._force_delete(self.pod)

    # ---------------------------------------------------------------- containers

    def _loop(self, c: Obj, volumes: dict[str, Path], restart: str, init: bool) -> int:
        """Run a container, restarting it per the restart policy; return the last exit code."""
        restarts, code = 0, -1
        while not self.killed.is_set():
            code = self._run_container(c, volumes, init, restarts)
            if restart == "Never" or (restart == "OnFailure" and code == 0):
                break
            if self.killed.is_set() or (init and self.main_done.is_set()):
                break
            restarts += 1
            self.killed.wait(min(10.0, 0.5 * 2**restarts))  # CrashLoopBackOff, shortened
        return code

    def _run_container(self, c: Obj, volumes: dict[str, Path], init: bool, restarts: int) -> int:
        statuses = self.init_statuses if init else self.statuses
        name = c["name"]
        log_path = self.dir / "logs" / f"{name}.log"
        term = self.dir / f"{name}.termination-log"
        term.write_bytes(b"")
        rule = rule_for(c.get("image", ""), self.runner.image_rules)
        image = c.get("image", "")
        if not IMAGE_REFERENCE.match(image):
            # What the kubelet reports for an unparsable reference; it never starts.
            statuses[name] = {
                **_base_status(c, restarts),
                "state": {
                    "waiting": {
                        "reason": "InvalidImageName",
                        "message": f'Failed to apply default image tag "{image}":'
                        f' couldn\'t parse image name "{image}": invalid reference format',
                    }
                },
                "ready": False,
                "started": False,
            }
            self._report()
            self.killed.wait()
            return 137
        while True:
            try:
                env = self._env(c)
                argv, script = self._command(c, env, volumes, term)
                args = self._argv(c, env, rule)
                break
            except Exception as e:
                # As a kubelet does: the container waits in CreateContainerConfigError
                # (e.g. a missing Secret or ConfigMap key) and is retried until the
                # reference resolves or the pod is deleted.
                log.warning("%s/%s: %s", self.name, name, e)
                statuses[name] = {
                    **_base_status(c, restarts),
                    "state": {
                        "waiting": {
                            "reason": "CreateContainerConfigError",
                            "message": str(e)[:1000],
                        }
                    },
                    "ready": False,
                    "started": False,
                }
                self._report()
                if self.killed.wait(3.0):
                    return 137
        cwd = self.dir / "rootfs-cwd"
        cwd.mkdir(exist_ok=True)
        with open(log_path, "ab") as logf:
            if self.killed.is_set():
                return 137
            proc = subprocess.Popen(
                [*argv, "/bin/sh", "-c", script, "sh", *args],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        self.procs[name] = proc
        started = now()
        statuses[name] = {
            **_base_status(c, restarts),
            "state": {"running": {"startedAt": started}},
            "ready": not init,
            "started": True,
            "containerID": f"localcluster://{proc.pid}",
        }
        if not init and all("running" in s["state"] for s in self.statuses.values()):
            self.phase, self.ready = "Running", True
        elif init:
            self.phase = "Pending"
        self._report()
        code = proc.wait()
        if code < 0:
            code = 128 - code  # killed by signal N -> 128+N, as a runtime reports it
        message = term.read_bytes()[:MAX_TERMINATION_MESSAGE].decode(errors="replace")
        if (
            not message
            and code != 0
            and c.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            message = _tail(log_path)
        terminated: Obj = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started,
            "finishedAt": now(),
            "containerID": f"localcluster://{proc.pid}",
        }
        if message:
            terminated["message"] = message
        statuses[name] = {
            **_base_status(c, restarts),
            "state": {"terminated": terminated},
            "ready": False,
            "started": False,
            "containerID": f"localcluster://{proc.pid}",
        }
        if not init:
            self.ready = False
        self._report()
        return code

    def _argv(self, c: Obj, env: dict[str, str], rule: ImageRule) -> list[str]:
        cmd = c.get("command") or rule.entrypoint
        if not cmd:
            raise ValueError(
                f"container {c['name']}: no command, and image {c.get('image')!r} "
                "has no entrypoint in the localcluster image mapping"
            )
        return [expand(a, env) for a in [*cmd, *(c.get("args") or [])]]

    def _command(
        self, c: Obj, env: dict[str, str], volumes: dict[str, Path], term: Path
    ) -> tuple[list[str], str]:
        """The namespace wrapper and the shell prologue that mounts volumes and cds."""
        spec = self.pod["spec"]
        rule = rule_for(c.get("image", ""), self.runner.image_rules)
        wd = c.get("workingDir") or rule.workingDir
        q = shlex.quote
        lines = ["set -e"]
        mounts: list[tuple[str, Path, bool]] = []
        for m in c.get("volumeMounts") or []:
            src = volumes[m["name"]]
            if m.get("subPath"):
                src = src / expand(m["subPath"], env)
                if not src.exists():
                    src.mkdir(parents=True)
            mounts.append((m["mountPath"], src, bool(m.get("readOnly"))))
        tpath = c.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        mounts.append((tpath, term, False))
        mounts.append(("/etc/hosts", self.runner.hosts_file, True))
        # The "image" is this checkout and its virtualenv: keep them visible even when the
        # pod mounts a volume over a parent (a clone under /tmp, with an emptyDir at /tmp).
        for host in (PROJECT_ROOT, Path(sys.prefix)):
            if not any(host.is_relative_to(Path(t)) for t, _, _ in mounts):
                continue
            mounts.append((str(host), host, True))
        if not self.runner.use_namespaces:
            # Path-mapping fallback: nothing is mounted; a process finds volumes through
            # LOCALCLUSTER_MOUNTS (JSON mountPath -> local dir). See docs/testing.md.
            env["LOCALCLUSTER_MOUNTS"] = json.dumps({t: str(s) for t, s, _ in mounts})
            if wd:
                lines.append(f"cd {q(wd)}")
            lines.append('exec "$@"')
            return [], "\n".join(lines)
        hostname = (spec.get("hostname") or self.pod["metadata"]["name"])[:63]
        root = self.dir / f"root-{c['name']}"
        root.mkdir(exist_ok=True)
        script = sandbox_script(root, hostname, mounts, wd)
        return ["unshare", "-mu", "--propagation", "private", "--"], script

    # ---------------------------------------------------------------- env

    def _env(self, c: Obj) -> dict[str, str]:
        pod = self.pod
        md, spec = pod["metadata"], pod["spec"]
        rule = rule_for(c.get("image", ""), self.runner.image_rules)
        port = str(self.runner.apiserver_port)
        host_path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        env: dict[str, str] = {
            "PATH": os.pathsep.join([*rule.pathPrepend, host_path]),
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "HOSTNAME": (spec.get("hostname") or md["name"])[:63],
            "KUBERNETES_SERVICE_HOST": POD_IP,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://{POD_IP}:{port}",
            **self.runner.marker_env,
            **rule.env,
        }
        ns = md["namespace"]
        for ef in c.get("envFrom") or []:
            prefix = ef.get("prefix", "")
            if "configMapRef" in ef:
                ref = ef["configMapRef"]
                data = self._configmap(ns, ref["name"], ref.get("optional", False))
            else:
                ref = ef["secretRef"]
                data = self._secret(ns, ref["name"], ref.get("optional", False))
            for k, v in (data or {}).items():
                env[prefix + k] = v.decode(errors="replace") if isinstance(v, bytes) else v
        for e in c.get("env") or []:
            if "valueFrom" not in e:
                env[e["name"]] = expand(e.get("value", ""), env)
                continue
            vf = e["valueFrom"]
            value: str | None
            if "fieldRef" in vf:
                value = _field_path(pod, vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                value = _resource_field(pod, c, vf["resourceFieldRef"])
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                cm = self._configmap(ns, ref["name"], ref.get("optional", False)) or {}
                value = cm.get(ref["key"])
                if value is None and not ref.get("optional"):
                    raise ValueError(f"couldn't find key {ref['key']} in ConfigMap {ref['name']}")
            elif "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                sec = self._secret(ns, ref["name"], ref.get("optional", False)) or {}
                b = sec.get(ref["key"])
                if b is None and not ref.get("optional"):
                    raise ValueError(f"couldn't find key {ref['key']} in Secret {ref['name']}")
                value = b.decode(errors="replace") if b is not None else None
            else:
                raise ValueError(f"unsupported valueFrom {vf}")
            if value is not None:
                env[e["name"]] = value
        return env

    def _configmap(self, ns: str, name: str, optional: bool) -> dict[str, Any] | None:
        try:
            cm = raw(self.core.read_namespaced_config_map, name, ns)
        except Exception as e:
            if optional and is_status(e, 404):
                return None
            raise ValueError(f"configmap {name!r} not found") from e
        out: dict[str, Any] = dict(cm.get("data") or {})
        out.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
        return out

    def _secret(self, ns: str, name: str, optional: bool) -> dict[str, bytes] | None:
        try:
            s = raw(self.core.read_namespaced_secret, name, ns)
        except Exception as e:
            if optional and is_status(e, 404):
                return None
            raise ValueError(f"secret {name!r} not found") from e
        return {k: base64.b64decode(v) for k, v in (s.get("data") or {}).items()}

    # ---------------------------------------------------------------- volumes

    def _prepare_volumes(self) -> dict[str, Path] | None:
        """Materialise volumes, retrying like a kubelet while references are missing."""
        deadline = time.monotonic() + 120
        while True:
            try:
                return self._volumes()
            except ValueError as e:
                if self.killed.is_set():
                    self._finish()
                    return None
                for c in self.pod["spec"]["containers"]:
                    self.statuses[c["name"]] = _waiting(c, "ContainerCreating", str(e))
                self.message = f"MountVolume failed: {e}"
                self._report()
                if time.monotonic() > deadline:
                    self.phase, self.reason = "Failed", "FailedMount"
                    self._report()
                    return None
                self.killed.wait(2)

    def _volumes(self) -> dict[str, Path]:
        out: dict[str, Path] = {}
        ns = self.pod["metadata"]["namespace"]
        for v in self.pod["spec"].get("volumes") or []:
            d = self.dir / "volumes" / v["name"]
            if "hostPath" in v:
                p = Path(v["hostPath"]["path"])
                if v["hostPath"].get("type") in ("DirectoryOrCreate", None, ""):
                    p.mkdir(parents=True, exist_ok=True)
                out[v["name"]] = p
                continue
            if "persistentVolumeClaim" in v:
                out[v["name"]] = self._pvc_path(ns, v["persistentVolumeClaim"]["claimName"])
                continue
            if "emptyDir" in v:
                d.mkdir(parents=True, exist_ok=True)
            elif "configMap" in v:
                src = v["configMap"]
                data = self._configmap(ns, src["name"], src.get("optional", False)) or {}
                _write_files(d, data, src.get("items"), src.get("defaultMode", 0o644))
            elif "secret" in v:
                src = v["secret"]
                sdata = self._secret(ns, src["secretName"], src.get("optional", False)) or {}
                _write_files(d, dict(sdata), src.get("items"), src.get("defaultMode", 0o644))
            elif "downwardAPI" in v:
                _write_files(d, self._downward(v["downwardAPI"]["items"]), None, 0o644)
            elif "projected" in v:
                _write_files(
                    d,
                    self._projected(v["projected"]),
                    None,
                    v["projected"].get("defaultMode", 0o644),
                )
            else:
                raise RuntimeError(f"unsupported volume {v['name']}: {sorted(v)}")
            out[v["name"]] = d
        return out

    def _pvc_path(self, ns: str, claim: str) -> Path:
        try:
            pvc = raw(self.core.read_namespaced_persistent_volume_claim, claim, ns)
        except Exception as e:
            raise ValueError(f"persistentvolumeclaim {claim!r} not found") from e
        pv_name = pvc.get("spec", {}).get("volumeName")
        if pv_name:
            pv = raw(self.core.read_persistent_volume, pv_name)
            host = pv["spec"].get("hostPath", {}).get("path")
            if host:
                Path(host).mkdir(parents=True, exist_ok=True)
                return Path(host)
        # Unbound or not a hostPath PV: a per-claim local directory.
        d = self.runner.state_dir / "pvc" / ns / claim
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _downward(self, items: list[Obj]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for it in items:
            if "fieldRef" in it:
                out[it["path"]] = _field_path(self.pod, it["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in it:
                ref = it["resourceFieldRef"]
                c = next(
                    x
                    for x in self.pod["spec"]["containers"]
                    if x["name"]
                    == ref.get("containerName", self.pod["spec"]["containers"][0]["name"])
                )
                out[it["path"]] = _resource_field(self.pod, c, ref)
        return out

    def _projected(self, proj: Obj) -> dict[str, Any]:
        md, spec = self.pod["metadata"], self.pod["spec"]
        ns = md["namespace"]
        out: dict[str, Any] = {}
        for src in proj.get("sources") or []:
            if "serviceAccountToken" in src:
                t = src["serviceAccountToken"]
                req: Obj = {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {
                        "expirationSeconds": t.get("expirationSeconds", 3607),
                        "boundObjectRef": {
                            "apiVersion": "v1",
                            "kind": "Pod",
                            "name": md["name"],
                            "uid": md["uid"],
                        },
                    },
                }
                if t.get("audience"):
                    req["spec"]["audiences"] = [t["audience"]]
                resp = raw(
                    self.core.create_namespaced_service_account_token,
                    spec.get("serviceAccountName") or "default",
                    ns,
                    req,
                )
                out[t["path"]] = resp["status"]["token"]
            elif "configMap" in src:
                s = src["configMap"]
                data = self._configmap(ns, s["name"], s.get("optional", False)) or {}
                out.update(_select(data, s.get("items")))
            elif "secret" in src:
                s = src["secret"]
                sdata = self._secret(ns, s["name"], s.get("optional", False)) or {}
                out.update(_select(dict(sdata), s.get("items")))
            elif "downwardAPI" in src:
                out.update(self._downward(src["downwardAPI"].get("items") or []))
        return out

    # ---------------------------------------------------------------- status

    def _report(self) -> None:
        """Send the pod status as a kubelet's status manager would (strategic merge)."""
        if self.runner._stop.is_set() and not self.pod["metadata"].get("deletionTimestamp"):
            return  # cluster shutdown: the API server may already be gone
        with self._status_lock:
            ts = now()
            terminal = self.phase in ("Succeeded", "Failed")

            def cond(t: str, ok: bool, reason: str | None = None) -> Obj:
                c: Obj = {"type": t, "status": "True" if ok else "False", "lastTransitionTime": ts}
                if reason and not ok:
                    c["reason"] = reason
                return c

            not_ready = "PodCompleted" if terminal else "ContainersNotReady"
            status: Obj = {
                "phase": self.phase,
                "hostIP": POD_IP,
                "hostIPs": [{"ip": POD_IP}],
                "podIP": POD_IP,
                "podIPs": [{"ip": POD_IP}],
                "startTime": self.start_time,
                "conditions": [
                    cond("PodReadyToStartContainers", True),
                    cond(
                        "Initialized",
                        self.initialized or not self._init_pending(),
                        "ContainersNotInitialized",
                    ),
                    cond("ContainersReady", self.ready, not_ready),
                    cond("Ready", self.ready, not_ready),
                ],
                "containerStatuses": list(self.statuses.values()),
            }
            if self.init_statuses:
                status["initContainerStatuses"] = list(self.init_statuses.values())
            if self.reason:
                status["reason"] = self.reason
            if self.message:
                status["message"] = self.message
            md = self.pod["metadata"]
            try:
                raw(
                    self.core.patch_namespaced_pod_status,
                    md["name"],
                    md["namespace"],
                    {"status": status},
                    _content_type=SMP,
                )
            except Exception as e:
                if not is_status(e, 404):
                    # As a kubelet's status manager does, send it again until the API server
                    # takes it: a pod whose exit is never reported would leave its Job
                    # running forever after an API server restart (the chaos test).
                    log.warning("status of %s: %s; retrying in 1 s", self.name, e)
                    retry = threading.Timer(1.0, self._report)
                    retry.daemon = True
                    retry.start()

    def _init_pending(self) -> bool:
        return any(
            s.get("state", {}).get("terminated", {}).get("exitCode") != 0
            for s in self.init_statuses.values()
        )


def _base_status(c: Obj, restarts: int) -> Obj:
    image = c.get("image", "")
    return {
        "name": c["name"],
        "image": image,
        "imageID": f"localcluster://{image}",
        "restartCount": restarts,
    }


def _waiting(c: Obj, reason: str, message: str | None = None) -> Obj:
    w: Obj = {"reason": reason}
    if message:
        w["message"] = message[:1000]
    return {**_base_status(c, 0), "state": {"waiting": w}, "ready": False, "started": False}


def _select(data: dict[str, Any], items: list[Obj] | None) -> dict[str, Any]:
    if not items:
        return data
    return {str(it.get("path") or it["key"]): data[it["key"]] for it in items if it["key"] in data}


def _write_files(d: Path, data: dict[str, Any], items: list[Obj] | None, mode: int) -> None:
    """Write a volume's files (fresh each time, as the kubelet's atomic writer would)."""
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for rel, value in _select(data, items).items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(value if isinstance(value, bytes) else str(value).encode())
        p.chmod(mode)


def _tail(path: Path, lines: int = 80, limit: int = 2048) -> str:
    with contextlib.suppress(OSError):
        text = path.read_bytes()[-limit:].decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])
    return ""


def _signal_group(p: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, sig)
