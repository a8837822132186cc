"""Progress reports from trainer pods: an HTTP endpoint and a throttled in-memory store.

Why an endpoint and not RBAC for the pods: like Kubeflow Trainer, trainer pods post to
the operator with a projected service-account token (audience `kubetune`), which the
operator checks with a TokenReview and matches to the job's own pod. The trainer's
ServiceAccount then needs no RBAC at all, and all status writes stay in one place where
they are throttled per job.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from kubetune import contract as c
from kubetune.api.phases import ConditionType
from kubetune.contract import ProgressReport

from .kube import Kube

log = logging.getLogger(__name__)
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
TOKEN_CACHE_SECONDS = 300.0


@dataclass
class ProgressStore:
    """Latest report per job, and when each job's progress was last written to status."""

    latest: dict[tuple[str, str], ProgressReport] = field(default_factory=dict)
    written: dict[tuple[str, str], float] = field(default_factory=dict)

    def put(self, report: ProgressReport) -> None:
        key = (report.namespace, report.name)
        old = self.latest.get(key)
        # Late reports from an earlier attempt must not overwrite the current one.
        if old is None or report.attempt >= old.attempt:
            self.latest[key] = report

    def due(self, namespace: str, name: str, interval: float, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return now - self.written.get((namespace, name), -1e18) >= interval

    def get(self, namespace: str, name: str) -> ProgressReport | None:
        return self.latest.get((namespace, name))

    def mark_written(self, namespace: str, name: str, now: float | None = None) -> None:
        self.written[(namespace, name)] = time.monotonic() if now is None else now

    def forget(self, namespace: str, name: str) -> None:
        self.latest.pop((namespace, name), None)
        self.written.pop((namespace, name), None)


def carried(status: dict[str, Any]) -> dict[str, Any] | None:
    """status.progress when the running attempt wrote it (after its pods started running),
    else None (an earlier attempt's). A new leader's store is empty until rank 0 reports
    again; until then the status already holds what the old leader knew."""
    progress = status.get("progress") or {}
    running = next(
        (x for x in status.get("conditions") or [] if x.get("type") == ConditionType.RUNNING), None
    )
    if not progress.get("updatedAt") or not running or running.get("status") != "True":
        return None
    since = str(running.get("lastTransitionTime") or "")
    # Both are RFC 3339 UTC with a Z, to the second: they compare as strings.
    return dict(progress) if str(progress["updatedAt"]) >= since else None


class ProgressServer:
    """POST /v1/progress with a bearer token; GET /healthz."""

    def __init__(
        self,
        kube: Kube,
        store: ProgressStore,
        on_report: Callable[[str, str], None] | None = None,
    ) -> None:
        self.kube = kube
        self.store = store
        self.on_report = on_report
        self._tokens: dict[str, tuple[float, str, str | None]] = {}
        self.app = web.Application(client_max_size=64 * 1024)
        self.app.add_routes(
            [web.post(c.PROGRESS_PATH, self.handle), web.get("/healthz", self.healthz)]
        )
        self._runner: web.AppRunner | None = None

    async def start(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host or "0.0.0.0", int(port)).start()
        log.info("progress endpoint listening on %s", listen)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _identity(self, token: str) -> tuple[str, str | None] | None:
        """(namespace, pod name) of a valid token, cached by the token's hash."""
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._tokens.get(key)
        if cached and cached[0] > time.monotonic():
            return cached[1], cached[2]
        user = await asyncio.to_thread(self.kube.review_token, token, c.TOKEN_AUDIENCE)
        if user is None:
            return None
        parts = user["username"].split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            return None
        pod = (user["extra"].get(POD_NAME_EXTRA) or [None])[0]
        self._tokens[key] = (time.monotonic() + TOKEN_CACHE_SECONDS, parts[2], pod)
        return parts[2], pod

    async def _pod_belongs(self, namespace: str, pod: str, job: str) -> bool:
        body = await asyncio.to_thread(self.kube.get_pod, namespace, pod)
        labels: dict[str, Any] = ((body or {}).get("metadata") or {}).get("labels") or {}
        return labels.get(c.LABEL_JOB) == job

    async def handle(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return web.json_response({"error": "missing bearer token"}, status=401)
        try:
            report = ProgressReport.model_validate(await request.json())
        except (ValueError, ValidationError) as exc:
            return web.json_response({"error": f"bad report: {exc}"[:500]}, status=400)
        identity = await self._identity(auth.removeprefix("Bearer ").strip())
        if identity is None:
            return web.json_response({"error": "invalid token"}, status=401)
        namespace, pod = identity
        if namespace != report.namespace:
            return web.json_response({"error": "token is for another namespace"}, status=403)
        if pod is not None and not await self._pod_belongs(namespace, pod, report.name):
            return web.json_response({"error": "pod does not belong to that job"}, status=403)
        self.store.put(report)
        if self.on_report is not None:
            self.on_report(report.namespace, report.name)
        return web.json_response({"ok": True}, status=202)
