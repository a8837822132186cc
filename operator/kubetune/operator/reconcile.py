"""One level-based reconcile of a FineTuneJob: read, decide, act, write status once.

Run it any number of times: it derives everything from the resource and its children,
creates by deterministic names (a second create is a no-op) and writes only what
changed. The flow, top to bottom:

    finished? → valid? → planned? (probe config.json, discover pools, plan) → launched?
    → suspended? → deadline? → observe attempt → running / succeeded / retry / failed

Every status write says which generation it describes (status.observedGeneration and each
condition's), and the phase sets the conditions GitOps tools read (conditions.py).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from pydantic import ValidationError

from kubetune import contract as c
from kubetune.api import API_VERSION, KIND
from kubetune.api.phases import FINAL_PHASES, ConditionType, Phase, Reason, TrainerPhase
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import (
    CheckpointStatus,
    EvaluationStatus,
    Plan,
    Progress,
    duration_text,
    progress_parts,
)
from kubetune.api.trainer_config import PreviousModel
from kubetune.api.validate import problems_from_error
from kubetune.contract import ExitCode, ProgressReport
from kubetune.planner import (
    Arch,
    ArchitectureError,
    DatasetSize,
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

from . import activetime, manifests, metrics, naming, previous, refusals
from .conditions import get_condition, is_true, observed, set_condition, with_kstatus
from .kube import Kube
from .observe import Observation, observe, parse_summary, terminated
from .progress import ProgressStore, carried
from .settings import Settings
from .statusdiff import merge_patch

log = logging.getLogger(__name__)
FINAL = FINAL_PHASES
# Pods that will never start whatever we wait: configuration errors, not capacity.
FATAL_STUCK = ("CreateContainerConfigError", "InvalidImageName", "ErrImageNeverPull")
MAX_BACKOFF = 600.0
POOL_CACHE_SECONDS = 10.0
# The scheduler's words for a claim that does not exist (not one that is still binding).
MISSING_CLAIM = re.compile(r'persistentvolumeclaim "[^"]+" not found')
# What a refusal before launch said, recomputed once the spec changes (conditions.py
# recomputes Ready/Reconciling/Stalled/Suspended from the phase).
RECOMPUTED_ON_SPEC_CHANGE = frozenset(
    {
        ConditionType.VALID,
        ConditionType.PLANNED,
        ConditionType.LAUNCHED,
        ConditionType.RUNNING,
        ConditionType.RESTARTING,
        ConditionType.SUCCEEDED,
        ConditionType.EVALUATION_PASSED,
        ConditionType.DATA_WARNING,
    }
)
HOST_OOM_ADVICE = (
    "the trainer ran out of host (CPU) memory, not GPU memory: raise spec.resources.memory"
    " (the data loader, tokenisation and checkpoint saving use host memory)"
)


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

    def phase(self, phase: Phase, reason: str, message: str, stalled: bool = False) -> None:
        old = self.status.get("phase")
        was_stalled = is_true(self.status.get("conditions", []), ConditionType.STALLED)
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
        stalled = stalled or phase == Phase.FAILED
        if old != phase or stalled != was_stalled:
            self.events.append(("Warning" if stalled else "Normal", reason, message))

    def observe(self) -> None:
        """Stamps the generation this reconcile read on the status and every condition."""
        self.status["observedGeneration"] = self.generation
        self.status["conditions"] = observed(self.status.get("conditions", []), self.generation)

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
        # A launch's Service, ConfigMap and claim do not depend on each other: they are
        # created at once (one round trip of waiting instead of three), then the Job.
        self._creates = ThreadPoolExecutor(3 * max(1, settings.max_concurrent_launches), "create")

    # ------------------------------------------------------------------ entry point
    def reconcile(
        self, namespace: str, name: str, seen: dict[str, Any] | None = None
    ) -> float | None:
        """Reconciles one job; returns seconds until it wants to run again (or None).
        `seen`: the job as a watch event just delivered it, used instead of reading it
        again; only for a job this process has not written yet (its first reconcile),
        where nothing of ours can be missing from it."""
        start = time.monotonic()
        with self._phase_lock:
            first = (namespace, name) not in self.phases
        if seen is not None and first:
            body: dict[str, Any] | None = copy.deepcopy(seen)
        else:
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
        activetime.account(ctx.status, ctx.now)
        self._write(ctx)
        phase = ctx.status.get("phase")
        self._count(namespace, name, phase)
        if ctx.requeue is None and phase not in FINAL and phase != Phase.SUSPENDED:
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
        for known in Phase:
            metrics.JOBS.labels(known).set(counts.count(known))

    def _write(self, ctx: Ctx) -> None:
        ctx.observe()
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
        if is_true(st.get("conditions", []), ConditionType.FAILED):
            self._spec_fixed(ctx)
        spec = self._validate(ctx)
        if not launched:
            self._plan(ctx, spec)
            if spec.suspend:
                msg = "suspended before launch (spec.suspend)"
                ctx.phase(Phase.SUSPENDED, Reason.SUSPENDED, msg)
                return
            self._launch(ctx, spec, attempt=1)
            return
        self._supervise(ctx, spec)

    def _spec_fixed(self, ctx: Ctx) -> None:
        """A job refused before launch whose spec has changed since: every condition the
        refusal set is dropped, so that what follows is computed from this generation
        alone (no Failed=True beside a new phase), and the job is planned again."""
        st = ctx.status
        failed = get_condition(st.get("conditions", []), ConditionType.FAILED) or {}
        st["conditions"] = [
            x for x in st.get("conditions", []) if x.get("type") not in RECOMPUTED_ON_SPEC_CHANGE
        ]
        st.pop("plan", None)
        msg = (
            f"spec changed (generation {ctx.generation}) after {failed.get('reason')}:"
            " planning again"
        )
        ctx.condition(ConditionType.FAILED, False, Reason.SPEC_CHANGED, msg)
        ctx.event("Normal", Reason.SPEC_CHANGED, msg)

    def _finished(self, ctx: Ctx) -> None:
        ttl = (ctx.body.get("spec") or {}).get("ttlSecondsAfterFinished")
        done = _parse_ts(ctx.status.get("completionTime"))
        if ttl is None or done is None:
            return
        left = (done + timedelta(seconds=int(ttl)) - ctx.now).total_seconds()
        if left <= 0:
            meta = ctx.body["metadata"]
            if (ctx.body.get("spec") or {}).get("ttlDeletes") == "children":
                # Keep the FineTuneJob (Git holds it); free what its attempts left behind.
                for attempt in range(1, int(ctx.status.get("attempt") or 0) + 1):
                    name = naming.workload_name(meta["name"], attempt)
                    self.kube.delete_workload(meta["namespace"], name)
                return
            log.info("ttlSecondsAfterFinished passed: deleting %s", meta["name"])
            self.kube.delete_job_resource(meta["namespace"], meta["name"])
            raise Stop
        ctx.again(left)

    def _validate(self, ctx: Ctx) -> FineTuneJobSpec:
        try:
            spec = FineTuneJobSpec.model_validate(ctx.body.get("spec") or {})
        except ValidationError as exc:
            problems = "; ".join(str(p) for p in problems_from_error(exc, ("spec",)))
            self._fail(ctx, Reason.INVALID_SPEC, problems, valid=False)
        reserved = [k for k in ctx.body["metadata"].get("labels") or {} if k == c.LABEL_JOB]
        if reserved:
            self._fail(
                ctx, Reason.INVALID_SPEC, f"metadata.labels: {reserved[0]} is reserved", valid=False
            )
        ctx.condition(ConditionType.VALID, True, Reason.VALID, "spec is valid")
        return spec

    def _fail(self, ctx: Ctx, reason: str, message: str, valid: bool = True) -> NoReturn:
        """Marks the job Failed (never retried from here) and stops the reconcile."""
        if not valid:
            ctx.condition(ConditionType.VALID, False, reason, message)
        ctx.condition(ConditionType.FAILED, True, reason, message)
        ctx.condition(ConditionType.RUNNING, False, reason, message)
        if ctx.status.get("startTime") and not ctx.status.get("completionTime"):
            ctx.status["completionTime"] = _ts(ctx.now)
        ctx.phase(Phase.FAILED, reason, message)
        raise Stop

    # ------------------------------------------------------------------ planning
    def _plan(self, ctx: Ctx, spec: FineTuneJobSpec) -> None:
        st = ctx.status
        if st.get("plan"):
            if st.get("observedGeneration") == ctx.generation:
                return
            # Made for an earlier spec: it must not outlive this reconcile's write, which
            # stamps the new generation even while the new plan waits for the probe.
            del st["plan"]
            ctx.condition(ConditionType.PLANNED, False, Reason.SPEC_CHANGED, "spec changed")
        if st.get("phase") != Phase.PLANNING:
            ctx.phase(Phase.PLANNING, Reason.PLANNING, "reading the model's shape and planning")
        inputs = self._inputs(ctx, spec)
        if inputs is None:
            ctx.again(2.0)
            raise Stop
        arch, size = inputs
        try:
            pools = self._pools()
            chosen = plan(spec, arch, pools, size)
        except (PlanRefused, PoolConfigError) as exc:
            ctx.condition(ConditionType.PLANNED, False, Reason.NOTHING_FITS, str(exc))
            self._fail(ctx, Reason.NOTHING_FITS, str(exc))
        metrics.PLANS.labels(chosen.method, chosen.gpu_type).inc()
        st["plan"] = chosen.to_k8s()
        summary = (
            f"{chosen.method} on {chosen.nodes}x{chosen.gpus_per_node} {chosen.gpu_type}"
            f" (pool {chosen.pool}, ZeRO {chosen.zero_stage}), predicted"
            f" {chosen.predicted_peak_gi_b:.1f} of {chosen.gpu_memory_gi_b:g} GiB per GPU"
        )
        ctx.condition(ConditionType.PLANNED, True, Reason.PLANNED, summary)
        ctx.event("Normal", Reason.PLANNED, summary)
        # The plan is on the resource before anything is created.
        self._write(ctx)
        ctx.body["status"] = copy.deepcopy(st)
        ctx.events.clear()

    def _inputs(self, ctx: Ctx, spec: FineTuneJobSpec) -> tuple[Arch, DatasetSize | None] | None:
        """The model's shape and the training data's size. The shape is the spec's
        architecture, else config.json read by a probe pod; the probe also counts the
        data, and runs for `method: auto` even with an architecture (the size picks the
        method there). None while the probe runs."""
        name = spec.model.hf.repo if spec.model.hf else "model"
        arch: Arch | None = None
        if spec.model.architecture is not None:
            try:
                arch = from_spec(spec.model.architecture, name=name)
            except ArchitectureError as exc:
                self._fail(
                    ctx, Reason.MODEL_CONFIG_INVALID, f"spec.model.architecture: {exc}", valid=False
                )
            if spec.method != "auto":
                return arch, None
        meta = ctx.meta
        probe = manifests.model_probe(meta, spec, self.settings)
        pod = self.kube.get_pod(meta.namespace, probe["metadata"]["name"])
        if pod is None:
            self.kube.create(probe)
            return None
        if not manifests.owned_by(pod, meta.uid):
            self._wait_for_stale(ctx, "Pod", pod, Phase.PLANNING)
        phase = (pod.get("status") or {}).get("phase")
        term = terminated(pod)
        if phase == "Succeeded" and term is not None:
            self.kube.delete_pod(meta.namespace, probe["metadata"]["name"])
            try:
                config, size, why = _probe_result(term.get("message") or "")
                if arch is None:
                    arch = from_config(config or {}, name=name)
            except (ValueError, ArchitectureError) as exc:
                self._fail(
                    ctx,
                    Reason.MODEL_CONFIG_UNREADABLE,
                    f"spec.model: config.json is not a model config: {exc}",
                )
            if why:
                ctx.event("Normal", Reason.DATASET_NOT_COUNTED, f"spec.dataset.train: {why}")
            return arch, size
        if phase == "Failed":
            summary = parse_summary((term or {}).get("message"))
            detail = summary.message if summary else (term or {}).get("message") or phase
            if term is not None and term.get("exitCode") == ExitCode.RETRYABLE:
                self._probe_backoff(ctx, probe["metadata"]["name"], term, str(detail).strip())
                return None
            self.kube.delete_pod(meta.namespace, probe["metadata"]["name"])
            self._fail(
                ctx,
                Reason.MODEL_CONFIG_UNREADABLE,
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
        if seen.state == "stuck":  # say why planning takes long (e.g. an unbound claim)
            msg = f"reading the model's shape: the probe {seen.message}"
            ctx.phase(Phase.PLANNING, Reason.PLANNING, msg)
        return None

    def _probe_backoff(self, ctx: Ctx, pod: str, term: dict[str, Any], detail: str) -> None:
        """The model's store could not be reached (the probe exited RETRYABLE): stay in
        Planning and probe again, waiting as long as the failures have lasted so far
        (doubling, from the retry backoff up to MAX_BACKOFF). The failed probe pod is
        the timer (its finishedAt) until it is deleted to make way for the next one."""
        reason = Reason.MODEL_SOURCE_UNREACHABLE
        message = f"spec.model: {detail[:500]}"
        cond = get_condition(ctx.status.get("conditions", []), ConditionType.PLANNED) or {}
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
            ctx.condition(ConditionType.PLANNED, False, reason, message)
            ctx.phase(Phase.PLANNING, reason, f"{message}; probing again in {int(left) + 1} s")
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

    # ------------------------------------------------------------------ launching
    def _launch(self, ctx: Ctx, spec: FineTuneJobSpec, attempt: int) -> None:
        meta = ctx.meta
        plan_ = Plan.model_validate(ctx.status["plan"])
        self._check_shared_output(ctx, spec, plan_)
        prev = self._previous(ctx, spec, attempt)
        self._stale_children(ctx)
        *needs, job = manifests.launch_objects(meta, spec, plan_, self.settings, attempt, prev)
        # Everything the Job's pods need exists before the Job does; created at once, each
        # checked for a namesake's object under its name.
        list(self._creates.map(lambda obj: self._create(ctx, obj), needs))
        self._create(ctx, job)
        st = ctx.status
        first = not st.get("startTime")
        st.setdefault("startTime", _ts(ctx.now))
        st["attempt"] = attempt
        st.setdefault("restarts", 0)
        name = naming.workload_name(meta.name, attempt)
        # A failure waiting for its retry belongs to an earlier attempt from now on.
        st["conditions"] = [
            x for x in st.get("conditions", []) if x.get("type") != ConditionType.RESTARTING
        ]
        ctx.condition(
            ConditionType.LAUNCHED, True, Reason.LAUNCHED, f"Job {name} created (attempt {attempt})"
        )
        if first:
            metrics.GPU_HOURS_REQUESTED.inc(
                plan_.total_gpus * (spec.active_deadline_seconds or 0) / 3600.0
            )
        ctx.phase(Phase.PENDING, Reason.LAUNCHED, f"Job {name} created; waiting for its pods")
        ctx.again(2.0)

    def _create(self, ctx: Ctx, obj: dict[str, Any]) -> None:
        """Creates a child; a name already taken is this job's only when the object's owner
        is this job's UID (a crash between create and status write), never by name alone."""
        if self.kube.create(obj) or obj["kind"] == "PersistentVolumeClaim":
            return  # the output claim is the user's: shared by every job that names it
        kind, name = obj["kind"], obj["metadata"]["name"]
        found = self.kube.read(kind, ctx.meta.namespace, name)
        if found is None:  # deleted in between: created on the next reconcile
            ctx.again(1.0)
            raise Stop
        if not manifests.owned_by(found, ctx.meta.uid):
            self._wait_for_stale(ctx, kind, found)

    def _stale_children(self, ctx: Ctx) -> None:
        """Before a launch: no Job or pod of a deleted namesake (same name, another UID) may
        still run. Its trainers would write the same output directory and register the same
        hostnames; garbage collection removes them, this job waits until it has."""
        meta = ctx.meta
        selector = f"{c.LABEL_JOB}={meta.name}"
        jobs = self.kube.list_workloads(meta.namespace, selector)
        mine = {j["metadata"]["uid"] for j in jobs if manifests.owned_by(j, meta.uid)}
        for job in jobs:
            if job["metadata"]["uid"] not in mine:
                self._wait_for_stale(ctx, "Job", job)
        for pod in self.kube.list_pods(meta.namespace, selector):
            labels = pod["metadata"].get("labels") or {}
            own = (
                labels.get(c.LABEL_JOB_UID) == meta.uid
                or manifests.owned_by(pod, meta.uid)
                or any(manifests.owned_by(pod, uid) for uid in mine)
            )
            if not own:
                self._wait_for_stale(ctx, "Pod", pod)

    def _wait_for_stale(
        self, ctx: Ctx, kind: str, obj: dict[str, Any], phase: Phase = Phase.PENDING
    ) -> NoReturn:
        """Waits while a child's name (or the job's label) is held by another UID's object.
        One owned by a deleted FineTuneJob goes with garbage collection; one without any
        owner (orphaned on purpose) never does: Stalled, a person deletes it."""
        meta = obj.get("metadata") or {}
        owners = meta.get("ownerReferences") or []
        name = f"{kind} {meta.get('name')}"
        if owners:
            whose = ", ".join(f"{o.get('kind')} {o.get('name')} uid {o.get('uid')}" for o in owners)
            msg = (
                f"waiting for the previous job's children to be deleted: {name} belongs to"
                f" {whose}, not to this FineTuneJob (uid {ctx.meta.uid})"
            )
            stalled = False
        else:
            msg = (
                f"{name} of an earlier job named {ctx.meta.name} has no owner (orphaned) and"
                " will not be garbage-collected: delete it to let this job start"
            )
            stalled = True
        if not ctx.status.get("startTime"):
            ctx.condition(ConditionType.LAUNCHED, False, Reason.WAITING_FOR_STALE_CHILDREN, msg)
        ctx.condition(ConditionType.RUNNING, False, Reason.WAITING_FOR_STALE_CHILDREN, msg)
        ctx.phase(phase, Reason.WAITING_FOR_STALE_CHILDREN, msg, stalled=stalled)
        ctx.again(3.0)
        raise Stop

    def _check_shared_output(self, ctx: Ctx, spec: FineTuneJobSpec, plan_: Plan) -> None:
        """Every node of a multi-node plan writes checkpoints (each rank its ZeRO shards) to
        the output claim: one that only one node can mount would leave the others stuck
        attaching it, so such a job fails before anything is created."""
        out = spec.output.pvc if spec.output else None
        if plan_.nodes < 2 or out is None:
            return  # no claim: the planner warned that outputs stay in the pods
        claim = self.kube.get_claim(ctx.meta.namespace, out.claim_name)
        modes = ((claim or {}).get("spec") or {}).get("accessModes") or []
        if claim is None or manifests.SHARED_ACCESS in modes:
            return  # created now as ReadWriteMany, or a missing claim the scheduler reports
        self._fail(
            ctx,
            Reason.OUTPUT_CLAIM_NOT_SHARED,
            f"spec.output.pvc.claimName: the plan runs on {plan_.nodes} nodes, which all write"
            f" checkpoints to claim {out.claim_name}, but it is {', '.join(modes)}: only one"
            " node can mount it. Use a ReadWriteMany claim (NFS, CephFS, EFS, Filestore,"
            " Azure Files) or set spec.resources.maxNodes: 1",
        )

    def _previous(self, ctx: Ctx, spec: FineTuneJobSpec, attempt: int) -> PreviousModel | None:
        """The `previous` baseline given as another job: its output location. Waits while
        that job runs; fails this one when it cannot serve (missing, failed, no output).
        A later attempt goes on without it: the first attempt's baseline.json has its
        scores."""
        ref = spec.evaluation.previous
        if ref is None or ref.job is None:
            return None
        meta = ctx.meta
        other = self.kube.get_job_resource(meta.namespace, ref.job)
        try:
            return previous.resolve(meta.namespace, ref.job, other)
        except previous.PreviousNotReady as exc:
            ctx.condition(ConditionType.LAUNCHED, False, Reason.WAITING_FOR_PREVIOUS_JOB, str(exc))
            ctx.phase(Phase.PENDING, Reason.WAITING_FOR_PREVIOUS_JOB, str(exc))
            ctx.again(15.0)
            raise Stop from exc
        except previous.PreviousInvalid as exc:
            if attempt > 1:
                log.warning("%s; attempt %d reuses the scores of attempt 1", exc, attempt)
                return None
            self._fail(ctx, Reason.PREVIOUS_JOB_UNUSABLE, str(exc))

    # ------------------------------------------------------------------ supervising
    def _supervise(self, ctx: Ctx, spec: FineTuneJobSpec) -> None:
        meta = ctx.meta
        st = ctx.status
        attempt = int(st.get("attempt") or 1)
        wl_name = naming.workload_name(meta.name, attempt)
        if spec.suspend:
            self._suspend(ctx, wl_name)
            return
        if st.get("phase") == Phase.SUSPENDED:
            ctx.event(
                "Normal", Reason.RESUMED, "resumed: a new attempt continues from the checkpoint"
            )
            self._launch(ctx, spec, attempt + 1)
            return
        self._deadline(ctx, spec, wl_name)
        if self._pending_retry(ctx, attempt) is not None:
            self._retry(ctx, spec, attempt)
            return
        job = self.kube.get_workload(meta.namespace, wl_name)
        if job is not None and not manifests.owned_by(job, meta.uid):
            self._wait_for_stale(ctx, "Job", job)  # a deleted namesake's: never followed
        pods = self.kube.list_pods(
            meta.namespace, f"{c.LABEL_JOB}={meta.name},{c.LABEL_ATTEMPT}={attempt}"
        )
        if job is not None:  # only this Job's pods, not a namesake's still terminating
            pods = [p for p in pods if manifests.owned_by(p, job["metadata"]["uid"])]
        seen = observe(job, pods)
        self._merge_progress(ctx, attempt)
        if seen.state == "absent":
            # Created nothing yet (crash between status write and create) or deleted by
            # someone: create the same attempt again; names make it idempotent.
            self._launch(ctx, spec, attempt)
        elif seen.state == "queued":
            self._waiting_for_capacity(ctx, seen, Phase.QUEUED)
        elif seen.state == "pending" and self._refused(ctx, seen, job, wl_name):
            pass
        elif seen.state == "pending":
            ctx.condition(ConditionType.RUNNING, False, Reason.PODS_PENDING, seen.message)
            ctx.phase(Phase.PENDING, Reason.PODS_PENDING, seen.message)
            ctx.again(5.0)
        elif seen.state == "stuck" and seen.reason == "Unschedulable" and not _fatal(seen):
            self._waiting_for_capacity(ctx, seen, Phase.PENDING)
        elif seen.state == "stuck":
            self._stuck(ctx, seen, wl_name)
        elif seen.state == "running":
            self._running(ctx, seen, attempt)
        elif seen.state == "succeeded":
            self._succeeded(ctx, seen)
        else:
            self._failed(ctx, spec, seen, wl_name, attempt)

    def _refused(
        self, ctx: Ctx, seen: Observation, job: dict[str, Any] | None, wl_name: str
    ) -> bool:
        """Pods the API server will not create (refusals.py): Failed with its words when
        waiting cannot help, a wait for capacity while a ResourceQuota is full. False when
        every pod was created (or nothing refused them)."""
        spec_ = (job or {}).get("spec") or {}
        uid = ((job or {}).get("metadata") or {}).get("uid")
        if not uid or seen.pods >= int(spec_.get("parallelism") or 1):
            return False
        found = refusals.refusal(self.kube.list_events(ctx.meta.namespace, uid))
        if found is None:
            return False
        if found.kind == "permanent":
            self.kube.delete_workload(ctx.meta.namespace, wl_name, grace_seconds=0)
            self._fail(
                ctx, Reason.PODS_FORBIDDEN, f"cannot create the trainer pods: {found.message}"
            )
        if found.kind == "quota":
            why = Observation(
                "stuck", Reason.QUOTA_EXCEEDED, found.message, stuck_since=found.since
            )
            self._waiting_for_capacity(ctx, why, Phase.PENDING)
            ctx.again(10.0)  # a freed quota sends no event here: look again
            return True
        msg = f"{seen.message}; creating them failed: {found.message}"
        ctx.condition(ConditionType.RUNNING, False, Reason.PODS_PENDING, msg)
        ctx.phase(Phase.PENDING, Reason.PODS_PENDING, msg)
        ctx.again(10.0)
        return True

    def _suspend(self, ctx: Ctx, wl_name: str) -> None:
        meta = ctx.meta
        if ctx.status.get("phase") == Phase.SUSPENDED:
            return
        # SIGTERM with the grace period: the trainer saves a checkpoint, then exits.
        self.kube.delete_workload(
            meta.namespace, wl_name, grace_seconds=self.settings.termination_grace_seconds
        )
        step = (ctx.status.get("checkpoints") or {}).get("latestStep")
        msg = "suspended; pods stopped after a checkpoint request"
        if step is not None:
            msg += f" (latest checkpoint at step {step})"
        ctx.condition(ConditionType.RUNNING, False, Reason.SUSPENDED, msg)
        ctx.phase(Phase.SUSPENDED, Reason.SUSPENDED, msg)

    def _deadline(self, ctx: Ctx, spec: FineTuneJobSpec, wl_name: str) -> None:
        if spec.active_deadline_seconds is None:
            return
        active = activetime.active_seconds(ctx.status, ctx.now)
        if active is None:
            return
        # Suspended, queued and capacity waits do not count (activetime.py).
        left = spec.active_deadline_seconds - active
        if left > 0:
            ctx.again(left)
            return
        self.kube.delete_workload(
            ctx.meta.namespace, wl_name, grace_seconds=self.settings.termination_grace_seconds
        )
        self._fail(
            ctx,
            Reason.DEADLINE_EXCEEDED,
            f"activeDeadlineSeconds ({spec.active_deadline_seconds}) exceeded",
        )

    def _running(self, ctx: Ctx, seen: Observation, attempt: int) -> None:
        """Running or Evaluating, as rank 0 last reported; the message is its progress
        (step, loss, speed, ETA), which is what Argo CD and kstatus show."""
        report = self._report(ctx, attempt)  # None: nothing from this attempt yet
        # After a failover: what the previous leader wrote for this attempt, not a blank.
        kept = carried(ctx.status) if report is None else None
        done = progress_parts(ctx.status.get("progress") or {}) if report or kept else []
        evaluating = report is not None and report.phase == TrainerPhase.EVALUATING
        if kept is not None:
            evaluating = ctx.status.get("phase") == Phase.EVALUATING
        if evaluating:
            phase = Phase.EVALUATING
            msg = "evaluating the tuned model" + (f" after {done[0]}" if done else "")
        else:
            phase = Phase.RUNNING
            msg = ", ".join(done) if done else f"{seen.message}; no progress report yet"
        ctx.condition(ConditionType.RUNNING, True, Reason.RUNNING, seen.message)
        ctx.phase(phase, Reason(phase), msg)
        ctx.again(self.settings.progress_interval_seconds)

    def _waiting_for_capacity(self, ctx: Ctx, seen: Observation, phase: Phase) -> None:
        """Pods the scheduler cannot place yet, or a Job held in Kueue's queue: progress
        (a cluster autoscaler or the queue will resolve it), until the operator's grace
        period has passed; then Stalled, still waiting, so that a person looks."""
        grace = self.settings.capacity_grace_seconds
        not_running = get_condition(ctx.status.get("conditions", []), ConditionType.RUNNING)
        since = (
            seen.stuck_since or _parse_ts((not_running or {}).get("lastTransitionTime")) or ctx.now
        )
        waited = (ctx.now - since).total_seconds()
        stalled = grace > 0 and waited >= grace
        # Static text (no running clock), so that the status changes only when the state does.
        if stalled:
            reason = Reason.NO_CAPACITY
            msg = f"no capacity after {duration_text(grace)} (capacityGraceSeconds): {seen.message}"
        else:
            reason = Reason.QUEUED if phase == Phase.QUEUED else Reason.WAITING_FOR_CAPACITY
            if seen.reason == Reason.QUOTA_EXCEEDED:
                reason = Reason.QUOTA_EXCEEDED
            what = "quota" if reason == Reason.QUOTA_EXCEEDED else "capacity"
            msg = f"waiting for {what} since {_ts(since)}: {seen.message}"
            if grace > 0:
                ctx.again(grace - waited)
        ctx.condition(ConditionType.RUNNING, False, reason, msg)
        ctx.phase(phase, reason, msg, stalled=stalled)

    def _stuck(self, ctx: Ctx, seen: Observation, wl_name: str) -> None:
        """Pods that cannot start for a reason a person must fix (a missing volume, Secret
        or image): Failed at once when retrying cannot help, else Stalled until it is."""
        if _fatal(seen):
            self.kube.delete_workload(ctx.meta.namespace, wl_name, grace_seconds=0)
            self._fail(ctx, _fatal_reason(seen), seen.message)
        cond = get_condition(ctx.status.get("conditions", []), ConditionType.RUNNING) or {}
        ctx.condition(ConditionType.RUNNING, False, seen.reason, seen.message)
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
        ctx.phase(Phase.PENDING, seen.reason, seen.message, stalled=True)
        ctx.again(10.0)

    def _report(self, ctx: Ctx, attempt: int) -> ProgressReport | None:
        """This attempt's latest progress report; not one of a deleted namesake's."""
        meta = ctx.meta
        report = self.progress.get(meta.namespace, meta.name)
        if report is None or report.attempt != attempt:
            return None
        if report.uid and report.uid != meta.uid:
            return None
        return report

    def _merge_progress(self, ctx: Ctx, attempt: int) -> None:
        meta = ctx.meta
        report = self._report(ctx, attempt)
        if report is None:
            return
        interval = self.settings.progress_interval_seconds
        if not self.progress.due(meta.namespace, meta.name, interval):
            return
        progress = report.progress()
        progress.updated_at = _ts(ctx.now)
        if progress.percent is not None:  # shown by `kubectl get ftj`
            progress.percent = round(progress.percent, 1)
        ctx.status["progress"] = progress.to_k8s()
        if report.checkpoint:
            ckpt = CheckpointStatus.model_validate(ctx.status.get("checkpoints") or {})
            ckpt.latest, ckpt.latest_step = report.checkpoint, report.checkpoint_step
            ctx.status["checkpoints"] = ckpt.to_k8s()
        self.progress.mark_written(meta.namespace, meta.name)

    def _succeeded(self, ctx: Ctx, seen: Observation) -> None:
        st = ctx.status
        summary = seen.summary
        if summary is not None:
            _apply_summary(st, summary)
        st["completionTime"] = st.get("completionTime") or _ts(ctx.now)
        ctx.condition(ConditionType.RUNNING, False, Reason.COMPLETED, "training finished")
        ctx.condition(ConditionType.SUCCEEDED, True, Reason.COMPLETED, "training finished")
        _gate_condition(ctx)
        _data_warning(ctx)
        ctx.phase(Phase.SUCCEEDED, Reason.COMPLETED, _success_message(st))

    def _failed(
        self, ctx: Ctx, spec: FineTuneJobSpec, seen: Observation, wl_name: str, attempt: int
    ) -> None:
        st = ctx.status
        code = seen.exit_code or ExitCode.ERROR
        if seen.summary is not None:
            _apply_summary(st, seen.summary, final=False)
            _data_warning(ctx)  # a failed run's data warnings explain it too
        # Stop every other rank of this attempt now: no rank is left hanging in NCCL.
        self.kube.delete_workload(ctx.meta.namespace, wl_name, grace_seconds=0)
        if seen.reason == Reason.HOST_OUT_OF_MEMORY:
            # Host memory, not the GPU's: the same plan needs a larger memory limit.
            self._fail(ctx, Reason.HOST_OUT_OF_MEMORY, f"{seen.message}; {HOST_OOM_ADVICE}")
        if seen.disrupted:
            # Evicted, preempted or deleted: not the trainer's failure, not a restart.
            ctx.condition(ConditionType.RESTARTING, True, Reason.DISRUPTED, seen.message)
            self._retry(ctx, spec, attempt)
            return
        if not code.retryable:
            self._fail(ctx, seen.reason or code.name, seen.message)
        restarts = int(st.get("restarts") or 0)
        if restarts >= spec.max_restarts:
            self._fail(
                ctx,
                Reason.RETRIES_EXHAUSTED,
                f"{seen.message}; gave up after {restarts} restart(s) (maxRestarts)",
            )
        # Remember the failure until the retry: the Job is gone from now on, and the
        # next reconciles must wait out the backoff instead of relaunching this attempt.
        # (The next launch clears it.)
        ctx.condition(ConditionType.RESTARTING, True, code.name, seen.message)
        self._retry(ctx, spec, attempt)

    def _pending_retry(self, ctx: Ctx, attempt: int) -> dict[str, Any] | None:
        cond = get_condition(ctx.status.get("conditions", []), ConditionType.RESTARTING)
        return cond if cond and cond.get("status") == "True" else None

    def _retry(self, ctx: Ctx, spec: FineTuneJobSpec, attempt: int) -> None:
        """After the backoff, a new attempt resumes from the latest checkpoint."""
        st = ctx.status
        cond = self._pending_retry(ctx, attempt) or {}
        message = str(cond.get("message", ""))
        restarts = int(st.get("restarts") or 0)
        disrupted = cond.get("reason") == Reason.DISRUPTED
        backoff = min(MAX_BACKOFF, self.settings.retry_backoff_seconds * math.pow(2, restarts))
        if disrupted:
            backoff = 0.0  # nothing failed: relaunch at once (the scheduler places it)
        since = _parse_ts(cond.get("lastTransitionTime")) or ctx.now
        left = (since + timedelta(seconds=backoff) - ctx.now).total_seconds()
        if left > 0:
            ctx.condition(ConditionType.RUNNING, False, Reason.BACKOFF_BEFORE_RETRY, message)
            ctx.phase(
                Phase.PENDING,
                Reason.BACKOFF_BEFORE_RETRY,
                f"{message}; retrying in {int(left) + 1} s",
            )
            ctx.again(left)
            return
        if cond.get("reason") == ExitCode.OOM.name:
            self._replan_after_oom(ctx, spec, message)
        ckpt = (st.get("checkpoints") or {}).get("latestStep")
        where = f"from the checkpoint at step {ckpt}" if ckpt else "from the latest checkpoint"
        if disrupted:
            st["disruptions"] = int(st.get("disruptions") or 0) + 1
            ctx.event(
                "Warning",
                Reason.DISRUPTED,
                f"attempt {attempt} stopped ({message}); attempt {attempt + 1} resumes {where}"
                " (not counted in maxRestarts)",
            )
        else:
            st["restarts"] = restarts + 1
            metrics.RESTARTS.inc()
            ctx.event(
                "Warning",
                Reason.RESTARTING,
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
            # The shape the first plan used (probed from config.json) is on the plan.
            shape = old.architecture or spec.model.architecture
            arch = from_spec(shape) if shape is not None else rough_arch(old.parameters)
            size = (
                DatasetSize(rows=old.dataset_rows, tokens=old.dataset_tokens)
                if old.dataset_rows is not None
                else None
            )
            try:
                new = plan(retry, arch, self._pools(), size)
            except PlanRefused as exc:
                self._fail(
                    ctx, Reason.OUT_OF_MEMORY, f"{message}; QLoRA does not fit either: {exc}"
                )
            change = "method lora → qlora"
        else:
            self._fail(ctx, Reason.OUT_OF_MEMORY, f"{message}; no smaller plan is possible")
        new.reasons = [*new.reasons, f"re-planned after running out of memory: {change}"]
        ctx.status["plan"] = new.to_k8s()
        ctx.condition(
            ConditionType.PLANNED, True, Reason.REPLANNED_AFTER_OOM, f"out of memory; {change}"
        )
        ctx.event("Warning", Reason.REPLANNED_AFTER_OOM, f"out of memory; {change}")


# ---------------------------------------------------------------------- helpers
def _probe_result(message: str) -> tuple[dict[str, Any] | None, DatasetSize | None, str]:
    """(config.json keys, the data's size, why it was not counted) from the probe's
    termination message, `{"config": ..., "dataset": ...}`."""
    doc = json.loads(message)
    if not isinstance(doc, dict):
        raise ValueError("the probe's message is not a JSON object")
    count = doc.get("dataset") or {}
    size = None
    if isinstance(count.get("rows"), int):
        size = DatasetSize(
            rows=count["rows"], tokens=count.get("tokens"), complete=bool(count.get("complete"))
        )
    return doc.get("config"), size, str(count.get("error") or "")


def _fatal(seen: Observation) -> bool:
    if seen.reason in FATAL_STUCK:
        return True
    return seen.reason == "Unschedulable" and MISSING_CLAIM.search(seen.message) is not None


def _fatal_reason(seen: Observation) -> str:
    if seen.reason == "Unschedulable":
        return Reason.VOLUME_NOT_FOUND
    if seen.reason == "CreateContainerConfigError":
        return Reason.CONFIG_ERROR
    return seen.reason


def _apply_summary(st: dict[str, Any], summary: c.TerminationSummary, final: bool = True) -> None:
    """Copies the trainer's termination summary into status: its parts are the status's
    own models, written as they are (dumped by alias), never re-keyed by hand."""
    if summary.checkpoints is not None:
        known = CheckpointStatus.model_validate(st.get("checkpoints") or {})
        st["checkpoints"] = known.model_copy(
            update=summary.checkpoints.model_dump(exclude_none=True)
        ).to_k8s()
    if summary.data:
        st["data"] = dict(summary.data)
    if summary.advice:
        st["advice"] = [a.to_k8s() for a in summary.advice]
    if not final:
        return
    live = Progress.model_validate(st.get("progress") or {})
    last = summary.progress or live
    done = last.model_copy(
        update={
            "updated_at": live.updated_at,
            "step": summary.step if summary.step is not None else last.step,
            "total_steps": summary.total_steps or last.total_steps,
            "percent": 100.0,
            "eta_seconds": 0.0,
        }
    )
    st["progress"] = done.to_k8s()
    _apply_evaluation(st, summary.evaluation)
    if summary.output is not None:
        st["output"] = summary.output.to_k8s()


def _apply_evaluation(st: dict[str, Any], evaluation: EvaluationStatus | None) -> None:
    """status.evaluation as the trainer typed it; the best checkpoint it names also goes
    into status.checkpoints."""
    if evaluation is None:
        return
    st["evaluation"] = evaluation.to_k8s()
    best = evaluation.best_metric
    if best is not None:
        ckpt = CheckpointStatus.model_validate(st.get("checkpoints") or {})
        ckpt.best_metric = best.value
        if best.checkpoint:
            ckpt.best = best.checkpoint
        st["checkpoints"] = ckpt.to_k8s()


def _data_warning(ctx: Ctx) -> None:
    """DataWarning from the advice's warnings (True: something to act on)."""
    advice = ctx.status.get("advice") or []
    if not advice:
        return
    warnings = [a for a in advice if a.get("level") == "warning"]
    old = get_condition(ctx.status.get("conditions", []), ConditionType.DATA_WARNING) or {}
    if warnings:
        reason = warnings[0]["code"][:1].upper() + warnings[0]["code"][1:].replace("-", "")
        message = "; ".join(a["message"] for a in warnings)[:2000]
        if old.get("status") != "True":
            ctx.event("Warning", reason, message)
        ctx.condition(ConditionType.DATA_WARNING, True, reason, message)
    else:
        ctx.condition(
            ConditionType.DATA_WARNING,
            False,
            Reason.NO_WARNINGS,
            "no rule of thumb warns about this job",
        )


def _gate_condition(ctx: Ctx) -> None:
    """EvaluationPassed from the gate: True/False when a part was checked, Unknown when
    no part could be (rather than a silent pass)."""
    ev = ctx.status.get("evaluation") or {}
    gate = ev.get("gate")
    passed = ev.get("passed")
    if passed is not None:
        ctx.condition(
            ConditionType.EVALUATION_PASSED,
            bool(passed),
            Reason.EVALUATION_PASSED if passed else Reason.EVALUATION_GATE_FAILED,
            _eval_message(ev),
        )
    elif gate:
        parts = "; ".join(f"{c['name']}: {c['message']}" for c in gate.get("checks") or [])
        ctx.condition(
            ConditionType.EVALUATION_PASSED,
            "Unknown",
            Reason.NOT_CHECKED,
            f"nothing to check: {parts}",
        )


def _eval_message(ev: dict[str, Any]) -> str:
    base, final = ev.get("baseline") or {}, ev.get("final") or {}
    parts = []
    for key in ("exactMatch", "rougeL", "accuracy", "preferenceAccuracy", "loss"):
        if key in final:
            before = f"{base[key]:.3g} → " if key in base else ""
            parts.append(f"{key} {before}{final[key]:.3g}")
    forgetting = ev.get("forgetting") or {}
    if forgetting:
        parts.append(
            f"forgetting {forgetting.get('increasePercent', 0):+.2f}%"
            f" (limit {forgetting.get('limitPercent', 0):g}%)"
        )
    for bench in ev.get("benchmarks") or []:
        parts.append(f"{bench['name']} {-bench['dropPoints']:+.1f} pts")
    return ", ".join(parts)


def _success_message(st: dict[str, Any]) -> str:
    ev = _eval_message(st.get("evaluation") or {})
    output = st.get("output") or {}
    out = output.get("adapter") or output.get("model")
    msg = "training finished"
    if ev:
        msg += f"; {ev}"
    if out:
        msg += f"; output in {out}"
    return msg
