"""Leader election on a `coordination.k8s.io/v1` Lease, the way client-go (and so every
controller-runtime operator) does it, so that several replicas can run and only one acts.

Only the Lease's holder runs kopf. The operator keeps per-job timers and the progress
endpoint in memory, so a second active replica would reconcile the same jobs concurrently
and half the trainers' reports would land where nobody uses them; kopf peering only pauses
watch processing, which is why it is not used.

* A standby polls the Lease every retry period and takes it once the holder has not renewed
  it for the lease duration, measured on the standby's own clock from when it last saw the
  record change (as client-go does: no trust in other nodes' clocks). An empty holder (a
  released Lease) is free at once. Writes are `replace` with the read resourceVersion, so
  two standbys racing for one Lease cannot both win.
* The leader renews every retry period. When it has not renewed for the renew deadline
  (shorter than the duration), or sees another holder, it exits the process at once with
  status 1, with no cleanup that could still write to the cluster: a standby may take over
  as soon as the duration has passed, and the restarted container comes back as a standby.
  This is controller-runtime's behaviour too.
* On a graceful stop (SIGTERM: kopf returns) the leader releases the Lease (empty holder,
  duration 1 s), so a standby takes over within one retry period instead of a full duration.
* A standby is alive but not Ready: it answers the liveness path on the health port itself
  (kopf's endpoint is not running yet) and does not open the progress port, which the
  readiness probe checks, so the progress Service only routes to the leader.

Why not the official client's `kubernetes.leaderelection` (kubernetes 37): kopf must own the
main thread (its SIGTERM handling), so that elector would run in a second thread, and there
connection errors (urllib3's, not ApiException) escape its acquire and renew loops: the
thread ends without calling `onstopped_leading`, so a leader's kopf carries on with nothing
renewing and a standby stops competing. It also never releases the Lease (every rollout
waits out the full duration), sets no request timeout (one hung call outlasts the renew
deadline), and checks its settings with `sys.exit`, refusing periods under a second.
"""

from __future__ import annotations

import http.server
import json
import logging
import math
import os
import secrets
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .settings import Settings

log = logging.getLogger(__name__)
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
EXIT_LOST = 1


def identity() -> str:
    """Pod name (POD_NAME from the downward API, else the hostname) and a random suffix:
    a restarted container must not pass for the holder it replaces, which may still be
    renewing from the old process in the same pod."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


def _micro(t: datetime) -> str:
    """metav1.MicroTime: always six fractional digits (isoformat drops them at .000000)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Acquires, renews and releases one Lease. Thread-safe: the renewer thread and the
    main thread (release) never interleave their read-modify-write cycles."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float,
        renew_deadline: float,
        retry_period: float,
    ) -> None:
        self.coord = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.holder = ""
        """The holder in the Lease as last read or written."""
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._lock = threading.Lock()
        self._released = False

    # ------------------------------------------------------------------ one attempt
    def try_acquire_or_renew(self, timeout: float) -> bool:
        """One get-then-create-or-replace; False on any failure (logged), never raises."""
        with self._lock:
            if self._released:
                return False
            try:
                return self._try(timeout)
            except ApiException as exc:
                log.warning("lease %s: API error %s %s", self.name, exc.status, exc.reason)
            except Exception as exc:  # connection refused, timeouts, ...
                log.warning("lease %s: %s", self.name, exc)
            return False

    def _try(self, timeout: float) -> bool:
        now = _micro(datetime.now(UTC))
        lease = self._get(timeout)
        if lease is None:
            new: dict[str, Any] = {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": math.ceil(self.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            }
            body = {"metadata": {"name": self.name, "namespace": self.namespace}, "spec": new}
            return self._write(self.coord.create_namespaced_lease, timeout, self.namespace, body)
        spec: dict[str, Any] = dict(lease.get("spec") or {})
        holder = str(spec.get("holderIdentity") or "")
        self.holder = holder
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        if holder and holder != self.identity and time.monotonic() < self._observed_at + duration:
            return False  # held by another replica that renewed within its duration
        if holder != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=math.ceil(self.lease_duration),
            renewTime=now,
        )
        lease["spec"] = spec
        return self._write(
            self.coord.replace_namespaced_lease, timeout, self.name, self.namespace, lease
        )

    def _get(self, timeout: float) -> dict[str, Any] | None:
        try:
            resp: Any = self.coord.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(json.loads(resp.data))

    def _write(self, call: Callable[..., Any], timeout: float, *args: Any) -> bool:
        """create or replace; a 409 means another replica wrote first: not ours this time."""
        try:
            resp = call(*args, _preload_content=False, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        self.holder = json.loads(resp.data)["spec"].get("holderIdentity") or ""
        return self.holder == self.identity

    # ------------------------------------------------------------------ standby, release
    def acquire(self, stop: threading.Event) -> bool:
        """Blocks until this replica holds the Lease (True) or `stop` is set (False)."""
        log.info("standby: waiting for lease %s/%s as %s", self.namespace, self.name, self.identity)
        while not stop.is_set():
            if self.try_acquire_or_renew(timeout=self.renew_deadline):
                log.info("leading: acquired lease %s/%s", self.namespace, self.name)
                return True
            # client-go's jitter (up to 1.2x) keeps standbys from polling in lockstep.
            stop.wait(self.retry_period * (1 + 0.2 * secrets.SystemRandom().random()))
        return False

    def release(self) -> None:
        """Empties the holder (duration 1 s) if we still hold the Lease; best effort."""
        with self._lock:
            self._released = True
            try:
                lease = self._get(self.retry_period)
                spec = (lease or {}).get("spec") or {}
                if lease is None or spec.get("holderIdentity") != self.identity:
                    return
                lease["spec"] = {
                    **spec,
                    "holderIdentity": None,
                    "leaseDurationSeconds": 1,
                    "renewTime": _micro(datetime.now(UTC)),
                }
                replace: Callable[..., Any] = self.coord.replace_namespaced_lease
                replace(self.name, self.namespace, lease, _request_timeout=self.retry_period)
                log.info("released lease %s/%s", self.namespace, self.name)
            except Exception as exc:  # the standby then waits out the duration
                log.warning("could not release lease %s: %s", self.name, exc)


class Renewer:
    """The leader's renew loop and its watchdog, in two daemon threads.

    The watchdog does not trust a renew call to return in time (a hung connection): it
    checks the time of the last successful renewal on its own and calls `on_lost`.
    """

    def __init__(self, elector: LeaseElector, on_lost: Callable[[str], None]) -> None:
        self.elector, self.on_lost = elector, on_lost
        self.renewed_at = time.monotonic()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._renew, name="lease-renew", daemon=True),
            threading.Thread(target=self._watch, name="lease-watchdog", daemon=True),
        ]

    def start(self) -> Renewer:
        for t in self.threads:
            t.start()
        return self

    def _renew(self) -> None:
        el = self.elector
        while not self.stop.wait(el.retry_period):
            started = time.monotonic()
            left = self.renewed_at + el.renew_deadline - started
            if left > 0 and el.try_acquire_or_renew(timeout=left):
                self.renewed_at = started
            elif el.holder not in ("", el.identity) and not self.stop.is_set():
                self.on_lost(f"lease {el.name} is now held by {el.holder}")

    def _watch(self) -> None:
        el = self.elector
        while not self.stop.wait(min(0.5, el.retry_period / 4)):
            if time.monotonic() - self.renewed_at > el.renew_deadline:
                self.on_lost(f"lease {el.name} not renewed for {el.renew_deadline:g} s")

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.elector.renew_deadline)


def lost(reason: str) -> None:
    """Leadership lost: stop acting at once. os._exit skips kopf's cleanup and any pending
    reconcile, which could otherwise write to the cluster after a standby took over."""
    log.critical("leader election lost (%s): exiting", reason)
    logging.shutdown()
    os._exit(EXIT_LOST)


class _Liveness(http.server.BaseHTTPRequestHandler):
    path_ok = "/healthz"

    def do_GET(self) -> None:
        ok = urllib.parse.urlsplit(self.path).path == self.path_ok
        body = b'{"standby": true}' if ok else b"not found"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json" if ok else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds
        pass


def standby_liveness(endpoint: str) -> http.server.ThreadingHTTPServer | None:
    """Serves the liveness path (kopf's endpoint, KUBETUNE_LIVENESS) while standing by, so
    the liveness probe passes; closed before kopf binds the same port."""
    if not endpoint:
        return None
    parts = urllib.parse.urlsplit(endpoint)

    class Handler(_Liveness):
        path_ok = parts.path or "/"

    server = http.server.ThreadingHTTPServer((parts.hostname or "", parts.port or 80), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="standby-liveness", daemon=True).start()
    return server


def lease_namespace(settings: Settings) -> str:
    if settings.lease_namespace:
        return settings.lease_namespace
    try:
        return SA_NAMESPACE.read_text().strip()
    except OSError:
        return "default"


def run_elected(
    run: Callable[[], None], api: client.ApiClient, settings: Settings, liveness: str
) -> int:
    """Stands by until this replica holds the Lease, then calls `run` (kopf) in this, the
    main, thread while renewing; releases the Lease when `run` returns. Returns the exit
    status (0; losing the Lease never returns, see `lost`)."""
    elector = LeaseElector(
        api,
        lease_namespace(settings),
        settings.lease_name,
        identity(),
        settings.lease_duration_seconds,
        settings.lease_renew_deadline_seconds,
        settings.lease_retry_period_seconds,
    )
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    server = standby_liveness(liveness)
    try:
        acquired = elector.acquire(stop)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not acquired:
        log.info("standby: stopped before acquiring the lease")
        return 0
    renewer = Renewer(elector, lost).start()
    try:
        run()
    finally:
        renewer.close()
        elector.release()
    return 0
