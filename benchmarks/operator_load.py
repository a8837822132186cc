"""Operator load test: N FineTuneJobs and, as the yardstick, N plain batch/v1 Jobs applied
at the same moment against the local control plane.

It starts its own local cluster (tests/localcluster, its fake GPU nodes; not kwok) whose
pod runner maps the image `bench/noop-trainer` to a fake `python` that writes a valid
termination summary and exits 0, so every trainer that gets a GPU finishes at once. It
then starts the operator (`python -m kubetune.operator` through the integration harness,
with the production defaults for intervals), applies N small LoRA jobs and N plain Jobs
(in namespace `load-ref`, which the operator does not watch) from one thread pool behind
one barrier, and measures:

- kubetune: apply -> trainer Job, and apply -> trainer pod: the client's clock when the
  create call returned, to when a watch delivered the Job's (pod's) ADDED event;
- the reference, Kubernetes' own Job controller: plain Job create returned -> its pod's
  ADDED event, by the same clocks (the pods stay Pending on a node selector no node has,
  so nothing runs them); the headline ratio is kubetune's apply -> Job p99 over this p99;
- creationTimestamps (1 s resolution) as a cross-check of both;
- the operator's API requests, counted inside the operator process by
  `benchmarks/operator_load_hook/sitecustomize.py` (urllib3 and kopf's aiohttp), and the
  apiserver's `apiserver_request_total` for the resources only the operator writes;
- the operator's RSS (VmHWM: peak; VmRSS sampled) and CPU time;
- optionally (`--profile FILE`) a wall-clock sampling profile of every operator thread
  (`operator_load_hook/bench_sampler.py`), summarised by `top_functions`;
- how many FineTuneJobs reached Succeeded within the run, and the phases at the end.

Jobs carry `spec.model.architecture` (no probe pod) and ask for one GPU of H100, L4 or
A100 in turn; the fake cluster has 22 GPUs, so most trainers wait Pending for a GPU.

Run: `.venv/bin/python benchmarks/operator_load.py [--jobs 200] [--max-concurrent-launches 10]
[--drain 120] [--profile FILE] [--json FILE] [--smoke]` from the repository root.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kubernetes import client, config, watch  # noqa: E402

from kubetune import contract as c  # noqa: E402
from kubetune.api import GROUP, PLURAL, VERSION  # noqa: E402
from tests.integration.harness import OperatorProcess  # noqa: E402
from tests.localcluster.cluster import LocalCluster  # noqa: E402

HOOK = Path(__file__).resolve().parent / "operator_load_hook"
IMAGE = "bench/noop-trainer:1"
NAMESPACE = "load"
REF_NAMESPACE = "load-ref"
# Reference pods stay Pending: no node carries this label, so nothing runs them.
REF_SELECTOR = {"kubetune.io/bench": "never-scheduled"}
GPU_TYPES = ["NVIDIA-H100-80GB-HBM3", "NVIDIA-L4", "NVIDIA-A100-SXM4-40GB"]
ARCH = {
    "numLayers": 4,
    "hiddenSize": 512,
    "intermediateSize": 1408,
    "numAttentionHeads": 8,
    "numKeyValueHeads": 8,
    "vocabSize": 32000,
    "modelType": "llama",
}
SUMMARY = '{"version":1,"exitCode":0,"reason":"Completed","step":1,"totalSteps":1}'
# The fake trainer: the summary goes to $KUBETUNE_TERMINATION_LOG, else /dev/termination-log
# (bind-mounted by the pod runner), else, in the runner's path-mapping fallback, to the
# local file LOCALCLUSTER_MOUNTS maps /dev/termination-log to.
FAKE_PYTHON = f"""#!/bin/sh
f="$KUBETUNE_TERMINATION_LOG"
if [ -z "$f" ] && [ -n "$LOCALCLUSTER_MOUNTS" ]; then
  f=$(printf '%s' "$LOCALCLUSTER_MOUNTS" \\
      | sed -n 's|.*"/dev/termination-log": *"\\([^"]*\\)".*|\\1|p')
fi
printf '%s' '{SUMMARY}' > "${{f:-/dev/termination-log}}"
exit 0
"""
# Production defaults (the harness shortens them for tests); they drive the number of
# requeues and therefore requests per job.
OPERATOR_ENV = {
    "KUBETUNE_PROGRESS_INTERVAL_SECONDS": "5",
    "KUBETUNE_RETRY_BACKOFF_SECONDS": "10",
    "KUBETUNE_RESYNC_SECONDS": "30",
}
# Resources that only the operator writes in this run (the apiserver cross-check).
OPERATOR_ONLY = ("configmaps", "services")


@dataclass
class Latencies:
    """Seconds per job from one moment to another."""

    values: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        xs = sorted(self.values)
        if not xs:
            return math.nan
        return xs[max(0, math.ceil(q * len(xs)) - 1)]

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    def text(self) -> str:
        return f"{self.median:.2f} / {self.pct(0.99):.2f} / {self.pct(1.0):.2f} s"


@dataclass
class Result:
    jobs: int
    max_concurrent_launches: int
    apply_seconds: float = 0.0
    to_job: Latencies = field(default_factory=Latencies)
    """kubetune: FineTuneJob create returned -> its trainer Job's ADDED event."""
    to_pod: Latencies = field(default_factory=Latencies)
    """kubetune: FineTuneJob create returned -> its first trainer pod's ADDED event."""
    reference: Latencies = field(default_factory=Latencies)
    """Job controller: plain Job create returned -> its pod's ADDED event."""
    creation_lag: list[float] = field(default_factory=list)
    """Job creationTimestamp minus FineTuneJob creationTimestamp (1 s resolution)."""
    reference_creation_lag: list[float] = field(default_factory=list)
    # Seen by the watch minus when the create call was sent, the least over every object:
    # never negative. (From the call's return it can be, by a few ms, when the watch thread
    # gets the event before the calling thread resumes on a loaded machine.)
    least_from_sent: float = float("inf")
    """Pod creationTimestamp minus plain Job creationTimestamp (1 s resolution)."""
    jobs_created: int = 0
    all_created_after: float = 0.0
    succeeded: int = 0
    succeeded_after: float = 0.0
    window_seconds: float = 0.0
    requests_at_launch: Counter[str] = field(default_factory=Counter)
    requests_total: Counter[str] = field(default_factory=Counter)
    seconds_at_launch: Counter[str] = field(default_factory=Counter)
    """The operator's wait for the apiserver's answers, by request key, up to the launch."""
    apiserver_delta: Counter[str] = field(default_factory=Counter)
    rss_idle_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_end_mib: float = 0.0
    hwm_mib: float = 0.0
    cpu_seconds: float = 0.0
    api_errors: float = 0.0
    reconcile_count: float = 0.0
    reconcile_seconds: float = 0.0
    phases: Counter[str] = field(default_factory=Counter)
    """FineTuneJobs by phase at the end of the window."""
    restarts: int = 0
    """Sum of status.restarts: retried trainer attempts."""
    samples: dict[str, str] = field(default_factory=dict)
    """One status message per phase."""
    profile: str = ""
    """Top functions of the sampling profile (when one was asked for)."""
    load: str = ""
    """The machine's load averages (1, 5, 15 min) at the end of the run."""

    # ------------------------------------------------------------------ derived
    @property
    def ratio(self) -> float:
        """kubetune's apply -> Job p99 over the Job controller's Job -> Pod p99."""
        ref = self.reference.pct(0.99)
        return self.to_job.pct(0.99) / ref if ref > 0 else math.nan

    @property
    def rss_growth_kib_per_job(self) -> float:
        """(peak RSS - idle RSS) / jobs: an upper bound of what one job costs."""
        return 1024 * (self.hwm_mib - self.rss_idle_mib) / self.jobs

    def per_job(self, counts: Counter[str], watches: bool = False) -> float:
        n = sum(v for k, v in counts.items() if watches or " WATCH " not in k)
        return n / self.jobs

    def table(self) -> str:
        rows = [
            ("jobs applied (threads)", f"{self.jobs}"),
            ("KUBETUNE_MAX_CONCURRENT_LAUNCHES", f"{self.max_concurrent_launches}"),
            ("apply: all creates returned after", f"{self.apply_seconds:.2f} s"),
            ("trainer Jobs created", f"{self.jobs_created}/{self.jobs}"),
            ("kubetune apply -> trainer Job, median / p99 / max", self.to_job.text()),
            ("kubetune apply -> trainer pod, median / p99 / max", self.to_pod.text()),
            ("Job controller Job -> Pod, median / p99 / max", self.reference.text()),
            ("**ratio kubetune p99 / Job controller p99**", f"{self.ratio:.2f}"),
            ("last trainer Job created after first apply", f"{self.all_created_after:.1f} s"),
            (
                "by creationTimestamps, kubetune / Job controller, median / max",
                f"{_median(self.creation_lag):.0f} / {max(self.creation_lag, default=0):.0f} s,"
                f" {_median(self.reference_creation_lag):.0f} /"
                f" {max(self.reference_creation_lag, default=0):.0f} s",
            ),
            (
                "Succeeded within the run",
                f"{self.succeeded}/{self.jobs} (window {self.window_seconds:.0f} s,"
                f" last at {self.succeeded_after:.0f} s)",
            ),
            (
                "operator API requests per job, to last Job created",
                f"{self.per_job(self.requests_at_launch):.1f}",
            ),
            (
                "operator API requests per job, whole window",
                f"{self.per_job(self.requests_total):.1f}",
            ),
            ("reconciles (whole window), per job", f"{self.reconcile_count / self.jobs:.1f}"),
            (
                "reconcile time, mean",
                f"{1000 * self.reconcile_seconds / max(1, self.reconcile_count):.0f} ms",
            ),
            ("phases at the end", ", ".join(f"{k} {v}" for k, v in sorted(self.phases.items()))),
            ("trainer restarts (sum of status.restarts)", f"{self.restarts}"),
            ("kubetune_api_errors_total", f"{self.api_errors:.0f}"),
            (
                "operator RSS idle / peak (VmHWM) / end",
                f"{self.rss_idle_mib:.0f} / {self.hwm_mib:.0f} / {self.rss_end_mib:.0f} MiB",
            ),
            ("(peak - idle) RSS per job", f"{self.rss_growth_kib_per_job:.0f} KiB"),
            ("operator CPU time (whole window)", f"{self.cpu_seconds:.1f} s"),
            ("load average at the end (1/5/15 min)", self.load),
        ]
        width = max(len(k) for k, _ in rows)
        out = [f"| {'metric'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
        out += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
        return "\n".join(out)

    def breakdown(self) -> str:
        lines = ["a status message per phase:"]
        lines += [f"  {phase}: {msg}" for phase, msg in sorted(self.samples.items())]
        lines.append("operator requests by verb and resource (whole window; per job):")
        for key, n in sorted(self.requests_total.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n:6d}  {n / self.jobs:6.2f}  {key}")
        lines.append("operator requests up to the last Job created: count, mean round trip:")
        for key, n in sorted(self.requests_at_launch.items(), key=lambda kv: -kv[1]):
            if key in self.seconds_at_launch:
                ms = 1000 * self.seconds_at_launch[key] / n
                lines.append(f"  {n:6d}  {ms:7.0f} ms  {key}")
        lines.append("apiserver_request_total delta, all clients (per job):")
        for key, n in sorted(self.apiserver_delta.items(), key=lambda kv: -kv[1])[:20]:
            lines.append(f"  {n:6d}  {n / self.jobs:6.2f}  {key}")
        if self.profile:
            lines += ["operator profile (wall-clock samples, idle waits left out):", self.profile]
        return "\n".join(lines)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


# ---------------------------------------------------------------------- cluster side
def write_image_rules(directory: Path) -> Path:
    """An images YAML that maps IMAGE to a PATH whose `python` is the no-op trainer."""
    fakebin = directory / "fakebin"
    fakebin.mkdir(parents=True, exist_ok=True)
    script = fakebin / "python"
    script.write_text(FAKE_PYTHON)
    script.chmod(0o755)
    rules = directory / "images.yaml"
    rules.write_text(
        json.dumps({"images": [{"match": "noop-trainer", "pathPrepend": [str(fakebin)]}]})
    )
    return rules


def job_body(i: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": f"load-{i:04d}"},
        "spec": {
            "model": {"hf": {"repo": "bench/tiny"}, "architecture": ARCH},
            "dataset": {"train": {"hf": {"repo": "bench/data"}}},
            "method": "lora",
            "image": IMAGE,
            "resources": {"gpuType": GPU_TYPES[i % len(GPU_TYPES)], "maxGPUs": 1},
        },
    }


def ref_job_body(i: int) -> dict[str, Any]:
    """A plain Job, the Job controller's yardstick: one pod that nothing will run."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"ref-{i:04d}", "namespace": REF_NAMESPACE},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": REF_SELECTOR,
                    "containers": [{"name": "main", "image": IMAGE, "command": ["true"]}],
                }
            },
        },
    }


# Leaves where a thread waits for work rather than doing it (the profile leaves them out):
# `thread:_worker` is an idle pool thread (its queue's get is C, with no frame of its own).
IDLE_LEAVES = (
    "threading:Condition.wait",
    "threading:Event.wait",
    "queue:Queue.get",
    "thread:_worker",
    "selectors:EpollSelector.select",
    "selectors:PollSelector.select",
    "bench_sampler:",
    "sitecustomize:_loop",
    "threading:Thread._wait_for_tstate_lock",
)


def top_functions(collapsed: str, n: int = 20, by: str = "self") -> str:
    """A markdown table of the `n` functions with the most busy samples, `by` self (the
    frame on top: where the time goes) or total (inclusive), from the sampler's collapsed
    stacks, idle waits left out; then the busy samples by thread (pool)."""
    total: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    busy = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, *frames = stack.split(";")
        if not frames or frames[-1].startswith(IDLE_LEAVES):
            continue
        k = int(count)
        busy += k
        threads[thread] += k
        own[frames[-1]] += k
        for fn in set(frames):
            total[fn] += k
    rank = own if by == "self" else total
    rows = ["| # | function (module:qualname) | self % | total % |", "|---|---|---|---|"]
    ranked = sorted(rank.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    for i, (fn, _) in enumerate(ranked, 1):
        rows.append(
            f"| {i} | `{fn}` | {100 * own[fn] / max(1, busy):.1f}"
            f" | {100 * total[fn] / max(1, busy):.1f} |"
        )
    by_thread = ", ".join(f"{t} {100 * k / max(1, busy):.0f}%" for t, k in threads.most_common())
    rows.append(f"({busy} busy samples at 100 Hz; by thread: {by_thread})")
    return "\n".join(rows)


def new_client(kubeconfig: Path, pool: int = 16) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = pool
    return client.ApiClient(cfg)


def apiserver_requests(cluster: LocalCluster) -> Counter[str]:
    """apiserver_request_total summed by verb and resource[/subresource]."""
    text = cluster.kubectl("get", "--raw", "/metrics")
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        res = labels.get("resource", "")
        if labels.get("subresource"):
            res += "/" + labels["subresource"]
        out[f"{labels.get('verb', '?')} {res or '-'}"] += int(float(line.rsplit(" ", 1)[1]))
    return out


def operator_metrics(port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def read_counts(path: Path, what: str = "counts") -> Counter[str]:
    """The hook's request counts (or, `what="seconds"`, round-trip seconds) by key."""
    try:
        return Counter(json.loads(path.read_text())[what])
    except (OSError, ValueError, KeyError):
        return Counter()


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM in MiB, from /proc."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Watcher(threading.Thread):
    """Records when each trainer Job, trainer pod and reference pod is first seen and when
    each FineTuneJob Succeeds, from four list+watch loops."""

    def __init__(self, kubeconfig: Path) -> None:
        super().__init__(daemon=True)
        self.kubeconfig = kubeconfig
        self.jobs_seen: dict[str, tuple[float, str]] = {}
        self.pods_seen: dict[str, tuple[float, str]] = {}
        self.ref_pods_seen: dict[str, tuple[float, str]] = {}
        self.succeeded: dict[str, float] = {}
        self.ready = threading.Event()
        self.stop = threading.Event()
        self._ready_count = 0
        self._lock = threading.Lock()

    def run(self) -> None:
        batch = client.BatchV1Api(new_client(self.kubeconfig))
        core = client.CoreV1Api(new_client(self.kubeconfig))
        custom = client.CustomObjectsApi(new_client(self.kubeconfig))
        sel = {"label_selector": c.LABEL_JOB}
        loops: list[tuple[str, Any, tuple[str, ...], dict[str, str]]] = [
            ("job", batch.list_namespaced_job, (NAMESPACE,), sel),
            ("pod", core.list_namespaced_pod, (NAMESPACE,), sel),
            ("ref", core.list_namespaced_pod, (REF_NAMESPACE,), {}),
            ("ftj", custom.list_namespaced_custom_object, (GROUP, VERSION, NAMESPACE, PLURAL), {}),
        ]
        threads = [threading.Thread(target=self._guard, args=loop, daemon=True) for loop in loops]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _guard(self, kind: str, list_fn: Any, args: tuple[str, ...], kw: dict[str, str]) -> None:
        """Runs a watch loop; restarts it after a dropped connection, quiet once stopped."""
        first = True
        while not self.stop.is_set():
            try:
                self._watch(kind, list_fn, args, kw, first)
            except Exception:
                if self.stop.is_set():
                    return
                time.sleep(0.5)
            first = False

    def _watch(
        self, kind: str, list_fn: Any, args: tuple[str, ...], kwargs: dict[str, str], first: bool
    ) -> None:
        """List (every item counts as ADDED now), then watch from there; relist on 410."""
        while not self.stop.is_set():
            listed: Any = list_fn(*args, _preload_content=False, **kwargs)
            body = json.loads(listed.data)
            now = time.time()
            for item in body.get("items") or []:
                self._seen(kind, "ADDED", item, now)
            rv = body["metadata"]["resourceVersion"]
            if first:
                with self._lock:
                    self._ready_count += 1
                    if self._ready_count == 4:
                        self.ready.set()
                first = False
            w = watch.Watch()
            for ev in w.stream(list_fn, *args, resource_version=rv, timeout_seconds=300, **kwargs):
                if ev["type"] == "ERROR":  # 410 Gone: list again
                    break
                self._seen(kind, ev["type"], ev["raw_object"], time.time())
                if self.stop.is_set():
                    w.stop()

    def _seen(self, kind: str, type_: str, obj: dict[str, Any], now: float) -> None:
        md = obj["metadata"]
        labels = md.get("labels") or {}
        if kind == "ftj":
            phase = (obj.get("status") or {}).get("phase")
            if phase == "Succeeded" and md["name"] not in self.succeeded:
                self.succeeded[md["name"]] = now
            return
        if kind == "ref":
            owner = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
            seen = self.ref_pods_seen
        else:
            owner = labels.get(c.LABEL_JOB)
            seen = self.jobs_seen if kind == "job" else self.pods_seen
        if owner and owner not in seen and type_ != "DELETED":
            seen[owner] = (now, md["creationTimestamp"])


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.peak = max(self.peak, proc_status(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return


# ---------------------------------------------------------------------- the run
def _established(cluster: LocalCluster) -> bool:
    ext = client.ApiextensionsV1Api(cluster.api_client())
    crd = ext.read_custom_resource_definition("finetunejobs.kubetune.io")
    conds = (crd.status.conditions if crd.status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conds)


def run(
    jobs: int = 200,
    max_concurrent_launches: int = 10,
    drain: float = 120.0,
    create_timeout: float = 600.0,
    workdir: Path | None = None,
    log: Any = print,
    profile: Path | None = None,
) -> Result:
    """Starts a cluster and the operator, applies `jobs` FineTuneJobs and `jobs` plain
    Jobs at once, measures, stops all. With `profile`, the operator's sampled stacks go
    there (collapsed) and their top 20 into `Result.profile`."""
    # Not under /tmp: trainer pods mount an emptyDir at /tmp, which would hide the fake
    # `python` there and run the real one (No module named kubetune_trainer).
    base = "/var/tmp" if os.path.isdir("/var/tmp") else None
    bindir = Path(tempfile.mkdtemp(prefix="kubetune-operator-load-bin-", dir=base))
    work = Path(workdir or tempfile.mkdtemp(prefix="kubetune-operator-load-"))
    work.mkdir(parents=True, exist_ok=True)
    rules = write_image_rules(bindir)
    cluster = LocalCluster(images=rules)
    result = Result(jobs=jobs, max_concurrent_launches=max_concurrent_launches)
    operator: OperatorProcess | None = None
    watcher: Watcher | None = None
    try:
        t = time.monotonic()
        cluster.start()
        log(f"cluster up in {time.monotonic() - t:.1f} s ({cluster.dir})")
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds/finetunejob.yaml"))
        deadline = time.monotonic() + 60
        # `kubectl wait` fails instead of waiting while the CRD has no conditions yet.
        # (and its jsonpath filter errors while `conditions` is still null): read it directly.
        while not _established(cluster):
            if time.monotonic() > deadline:
                raise RuntimeError("the FineTuneJob CRD did not become Established")
            time.sleep(0.2)
        for ns in (NAMESPACE, REF_NAMESPACE):
            cluster.kubectl("create", "namespace", ns)
            deadline = time.monotonic() + 60
            while not cluster.kubectl("get", "sa", "default", "-n", ns, "--ignore-not-found"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"namespace {ns} has no default ServiceAccount")
                time.sleep(0.2)

        counts_file = work / "operator-requests.json"
        pythonpath = os.pathsep.join(p for p in (str(HOOK), os.environ.get("PYTHONPATH")) if p)
        operator = OperatorProcess(
            cluster.kubeconfig,
            work / "operator.log",
            env={
                **OPERATOR_ENV,
                "KUBETUNE_MAX_CONCURRENT_LAUNCHES": str(max_concurrent_launches),
                "KUBETUNE_NAMESPACES": NAMESPACE,
                "KUBETUNE_BENCH_REQUEST_LOG": str(counts_file),
                "PYTHONPATH": pythonpath,
                **({"KUBETUNE_BENCH_PROFILE": str(profile)} if profile else {}),
            },
        ).start()
        assert operator.proc is not None
        pid = operator.proc.pid
        watcher = Watcher(cluster.kubeconfig)
        watcher.start()
        if not watcher.ready.wait(30):
            raise RuntimeError("watches did not start")
        time.sleep(3)  # let the operator finish its initial lists and settle
        result.rss_idle_mib = proc_status(pid)["VmRSS"]
        sampler = RssSampler(pid)
        sampler.start()
        counts_before = read_counts(counts_file)
        seconds_before = read_counts(counts_file, "seconds")
        api_before = apiserver_requests(cluster)
        metrics_before = operator_metrics(operator.port)
        cpu_before = cpu_seconds(pid)

        # ---- apply N FineTuneJobs and N plain Jobs at once, interleaved
        threads = min(2 * jobs, 400)
        api = new_client(cluster.kubeconfig, pool=threads)
        custom = client.CustomObjectsApi(api)
        batch = client.BatchV1Api(api)
        start_gate = threading.Barrier(threads)
        gated = 2 * jobs <= threads  # every task has a thread: all start together
        applied: dict[str, tuple[float, str]] = {}
        ref_applied: dict[str, tuple[float, str]] = {}

        sent: dict[str, float] = {}

        def apply(k: int) -> None:
            i, plain = divmod(k, 2)
            if gated:
                start_gate.wait()
            sent[(ref_job_body if plain else job_body)(i)["metadata"]["name"]] = time.time()
            if plain:
                ref = ref_job_body(i)
                made: Any = batch.create_namespaced_job(
                    REF_NAMESPACE,
                    ref,  # type: ignore[arg-type]  # the client takes plain dicts too
                    _preload_content=False,
                )
                md = json.loads(made.data)["metadata"]
                ref_applied[md["name"]] = (time.time(), md["creationTimestamp"])
                return
            body = job_body(i)
            created: Any = custom.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, body
            )
            applied[body["metadata"]["name"]] = (
                time.time(),
                created["metadata"]["creationTimestamp"],
            )

        t0 = time.time()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(apply, range(2 * jobs)))
        result.apply_seconds = time.time() - t0
        log(f"applied {jobs} FineTuneJobs and {jobs} Jobs in {result.apply_seconds:.2f} s")

        # ---- wait for every trainer Job, then let the scheduled ones finish
        deadline = time.monotonic() + create_timeout
        while len(watcher.jobs_seen) < jobs and time.monotonic() < deadline:
            time.sleep(0.2)
        # Counted when the last trainer Job exists, whether or not the reference is done.
        result.requests_at_launch = read_counts(counts_file) - counts_before
        result.seconds_at_launch = read_counts(counts_file, "seconds") - seconds_before
        while len(watcher.ref_pods_seen) < jobs and time.monotonic() < deadline:
            time.sleep(0.2)
        created_at = time.time()
        log(
            f"{len(watcher.jobs_seen)}/{jobs} trainer Jobs after {created_at - t0:.1f} s;"
            f" {len(watcher.ref_pods_seen)}/{jobs} reference pods"
        )
        deadline = time.monotonic() + drain
        while len(watcher.succeeded) < jobs and time.monotonic() < deadline:
            time.sleep(0.5)
        end = time.time()
        time.sleep(0.5)  # one more dump of the request counter

        # ---- collect
        result.window_seconds = end - t0
        result.requests_total = read_counts(counts_file) - counts_before
        result.apiserver_delta = apiserver_requests(cluster) - api_before
        metrics_after = operator_metrics(operator.port)
        for key, attr in (
            ("kubetune_reconcile_duration_seconds_count", "reconcile_count"),
            ("kubetune_reconcile_duration_seconds_sum", "reconcile_seconds"),
            ("kubetune_api_errors_total", "api_errors"),
        ):
            setattr(result, attr, metrics_after.get(key, 0.0) - metrics_before.get(key, 0.0))
        result.cpu_seconds = cpu_seconds(pid) - cpu_before
        status = proc_status(pid)
        result.rss_end_mib = status["VmRSS"]
        result.hwm_mib = status["VmHWM"]
        sampler.stop.set()
        result.rss_peak_mib = sampler.peak
        seen = dict(watcher.jobs_seen)
        result.jobs_created = sum(1 for name in applied if name in seen)
        for name, (t_applied, ts) in applied.items():
            if name in seen:
                t_seen, job_ts = seen[name]
                result.to_job.values.append(t_seen - t_applied)
                result.creation_lag.append((_parse(job_ts) - _parse(ts)).total_seconds())
            if name in watcher.pods_seen:
                result.to_pod.values.append(watcher.pods_seen[name][0] - t_applied)
        for name, (t_applied, ts) in ref_applied.items():
            if name in watcher.ref_pods_seen:
                t_seen, pod_ts = watcher.ref_pods_seen[name]
                result.reference.values.append(t_seen - t_applied)
                result.reference_creation_lag.append((_parse(pod_ts) - _parse(ts)).total_seconds())
        for m in (seen, watcher.pods_seen, watcher.ref_pods_seen):
            for name, (t_seen, _) in m.items():
                if name in sent:
                    result.least_from_sent = min(result.least_from_sent, t_seen - sent[name])
        if seen:
            result.all_created_after = max(t for t, _ in seen.values()) - t0
        for item in _list_all(custom):
            st = item.get("status") or {}
            phase = str(st.get("phase") or "-")
            result.phases[phase] += 1
            result.restarts += int(st.get("restarts") or 0)
            result.samples.setdefault(phase, f"{item['metadata']['name']}: {st.get('message')}")
        done = dict(watcher.succeeded)
        result.succeeded = sum(1 for name in applied if name in done)
        if done:
            result.succeeded_after = max(done.values()) - t0
        result.load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        if profile is not None:
            time.sleep(1.5)  # the sampler writes its file every second
            result.profile = top_functions(profile.read_text(), 20)
        return result
    finally:
        if watcher is not None:
            watcher.stop.set()
        if operator is not None:
            operator.stop()
        cluster.stop()
        shutil.rmtree(bindir, ignore_errors=True)
        log(f"operator log and request counts in {work}")


def _list_all(custom: client.CustomObjectsApi) -> list[dict[str, Any]]:
    """Every FineTuneJob, 100 a page, each page retried: a single 1,000-item list (5 MB)
    was cut off mid-answer by the loaded apiserver."""
    items: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        for attempt in range(5):
            try:
                page: Any = custom.list_namespaced_custom_object(
                    GROUP, VERSION, NAMESPACE, PLURAL, limit=100, _continue=token
                )
                break
            except Exception:
                if attempt == 4:
                    raise
                time.sleep(2)
        items += page["items"]
        token = page["metadata"].get("continue")
        if not token:
            return items


def _parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200, help="FineTuneJobs to apply (200)")
    ap.add_argument("--smoke", action="store_true", help="10 jobs, 30 s drain")
    ap.add_argument(
        "--max-concurrent-launches",
        type=int,
        default=10,
        help="KUBETUNE_MAX_CONCURRENT_LAUNCHES for the operator (10)",
    )
    ap.add_argument(
        "--drain",
        type=float,
        default=None,
        help="seconds to wait for Succeeded after the last Job is created (120; smoke 30)",
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--profile", type=Path, help="sample the operator's stacks into this file")
    args = ap.parse_args(argv)
    jobs = 10 if args.smoke else args.jobs
    drain = args.drain if args.drain is not None else (30.0 if args.smoke else 120.0)
    res = run(jobs, args.max_concurrent_launches, drain, profile=args.profile)
    print(
        f"\n{dt.date.today()} {platform.node()} cpus={os.cpu_count()}"
        f" python={platform.python_version()}"
    )
    print(res.table())
    print()
    print(res.breakdown())
    if args.json:
        data = {
            k: (dict(v) if isinstance(v, Counter) else v.values if isinstance(v, Latencies) else v)
            for k, v in res.__dict__.items()
        }
        data["ratio"] = res.ratio
        args.json.write_text(json.dumps(data, indent=1))
    return 0 if res.jobs_created == jobs else 1


if __name__ == "__main__":
    sys.exit(main())
