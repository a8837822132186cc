"""kopf wiring: every event about a FineTuneJob or its Jobs and pods schedules one
reconcile of that FineTuneJob. Handlers hold no logic.

Event handlers (not daemons or timers) on purpose: kopf puts a finalizer on every object
with a daemon or timer, and an uninstalled operator would then leave FineTuneJobs that
cannot be deleted. Our children are garbage-collected through owner references, so no
finalizer is needed. Delayed work (backoff, deadlines, progress) is an in-process timer
per job; a restarted operator relists every job and picks up where it was.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kubetune import contract as c
from kubetune.api import GROUP, PLURAL, VERSION
from kubetune.api.phases import Phase

from . import leader, metrics
from .kube import Kube
from .progress import ProgressServer, ProgressStore
from .reconcile import Reconciler
from .settings import Settings

log = logging.getLogger("kubetune.operator")


@dataclass
class Runtime:
    """The operator's state for one process."""

    settings: Settings
    reconciler: Reconciler
    server: ProgressServer
    executor: ThreadPoolExecutor
    """Reconciles of launched jobs run here (the client is blocking)."""
    launches: ThreadPoolExecutor
    """Reconciles of jobs not launched yet run here: a burst of new jobs does not queue
    behind the Job and pod events of the jobs launched just before them."""
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    dirty: set[tuple[str, str]] = field(default_factory=set)
    timers: dict[tuple[str, str], asyncio.TimerHandle] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


RUNTIME: Runtime | None = None


def _api_client(pool: int | None = None) -> client.ApiClient:
    """`pool`: keep-alive connections; at least one per thread that calls the API, or
    urllib3 drops the extra ones and every burst pays for new TLS handshakes."""
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(client_configuration=cfg)
    if pool is not None:
        cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize, pool)
    return client.ApiClient(cfg)


async def schedule(namespace: str, name: str, seen: dict[str, Any] | None = None) -> None:
    """Reconciles a job, coalescing bursts: one run at a time per job, one more if dirty.
    `seen`: the job as its watch event delivered it (see Reconciler.reconcile)."""
    rt = RUNTIME
    if rt is None:
        return
    key = (namespace, name)
    lock = rt.locks.setdefault(key, asyncio.Lock())
    if lock.locked():
        rt.dirty.add(key)
        return
    async with lock:
        while True:
            rt.dirty.discard(key)
            log.debug("reconcile %s/%s", namespace, name)
            requeue: float | None = None
            try:
                loop = asyncio.get_running_loop()
                requeue = await loop.run_in_executor(
                    _lane(rt, key), rt.reconciler.reconcile, namespace, name, seen
                )
            except ApiException as exc:
                metrics.API_ERRORS.inc()
                log.warning(
                    "reconcile %s/%s: API error %s %s: %s",
                    namespace,
                    name,
                    exc.status,
                    exc.reason,
                    str(exc.body)[:500],
                )
                requeue = 5.0
            except Exception:
                metrics.API_ERRORS.inc()
                log.exception("reconcile %s/%s failed", namespace, name)
                requeue = 10.0
            if key not in rt.dirty:
                break
            seen = None  # what changed since is read from the API
        _requeue(rt, key, requeue)


def _lane(rt: Runtime, key: tuple[str, str]) -> ThreadPoolExecutor:
    """The launch lane for jobs this operator has not seen launched (new, planning)."""
    if rt.reconciler.phases.get(key) in (None, Phase.PLANNING):
        return rt.launches
    return rt.executor


def _requeue(rt: Runtime, key: tuple[str, str], seconds: float | None) -> None:
    old = rt.timers.pop(key, None)
    if old is not None:
        old.cancel()
    if seconds is None:
        return
    loop = asyncio.get_running_loop()
    rt.timers[key] = loop.call_later(max(0.5, seconds), _fire, rt, key)


def _fire(rt: Runtime, key: tuple[str, str]) -> None:
    rt.timers.pop(key, None)
    task = asyncio.get_running_loop().create_task(schedule(*key))
    rt.tasks.add(task)
    task.add_done_callback(rt.tasks.discard)


def wake(namespace: str, name: str) -> None:
    """Called by the progress endpoint: schedule a reconcile soon (throttled there)."""
    rt = RUNTIME
    if rt is None or (namespace, name) in rt.timers:
        return
    _requeue(rt, (namespace, name), rt.settings.progress_interval_seconds)


# ---------------------------------------------------------------------- kopf handlers
@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global RUNTIME
    # Watches can go silently idle (kopf #810): set explicit timeouts.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.posting.enabled = False  # we post our own Events, with reasons
    settings.persistence.finalizer = "kubetune.io/unused"  # no handler asks for one
    # Only our Jobs and pods, filtered by the apiserver: a cluster-wide operator otherwise
    # receives (and kopf parses) every pod and Job of the cluster.
    settings.watching.label_selectors["batch", "v1", "jobs"] = c.LABEL_JOB
    settings.watching.label_selectors["", "v1", "pods"] = c.LABEL_JOB
    ours = Settings.from_env()
    # The launch lane has the full size; the other, for jobs launched already, half: in a
    # burst the apiserver is the bottleneck, and launches should get most of its answers.
    # Each thread wants a connection: both lanes', the launches' create threads (up to 3
    # per launch), the events thread and the progress endpoint's TokenReviews.
    threads = ours.max_concurrent_launches
    others = max(2, threads // 2)
    kube = Kube(_api_client(pool=4 * threads + others + 4), background_events=True)
    store = ProgressStore()
    server = ProgressServer(kube, store, on_report=wake)
    server.app.router.add_get("/metrics", _metrics)
    await server.start(ours.progress_listen)
    RUNTIME = Runtime(
        settings=ours,
        reconciler=Reconciler(kube, ours, store),
        server=server,
        executor=ThreadPoolExecutor(others, "reconcile"),
        launches=ThreadPoolExecutor(threads, "launch"),
    )


async def _metrics(request: Any) -> Any:
    from aiohttp import web

    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if RUNTIME is not None:
        for timer in RUNTIME.timers.values():
            timer.cancel()
        await RUNTIME.server.stop()
        # Let running reconciles finish here: with leader election the Lease is released
        # right after kopf returns, and a new leader must not overlap with them.
        for pool in (RUNTIME.launches, RUNTIME.executor):
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        await asyncio.to_thread(RUNTIME.reconciler.kube.close)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_finetunejob(
    type: str, namespace: str | None, name: str, event: Mapping[str, Any], **_: Any
) -> None:
    if namespace is None:
        return
    if type == "DELETED":
        if RUNTIME is not None:
            _requeue(RUNTIME, (namespace, name), None)
            RUNTIME.reconciler.progress.forget(namespace, name)
        return
    await schedule(namespace, name, event.get("object"))


@kopf.on.event("batch", "v1", "jobs", labels={c.LABEL_JOB: kopf.PRESENT})
async def on_workload(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    if namespace is not None:
        await schedule(namespace, labels[c.LABEL_JOB])


@kopf.on.event("", "v1", "pods", labels={c.LABEL_JOB: kopf.PRESENT})
async def on_pod(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    if namespace is not None:
        await schedule(namespace, labels[c.LABEL_JOB])


def main() -> None:
    """`python -m kubetune.operator`: runs kopf with the settings from the environment,
    standalone (kopf peering is not used), behind leader election when it is on."""
    ours = Settings.from_env()
    kopf.configure(
        verbose=os.environ.get("KUBETUNE_LOG_LEVEL", "").lower() == "debug",
        log_format=kopf.LogFormat.JSON
        if os.environ.get("KUBETUNE_LOG_FORMAT", "json") == "json"
        else kopf.LogFormat.FULL,
    )
    # kopf logs every successful event handler at INFO: one line per pod event.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    liveness = os.environ.get("KUBETUNE_LIVENESS", "http://0.0.0.0:8080/healthz")
    run = functools.partial(
        kopf.run,
        clusterwide=not ours.namespaces,
        namespaces=ours.namespaces,
        standalone=True,
        liveness_endpoint=liveness,
        # kopf's default identity looks the UID up in /etc/passwd (getpass.getuser), which
        # fails for a UID the image does not name (the chart's 65532, OpenShift's random ones).
        identity=leader.identity(),  # type: ignore[arg-type]  # kopf's NewType of str
    )
    if not ours.leader_election:
        run()
        return
    sys.exit(leader.run_elected(run, _api_client(), ours, liveness))
