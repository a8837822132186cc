"""One level-based reconcile of a FineTuneJob: read, decide, act, write status once.

Run it any number of times: it derives everything from the resource and its children,
creates by deterministic names (a second create is a no-op) and writes only what
changed. The flow, top to bottom:

    finished? → valid? → planned? (probe config.json, discover pools, plan) → launched?
    → suspended? → deadline? → observe attempt → running / succeeded / retry / failed
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from pydantic import ValidationError

from kubetune import contract as c
from kubetune.api import API_VERSION, KIND
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import Plan
from kubetune.api.validate import problems_from_error
from kubetune.contract import ExitCode
from kubetune.planner import (
    Arch,
    ArchitectureError,
    NodePool,
    PlanRefused,
    PoolConfigError,
    discover_pools,
    from_config,
    load_pools,
    merge_pools,
    plan,
)
from kubetune.planner.architecture import from_spec, rough_arch

from . import manifests, metrics, naming
from .conditions import get_condition, set_condition, with_kstatus
from .kube import Kube
from .observe import Observation, observe, parse_summary, terminated
from .progress import ProgressStore
from .settings import Settings
from .statusdiff import merge_patch

log = logging.getLogger(__name__)
FINAL = ("Succeeded", "Failed")
# Pods that will never start whatever we wait: configuration errors, not capacity.
FATAL_STUCK = ("CreateContainerConfigError", "InvalidImageName", "ErrImageNeverPull")
MAX_BACKOFF = 600.0
POOL_CACHE_SECONDS = 10.0
# The scheduler's words for a claim that does not exist (not one that is still binding).
MISSING_CLAIM = re.compile(r'persistentvolumeclaim "[^"]+" not found')


def _now() -> datetime:
    return datetime.now(UTC)


def _ts(t: datetime) -> str:
    return t.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse_ts(s: str | None) -> datetime | None:
    if not s:
        return None
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


class Stop(Exception):
    """Ends this reconcile after the status has been prepared."""


@dataclass
class Ctx:
    """What one reconcile knows and is about to write."""

    body: dict[str, Any]
    now: datetime
    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue: float | None = None

    @property
    def meta(self) -> manifests.JobMeta:
        return manifests.JobMeta.from_body(self.body)

    @property
    def generation(self) -> int:
        return int(self.body["metadata"].get("generation", 1))

    def condition(self, type_: str, status: bool | str, reason: str, message: str = "") -> None:
        self.status["conditions"] = set_condition(
            self.status.get("conditions", []),
            type_,
            status,
            reason,
            message,
            self.generation,
            _ts(self.now),
        )

    def phase(self, phase: str, reason: str, message: str, stalled: bool = False) -> None:
        old = self.status.get("phase")
        self.status["phase"] = phase
        self.status["message"] = message
        self.status["conditions"] = with_kstatus(
            self.status.get("conditions", []),
            phase,
            reason,
            message,
            self.generation,
            _ts(self.now),
            stalled,
        )
        if old != phase:
            kind = "Warning" if phase == "Failed" or stalled else "Normal"
            self.events.append((kind, reason, message))

    def event(self, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))

    def again(self, seconds: float) -> None:
        self.requeue = seconds if self.requeue is None else min(self.requeue, seconds)


class Reconciler:
    """Owns the FineTuneJob lifecycle; `kube` is its only way to the cluster."""

    def __init__(self, kube: Kube, settings: Settings, progress: ProgressStore) -> None:
        self.kube = kube
        self.settings = settings
        self.progress = progress
        self.phases: dict[tuple[str, str], str] = {}
        self._pool_cache: tuple[float, list[NodePool]] | None = None
        self._phase_lock = threading.Lock()  # reconciles of different jobs run in threads

    # ------------------------------------------------------------------ entry point
    def reconcile(self, namespace: str, name: str) -> float | None:
        """Reconciles one job; returns seconds until it wants to run again (or None)."""
        start = time.monotonic()
        body = self.kube.get_job_resource(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.progress.forget(namespace, name)
            self._count(namespace, name, None)
            return None
        ctx = Ctx(body=body, now=_now(), status=copy.deepcopy(body.get("status") or {}))
        try:
            self._run(ctx)
        except Stop:
            pass
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - start)
        self._write(ctx)
        phase = ctx.status.get("phase")
        self._count(namespace, name, phase)
        if ctx.requeue is None and phase not in FINAL and phase != "Suspended":
            # Watches can miss events; an active job is looked at again at least this often.
            return self.settings.resync_seconds
        return ctx.requeue

    def _count(self, namespace: str, name: str, phase: str | None) -> None:
        """Keeps the jobs-by-phase gauge equal to what this operator last saw."""
        with self._phase_lock:
            if phase is None:
                self.phases.pop((namespace, name), None)
            else:
                self.phases[(namespace, name)] = phase
            counts = list(self.phases.values())
        for known in (
            "Pending",
            "Planning",
            "Queued",
            "Running",
            "Evaluating",
            "Succeeded",
            "Failed",
            "Suspended",
        ):
            metrics.JOBS.labels(known).set(counts.count(known))

    def _write(self, ctx: Ctx) -> None:
        meta = ctx.body["metadata"]
        old = ctx.body.get("status") or {}
        patch = merge_patch(old, ctx.status)
        if patch:
            self.kube.patch_status(meta["namespace"], meta["name"], patch)
            if old.get("phase") != ctx.status.get("phase"):
                metrics.TRANSITIONS.labels(ctx.status.get("phase", "")).inc()
                # kopf's JSON log format puts `k8s_ref` under "object" on every line.
                ref = {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta.get("uid"),
                }
                log.info(
                    "%s/%s: %s -> %s: %s",
                    meta["namespace"],
                    meta["name"],
                    old.get("phase") or "-",
                    ctx.status.get("phase"),
                    ctx.status.get("message", ""),
                    extra={"k8s_ref": ref},
                )
        # Events only once the status that explains them is stored (JobSet's lesson).
        for kind, reason, message in ctx.events:
            self.kube.event(ctx.body, kind, reason, message)

    # ------------------------------------------------------------------ the flow
    def _run(self, ctx: Ctx) -> None:
        st = ctx.status
        launched = bool(st.get("startTime"))
        # A finished job stays finished; only a never-launched Failed job (bad spec) is
        # looked at again when the user fixes its spec (a new generation).
        if st.get("phase") in FINAL and (
            launched or st.get("observedGeneration") == ctx.generation
        ):
            self._finished(ctx)
            return
        spec = self._validate(ctx)
        if not launched:
            self._plan(ctx, spec)
            if spec.suspend:
                ctx.condition("Suspended", True, "Suspended", "created suspended")
                ctx.phase("Suspended", "Suspended", "suspended before launch")
                return
            self._launch(ctx, spec, attempt=1)
            return
        self._supervise(ctx, spec)

    def _finished(self, ctx: Ctx) -> None:
        ttl = (ctx.body.get("spec") or {}).get("ttlSecondsAfterFinished")
        done = _parse_ts(ctx.status.get("completionTime"))
        if ttl is None or done is None:
            return
        left = (done + timedelta(seconds=int(ttl)) - ctx.now).total_seconds()
        if left <= 0:
            meta = ctx.body["metadata"]
            log.info("ttlSecondsAfterFinished passed: deleting %s", meta["name"])
            self.kube.delete_job_resource(meta["namespace"], meta["name"])
            raise Stop
        ctx.again(left)

    def _validate(self, ctx: Ctx) -> FineTuneJobSpec:
        try:
            spec = FineTuneJobSpec.model_validate(ctx.body.get("spec") or {})
        except ValidationError as exc:
            problems = "; ".join(str(p) for p in problems_from_error(exc, ("spec",)))
            self._fail(ctx, "InvalidSpec", problems, valid=False)
        reserved = [k for k in ctx.body["metadata"].get("labels") or {} if k == c.LABEL_JOB]
        if reserved:
            self._fail(
                ctx, "InvalidSpec", f"metadata.labels: {reserved[0]} is reserved", valid=False
            )
        ctx.condition("Valid", True, "Valid", "spec is valid")
        return spec

    def _fail(self, ctx: Ctx, reason: str, message: str, valid: bool = True) -> NoReturn:
        """Marks the job Failed (never retried from here) and stops the reconcile."""
        if not valid:
            ctx.condition("Valid", False, reason, message)
        ctx.condition("Failed", True, reason, message)
        ctx.condition("Running", False, reason, message)
        ctx.status["observedGeneration"] = ctx.generation
        if ctx.status.get("startTime") and not ctx.status.get("completionTime"):
            ctx.status["completionTime"] = _ts(ctx.now)
        ctx.phase("Failed", reason, message)
        raise Stop

    # ------------------------------------------------------------------ planning
    def _plan(self, ctx: Ctx, spec: FineTuneJobSpec) -> None:
        st = ctx.status
        if st.get("plan") and st.get("observedGeneration") == ctx.generation:
            return
        if st.get("phase") != "Planning":
            ctx.phase("Planning", "Planning", "reading the model's shape and planning")
        arch = self._architecture(ctx, spec)
        if arch is None:
            ctx.again(2.0)
            raise Stop
        try:
            pools = self._pools()
            chosen = plan(spec, arch, pools)
        except (PlanRefused, PoolConfigError) as exc:
            ctx.condition("Planned", False, "NothingFits", str(exc))
            self._fail(ctx, "NothingFits", str(exc))
        metrics.PLANS.labels(chosen.method, chosen.gpu_type).inc()
        st["plan"] = chosen.to_k8s()
        st["observedGeneration"] = ctx.generation
        summary = (
            f"{chosen.method} on {chosen.nodes}x{chosen.gpus_per_node} {chosen.gpu_type}"
            f" (pool {chosen.pool}, ZeRO {chosen.zero_stage}), predicted"
            f" {chosen.predicted_peak_gi_b:.1f} of {chosen.gpu_memory_gi_b:g} GiB per GPU"
        )
        ctx.condition("Planned", True, "Planned", summary)
        ctx.event("Normal", "Planned", summary)
        # The plan is on the resource before anything is created.
        self._write(ctx)
        ctx.body["status"] = copy.deepcopy(st)
        ctx.events.clear()

    def _architecture(self, ctx: Ctx, spec: FineTuneJobSpec) -> Arch | None:
        """The model's shape: the spec's override, else config.json read by a probe pod."""
        name = spec.model.hf.repo if spec.model.hf else "model"
        if spec.model.architecture is not None:
            try:
                return from_spec(spec.model.architecture, name=name)
            except ArchitectureError as exc:
                self._fail(
                    ctx, "ModelConfigInvalid", f"spec.model.architecture: {exc}", valid=False
                )
        meta = ctx.meta
        probe = manifests.model_probe(meta, spec, self.settings)
        pod = self.kube.get_pod(meta.namespace, probe["metadata"]["name"])
        if pod is None:
            self.kube.create(probe)
            return None
        phase = (pod.get("status") or {}).get("phase")
        term = terminated(pod)
        if phase == "Succeeded" and term is not None:
            self.kube.delete_pod(meta.namespace, probe["metadata"]["name"])
            try:
                return from_config(json.loads(term.get("message") or ""), name=name)
            except (ValueError, ArchitectureError) as exc:
                self._fail(
                    ctx,
                    "ModelConfigUnreadable",
                    f"spec.model: config.json is not a model config: {exc}",
                )
        if phase == "Failed":
            summary = parse_summary((term or {}).get("message"))
            detail = summary.message if summary else (term or {}).get("message") or phase
            if term is not None and term.get("exitCode") == ExitCode.RETRYABLE:
                self._probe_backoff(ctx, probe["metadata"]["name"], term, str(detail).strip())
                return None
            self.kube.delete_pod(meta.namespace, probe["metadata"]["name"])
            self._fail(
                ctx,
                "ModelConfigUnreadable",
                f"spec.model: cannot read config.json: {str(detail).strip()[:500]}",
            )
        seen = observe({"spec": {"parallelism": 1}}, [pod])
        if seen.state == "stuck" and _fatal(seen):
            self.kube.delete_pod(meta.namespace, probe["metadata"]["name"])
            self._fail(ctx, _fatal_reason(seen), seen.message)
        if seen.state == "stuck" and seen.reason in ("ErrImagePull", "ImagePullBackOff"):
            # The probe runs the trainer image: one that cannot be pulled fails the job as
            # a launch would (imagePullTimeoutSeconds), not later as an unreadable config.
            created = _parse_ts(pod["metadata"].get("creationTimestamp")) or ctx.now
            waited = (ctx.now - created).total_seconds()
            if waited >= self.settings.image_pull_timeout_seconds:
                self.kube.delete_pod(meta.namespace, probe["metadata"]["name"])
                self._fail(ctx, seen.reason, f"{seen.message} (for {int(waited)} s)")
        return None

    def _probe_backoff(self, ctx: Ctx, pod: str, term: dict[str, Any], detail: str) -> None:
        """The model's store could not be reached (the probe exited RETRYABLE): stay in
        Planning and probe again, waiting as long as the failures have lasted so far
        (doubling, from the retry backoff up to MAX_BACKOFF). The failed probe pod is
        the timer (its finishedAt) until it is deleted to make way for the next one."""
        reason = "ModelSourceUnreachable"
        message = f"spec.model: {detail[:500]}"
        cond = get_condition(ctx.status.get("conditions", []), "Planned") or {}
        ongoing = cond.get("status") == "False" and cond.get("reason") == reason
        failed_at = _parse_ts(term.get("finishedAt")) or ctx.now
        first = (_parse_ts(cond.get("lastTransitionTime")) if ongoing else None) or failed_at
        backoff = min(
            MAX_BACKOFF,
            max(self.settings.retry_backoff_seconds, (failed_at - first).total_seconds()),
        )
        left = (failed_at + timedelta(seconds=backoff) - ctx.now).total_seconds()
        if left > 0:
            if not ongoing:
                ctx.event("Warning", reason, f"{message}; probing again in {int(left) + 1} s")
            ctx.condition("Planned", False, reason, message)
            ctx.phase("Planning", reason, f"{message}; probing again in {int(left) + 1} s")
            ctx.again(left)
            return
        self.kube.delete_pod(ctx.meta.namespace, pod)
        ctx.again(1.0)

    def _pools(self) -> list[NodePool]:
        """Configured plus discovered pools, cached briefly: planning and placement of one
        launch (and bursts of launches) share one node LIST."""
        now = time.monotonic()
        if self._pool_cache is not None and now - self._pool_cache[0] < POOL_CACHE_SECONDS:
            return self._pool_cache[1]
        pools = self._read_pools()
        self._pool_cache = (now, pools)
        return pools

    def _read_pools(self) -> list[NodePool]:
        configured = load_pools(self.settings.pools_file) if self.settings.pools_file else []
        discovered = discover_pools(self.kube.list_nodes()) if self.settings.discover_pools else []
        # Configured pools win: they carry costs and curated selectors.
        return merge_pools(configured, discovered)

    def _placement(self, plan_: Plan) -> manifests.Placement:
        for pool in self._pools():
            if pool.name == plan_.pool:
                return manifests.Placement(
                    node_selector=dict(pool.node_selector),
                    tolerations=[t.to_k8s() for t in pool.tolerations],
                )
        return manifests.Placement()

    # ------------------------------------------------------------------ launching
    def _launch(self, ctx: Ctx, spec: FineTuneJobSpec, attempt: int) -> None:
        meta = ctx.meta
        plan_ = Plan.model_validate(ctx.status["plan"])
        objects = [manifests.headless_service(meta, self.settings)]
        claim = manifests.output_claim(meta, spec)
        if claim is not None:
            objects.append(claim)
        objects.append(manifests.config_map(meta, spec, plan_, self.settings, attempt))
        objects.append(
            manifests.trainer_job(meta, spec, plan_, self._placement(plan_), self.settings, attempt)
        )
        for obj in objects:
            self.kube.create(obj)
        st = ctx.status
        first = not st.get("startTime")
        st.setdefault("startTime", _ts(ctx.now))
        st["attempt"] = attempt
        st.setdefault("restarts", 0)
        name = naming.workload_name(meta.name, attempt)
        ctx.condition("Launched", True, "Launched", f"Job {name} created (attempt {attempt})")
        ctx.condition("Suspended", False, "NotSuspended")
        if first:
            metrics.GPU_HOURS_REQUESTED.inc(
                plan_.total_gpus * (spec.active_deadline_seconds or 0) / 3600.0
            )
        ctx.phase("Pending", "Launched", f"Job {name} created; waiting for its pods")
        ctx.again(2.0)

    # ------------------------------------------------------------------ supervising
    def _supervise(self, ctx: Ctx, spec: FineTuneJobSpec) -> None:
        meta = ctx.meta
        st = ctx.status
        attempt = int(st.get("attempt") or 1)
        wl_name = naming.workload_name(meta.name, attempt)
        if spec.suspend:
            self._suspend(ctx, wl_name)
            return
        if st.get("phase") == "Suspended":
            ctx.event("Normal", "Resumed", "resumed: a new attempt continues from the checkpoint")
            self._launch(ctx, spec, attempt + 1)
            return
        self._deadline(ctx, spec, wl_name)
        if self._pending_retry(ctx, attempt) is not None:
            self._retry(ctx, spec, attempt)
            return
        job = self.kube.get_workload(meta.namespace, wl_name)
        pods = self.kube.list_pods(
            meta.namespace, f"{c.LABEL_JOB}={meta.name},{c.LABEL_ATTEMPT}={attempt}"
        )
        seen = observe(job, pods)
        self._merge_progress(ctx, attempt)
        if seen.state == "absent":
            # Created nothing yet (crash between status write and create) or deleted by
            # someone: create the same attempt again; names make it idempotent.
            self._launch(ctx, spec, attempt)
        elif seen.state == "queued":
            ctx.condition("Running", False, "Queued", seen.message)
            ctx.phase("Queued", "Queued", seen.message)
        elif seen.state == "pending":
            ctx.condition("Running", False, "PodsPending", seen.message)
            ctx.phase("Pending", "PodsPending", seen.message)
            ctx.again(5.0)
        elif seen.state == "stuck":
            self._stuck(ctx, seen, wl_name)
        elif seen.state == "running":
            report = self.progress.get(meta.namespace, meta.name)
            evaluating = bool(report and report.attempt == attempt and report.phase == "evaluating")
            phase = "Evaluating" if evaluating else "Running"
            ctx.condition("Running", True, "Running", seen.message)
            ctx.phase(phase, phase, seen.message)
            ctx.again(self.settings.progress_interval_seconds)
        elif seen.state == "succeeded":
            self._succeeded(ctx, seen)
        else:
            self._failed(ctx, spec, seen, wl_name, attempt)

    def _suspend(self, ctx: Ctx, wl_name: str) -> None:
        meta = ctx.meta
        if ctx.status.get("phase") == "Suspended":
            return
        # SIGTERM with the grace period: the trainer saves a checkpoint, then exits.
        self.kube.delete_workload(
            meta.namespace, wl_name, grace_seconds=self.settings.termination_grace_seconds
        )
        step = (ctx.status.get("checkpoints") or {}).get("latestStep")
        msg = "suspended; pods stopped after a checkpoint request"
        if step is not None:
            msg += f" (latest checkpoint at step {step})"
        ctx.condition("Suspended", True, "Suspended", msg)
        ctx.condition("Running", False, "Suspended", msg)
        ctx.phase("Suspended", "Suspended", msg)

    def _deadline(self, ctx: Ctx, spec: FineTuneJobSpec, wl_name: str) -> None:
        if spec.active_deadline_seconds is None:
            return
        start = _parse_ts(ctx.status.get("startTime"))
        if start is None:
            return
        left = (start + timedelta(seconds=spec.active_deadline_seconds) - ctx.now).total_seconds()
        if left > 0:
            ctx.again(left)
            return
        self.kube.delete_workload(
            ctx.meta.namespace, wl_name, grace_seconds=self.settings.termination_grace_seconds
        )
        self._fail(
            ctx,
            "DeadlineExceeded",
            f"activeDeadlineSeconds ({spec.active_deadline_seconds}) exceeded",
        )

    def _stuck(self, ctx: Ctx, seen: Observation, wl_name: str) -> None:
        """Pods that cannot start are never reported as Running or plain Pending."""
        if _fatal(seen):
            self.kube.delete_workload(ctx.meta.namespace, wl_name, grace_seconds=0)
            self._fail(ctx, _fatal_reason(seen), seen.message)
        cond = get_condition(ctx.status.get("conditions", []), "Running") or {}
        ctx.condition("Running", False, seen.reason, seen.message)
        since = (
            _parse_ts(cond.get("lastTransitionTime"))
            if cond.get("reason") == seen.reason
            else ctx.now
        )
        waited = (ctx.now - (since or ctx.now)).total_seconds()
        image = seen.reason in ("ErrImagePull", "ImagePullBackOff")
        if image and waited >= self.settings.image_pull_timeout_seconds:
            self.kube.delete_workload(ctx.meta.namespace, wl_name, grace_seconds=0)
            self._fail(ctx, seen.reason, f"{seen.message} (for {int(waited)} s)")
        ctx.phase("Pending", seen.reason, seen.message, stalled=True)
        ctx.again(10.0)

    def _merge_progress(self, ctx: Ctx, attempt: int) -> None:
        meta = ctx.meta
        report = self.progress.get(meta.namespace, meta.name)
        if report is None or report.attempt != attempt:
            return
        interval = self.settings.progress_interval_seconds
        if not self.progress.due(meta.namespace, meta.name, interval):
            return
        progress = report.model_dump(
            by_alias=True,
            exclude_none=True,
            mode="json",
            exclude={"namespace", "name", "attempt", "checkpoint", "checkpoint_step", "phase"},
        )
        progress["updatedAt"] = _ts(ctx.now)
        if "percent" in progress:  # shown by `kubectl get ftj`
            progress["percent"] = round(progress["percent"], 1)
        ctx.status["progress"] = progress
        if report.checkpoint:
            ckpt = dict(ctx.status.get("checkpoints") or {})
            ckpt.update({"latest": report.checkpoint, "latestStep": report.checkpoint_step})
            ctx.status["checkpoints"] = ckpt
        self.progress.mark_written(meta.namespace, meta.name)

    def _succeeded(self, ctx: Ctx, seen: Observation) -> None:
        st = ctx.status
        summary = seen.summary
        if summary is not None:
            _apply_summary(st, summary)
        st["completionTime"] = st.get("completionTime") or _ts(ctx.now)
        ctx.condition("Running", False, "Completed", "training finished")
        ctx.condition("Succeeded", True, "Completed", "training finished")
        passed = (st.get("evaluation") or {}).get("passed")
        if passed is not None:
            ctx.condition(
                "EvaluationPassed",
                bool(passed),
                "EvaluationPassed" if passed else "EvaluationGateFailed",
                _eval_message(st.get("evaluation") or {}),
            )
        ctx.phase("Succeeded", "Completed", _success_message(st))

    def _failed(
        self, ctx: Ctx, spec: FineTuneJobSpec, seen: Observation, wl_name: str, attempt: int
    ) -> None:
        st = ctx.status
        code = seen.exit_code or ExitCode.ERROR
        if seen.summary is not None:
            _apply_summary(st, seen.summary, final=False)
        # Stop every other rank of this attempt now: no rank is left hanging in NCCL.
        self.kube.delete_workload(ctx.meta.namespace, wl_name, grace_seconds=0)
        if not code.retryable:
            self._fail(ctx, seen.reason or code.name, seen.message)
        restarts = int(st.get("restarts") or 0)
        if restarts >= spec.max_restarts:
            self._fail(
                ctx,
                "RetriesExhausted",
                f"{seen.message}; gave up after {restarts} restart(s) (maxRestarts)",
            )
        # Remember the failure until the retry: the Job is gone from now on, and the
        # next reconciles must wait out the backoff instead of relaunching this attempt.
        st["conditions"] = set_condition(
            st.get("conditions", []),
            "Restarting",
            True,
            code.name,
            seen.message,
            attempt,
            _ts(ctx.now),
        )
        self._retry(ctx, spec, attempt)

    def _pending_retry(self, ctx: Ctx, attempt: int) -> dict[str, Any] | None:
        cond = get_condition(ctx.status.get("conditions", []), "Restarting")
        if cond and cond.get("status") == "True" and cond.get("observedGeneration") == attempt:
            return cond
        return None

    def _retry(self, ctx: Ctx, spec: FineTuneJobSpec, attempt: int) -> None:
        """After the backoff, a new attempt resumes from the latest checkpoint."""
        st = ctx.status
        cond = self._pending_retry(ctx, attempt) or {}
        message = str(cond.get("message", ""))
        restarts = int(st.get("restarts") or 0)
        backoff = min(MAX_BACKOFF, self.settings.retry_backoff_seconds * math.pow(2, restarts))
        since = _parse_ts(cond.get("lastTransitionTime")) or ctx.now
        left = (since + timedelta(seconds=backoff) - ctx.now).total_seconds()
        if left > 0:
            ctx.condition("Running", False, "BackoffBeforeRetry", message)
            ctx.phase("Pending", "BackoffBeforeRetry", f"{message}; retrying in {int(left) + 1} s")
            ctx.again(left)
            return
        if cond.get("reason") == ExitCode.OOM.name:
            self._replan_after_oom(ctx, spec, message)
        st["restarts"] = restarts + 1
        metrics.RESTARTS.inc()
        st["conditions"] = [x for x in st.get("conditions", []) if x.get("type") != "Restarting"]
        ckpt = (st.get("checkpoints") or {}).get("latestStep")
        where = f"from the checkpoint at step {ckpt}" if ckpt else "from the latest checkpoint"
        ctx.event(
            "Warning",
            "Restarting",
            f"attempt {attempt} failed ({message}); attempt {attempt + 1} resumes {where}",
        )
        self._launch(ctx, spec, attempt + 1)

    def _replan_after_oom(self, ctx: Ctx, spec: FineTuneJobSpec, message: str) -> None:
        """Smaller micro-batch (same global batch), then checkpointing, then QLoRA (auto)."""
        old = Plan.model_validate(ctx.status["plan"])
        new = old.model_copy(deep=True)
        if old.micro_batch_size > 1:
            new.micro_batch_size = old.micro_batch_size // 2
            new.gradient_accumulation_steps = old.gradient_accumulation_steps * 2
            change = f"micro-batch {old.micro_batch_size} → {new.micro_batch_size}"
        elif not old.gradient_checkpointing:
            new.gradient_checkpointing = True
            change = "gradient checkpointing on"
        elif spec.method == "auto" and old.method == "lora":
            retry = spec.model_copy(update={"method": "qlora"})
            # The probed config.json is not kept; the plan's parameter count is enough
            # for a QLoRA re-plan when the spec gives no architecture.
            arch = (
                from_spec(spec.model.architecture)
                if spec.model.architecture is not None
                else rough_arch(old.parameters)
            )
            try:
                new = plan(retry, arch, self._pools())
            except PlanRefused as exc:
                self._fail(ctx, "OutOfMemory", f"{message}; QLoRA does not fit either: {exc}")
            change = "method lora → qlora"
        else:
            self._fail(ctx, "OutOfMemory", f"{message}; no smaller plan is possible")
        new.reasons = [*new.reasons, f"re-planned after running out of memory: {change}"]
        ctx.status["plan"] = new.to_k8s()
        ctx.condition("Planned", True, "ReplannedAfterOOM", f"out of memory; {change}")
        ctx.event("Warning", "ReplannedAfterOOM", f"out of memory; {change}")


# ---------------------------------------------------------------------- helpers
def _fatal(seen: Observation) -> bool:
    if seen.reason in FATAL_STUCK:
        return True
    return seen.reason == "Unschedulable" and MISSING_CLAIM.search(seen.message) is not None


def _fatal_reason(seen: Observation) -> str:
    if seen.reason == "Unschedulable":
        return "VolumeNotFound"
    if seen.reason == "CreateContainerConfigError":
        return "ConfigError"
    return seen.reason


def _apply_summary(st: dict[str, Any], summary: c.TerminationSummary, final: bool = True) -> None:
    """Copies the trainer's termination summary into status fields."""
    if summary.checkpoint:
        ckpt = dict(st.get("checkpoints") or {})
        ckpt["latest"] = summary.checkpoint
        if summary.step is not None:
            ckpt["latestStep"] = summary.step
        if summary.best_checkpoint:
            ckpt["best"] = summary.best_checkpoint
        st["checkpoints"] = ckpt
    if summary.data:
        st["data"] = dict(summary.data)
    if not final:
        return
    progress = dict(st.get("progress") or {})
    if summary.step is not None:
        progress["step"] = summary.step
    if summary.total_steps is not None:
        progress["totalSteps"] = summary.total_steps
    progress["percent"] = 100.0
    progress["etaSeconds"] = 0
    for key, target in (
        ("train_loss", "loss"),
        ("tokens_per_second", "tokensPerSecond"),
        ("peak_memory_gib", "peakMemoryGiB"),
    ):
        # The live figures win: train_loss is the mean over the run, not the last loss.
        if key in summary.metrics and target not in progress:
            progress[target] = summary.metrics[key]
    st["progress"] = progress
    ev = summary.evaluation
    evaluation: dict[str, Any] = {}
    for key in ("baseline", "final"):
        val = ev.get(key)
        if isinstance(val, dict):
            evaluation[key] = {_camel(k): v for k, v in val.items() if v is not None}
    forgetting = ev.get("forgetting")
    if isinstance(forgetting, dict) and forgetting:
        f = {_camel(k): v for k, v in forgetting.items()}
        if "passed" not in f and {"increasePercent", "limitPercent"} <= f.keys():
            f["passed"] = f["increasePercent"] <= f["limitPercent"]
        evaluation["forgetting"] = f
    if isinstance(ev.get("passed"), bool):
        evaluation["passed"] = ev["passed"]
    if evaluation:
        st["evaluation"] = evaluation
    if summary.output:
        st["output"] = {_camel(k): v for k, v in summary.output.items()}


def _camel(key: str) -> str:
    special = {"rouge_l": "rougeL", "peak_memory_gib": "peakMemoryGiB"}
    if key in special:
        return special[key]
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _eval_message(ev: dict[str, Any]) -> str:
    base, final = ev.get("baseline") or {}, ev.get("final") or {}
    parts = []
    for key in ("exactMatch", "rougeL", "accuracy", "loss"):
        if key in final:
            before = f"{base[key]:.3g} → " if key in base else ""
            parts.append(f"{key} {before}{final[key]:.3g}")
    forgetting = ev.get("forgetting") or {}
    if forgetting:
        parts.append(
            f"forgetting {forgetting.get('increasePercent', 0):+.2f}%"
            f" (limit {forgetting.get('limitPercent', 0):g}%)"
        )
    return ", ".join(parts)


def _success_message(st: dict[str, Any]) -> str:
    ev = _eval_message(st.get("evaluation") or {})
    out = (st.get("output") or {}).get("adapter")
    msg = "training finished"
    if ev:
        msg += f"; {ev}"
    if out:
        msg += f"; output in {out}"
    return msg
