"""Chaos for the operator: real tiny jobs on the local cluster while faults hit at random
points, then the invariants of issue 16 checked on what is left.

Faults (`KINDS`): the operator SIGKILLed and restarted, a trainer process SIGKILLed after
it wrote a checkpoint, a trainer pod deleted, kube-apiserver SIGKILLed and restarted, and a
FineTuneJob deleted and created again at once under the same name. Which fault comes next,
which job it hits and the pauses between them come from one seeded RNG: the seed is printed
and `KUBETUNE_CHAOS_SEED` replays it (the moments depend on the machine's speed, the choices
do not).

A :class:`Monitor` thread watches everything while the faults run: which FineTuneJob UID
owns each Job and pod, the checkpoints on the output claim (each incarnation of a name
checkpoints every `save_steps` of its own, so a checkpoint's `trainer_state.json` says
whose it is), and each trainer's "resuming from" log line. Invariants checked after
(:meth:`Chaos.check`), each failure named:

* outcome: every job Succeeded, except the planted bad-input job, which Failed without a
  retry and with the bad file named;
* no adoption: a live job was never Running on pods of another UID's Job;
* no orphans: once garbage collection settles, no Job, pod, Service or ConfigMap belongs
  to a FineTuneJob UID that no longer exists;
* own checkpoints only: the first trainer of each UID starts fresh, and every resume
  loads a checkpoint its own UID wrote;
* restarts: `status.restarts` equals the trainer kills that landed on that UID; a pod
  deletion the user caused does not spend `maxRestarts` (issue 16 §6);
* outputs complete: the adapter and report.json exist at the output path, and the report
  was written by the job's own UID.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune import contract as c
from kubetune.api import GROUP, PLURAL, VERSION
from tests.fixtures.demo_volume import demo_job
from tests.integration.harness import (
    TRAINING_STALL,
    OperatorProcess,
    apply_job,
    phase_is,
    wait_for,
)
from tests.localcluster.cluster import LocalCluster
from tests.localcluster.kube import raw
from tests.waits import Stalled, wait_progress

KINDS = ("operator_kill", "trainer_kill", "pod_delete", "apiserver_restart", "recreate")
CLAIM = "kubetune-demo"
BAD_FILE = "data/chaos-bad.jsonl"
"""The planted bad input: a JSON-lines file whose lines are not JSON."""
FINAL = ("Succeeded", "Failed")
RESUMING = re.compile(r"resuming from (\S+) \(step (\d+)\)")
SEED_ENV = "KUBETUNE_CHAOS_SEED"
OPERATOR_START = 300.0
"""Seconds a restarted operator may take to open its port: the jobs wait for it anyway."""


def seed_from_env() -> int:
    """`KUBETUNE_CHAOS_SEED` (to replay a run) or a fresh random seed."""
    value = os.environ.get(SEED_ENV)
    return int(value) if value else random.SystemRandom().randrange(1, 2**31)


@dataclass(frozen=True)
class Scenario:
    """How much chaos: jobs, faults and the pauses between them."""

    jobs: int
    epochs: int
    faults: int
    pause: tuple[float, float] = (2.0, 8.0)
    """Seconds between one fault and the search for the next one's target."""
    operator_down: tuple[float, float] = (0.0, 4.0)
    apiserver_down: tuple[float, float] = (0.0, 3.0)


@dataclass
class Incarnation:
    """One FineTuneJob object: a name may have several, one after the other."""

    name: str
    uid: str
    save_steps: int
    """Its checkpoint interval, unique among incarnations: identifies its checkpoints."""
    bad: bool = False
    deleted: bool = False
    landed: Counter[str] = field(default_factory=Counter)
    """Faults that hit this incarnation (trainer_kill, pod_delete, recreate)."""
    final: dict[str, Any] = field(default_factory=dict)


@dataclass
class PodSeen:
    uid: str
    name: str
    owner: str
    """The FineTuneJob UID it belongs to (through its Job)."""
    attempt: str
    first_seen: float
    resumed: tuple[str, int, int | None] | None = None
    """(checkpoint path, step, save_steps of whoever wrote that checkpoint)."""
    log_read: bool = False


class Monitor(threading.Thread):
    """Polls the namespace and the claim about once a second and records what it sees."""

    def __init__(self, chaos: Chaos) -> None:
        super().__init__(name="chaos-monitor", daemon=True)
        self.chaos = chaos
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.jobs: dict[str, dict[str, Any]] = {}  # FineTuneJob name -> body (live ones)
        self.workload_owner: dict[str, str] = {}  # batch Job uid -> FineTuneJob uid
        self.pods: dict[str, PodSeen] = {}
        self.live_pods: list[dict[str, Any]] = []
        self.checkpoints: dict[tuple[str, float], int | None] = {}  # (path, mtime) -> save_steps
        self.adoptions: list[str] = []
        self.errors = 0

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            try:
                self.poll()
            except Exception:  # the API server may be down on purpose: try again
                self.errors += 1

    def poll(self) -> None:
        ch = self.chaos
        ns = ch.namespace
        bodies = raw(ch.custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL)["items"]
        workloads = raw(ch.batch.list_namespaced_job, ns, label_selector=c.LABEL_JOB)["items"]
        pods = raw(ch.core.list_namespaced_pod, ns, label_selector=c.LABEL_JOB)["items"]
        now = time.time()
        with self.lock:
            self.jobs = {b["metadata"]["name"]: b for b in bodies}
            for wl in workloads:
                owner = _owner(wl, "FineTuneJob")
                if owner:
                    self.workload_owner[wl["metadata"]["uid"]] = owner
            self.live_pods = pods
            for pod in pods:
                md = pod["metadata"]
                if md["uid"] in self.pods:
                    continue
                owner = _owner(pod, "FineTuneJob") or self.workload_owner.get(
                    _owner(pod, "Job") or "", ""
                )
                if not owner or md.get("labels", {}).get(c.LABEL_COMPONENT) != "trainer":
                    continue
                self.pods[md["uid"]] = PodSeen(
                    md["uid"], md["name"], owner, md["labels"].get(c.LABEL_ATTEMPT, "?"), now
                )
            self._scan_checkpoints()
            self._read_resumes()
            self._check_adoption()

    def _scan_checkpoints(self) -> None:
        for state in self.chaos.claim.glob("runs/*/checkpoints/checkpoint-*/trainer_state.json"):
            try:
                key = (str(state.parent), state.stat().st_mtime)
                if key not in self.checkpoints:
                    self.checkpoints[key] = json.loads(state.read_text()).get("save_steps")
            except (OSError, ValueError):
                continue  # being written or rotated away

    def _read_resumes(self) -> None:
        """The trainer logs "resuming from <checkpoint> (step N)" before it trains: read
        once, and say whose checkpoint that was while it is still on the claim."""
        pods_dir = self.chaos.cluster.pod_runner.state_dir / "pods"
        for seen in self.pods.values():
            if seen.log_read:
                continue
            logs = list(pods_dir.glob(f"*_{seen.name}_{seen.uid}/logs/trainer.log"))
            text = logs[0].read_text(errors="replace") if logs else ""
            match = RESUMING.search(text)
            if match:
                path = self.chaos.host_path(match.group(1))
                writer = None
                with contextlib.suppress(OSError, ValueError):
                    state = json.loads((path / "trainer_state.json").read_text())
                    writer = state.get("save_steps")
                seen.resumed = (match.group(1), int(match.group(2)), writer)
                seen.log_read = True
            elif "'loss'" in text or "{'train_runtime'" in text:
                seen.log_read = True  # training began without a resume

    def _check_adoption(self) -> None:
        """A job Running while the Running pods of its attempt belong to another UID is
        following someone else's work (issue 16 §1)."""
        for name, body in self.jobs.items():
            st = body.get("status") or {}
            if st.get("phase") not in ("Running", "Evaluating"):
                continue
            uid = body["metadata"]["uid"]
            running = [
                p
                for p in self.live_pods
                if p["metadata"]["labels"].get(c.LABEL_JOB) == name
                and p["metadata"]["labels"].get(c.LABEL_ATTEMPT) == str(st.get("attempt"))
                and p["metadata"]["labels"].get(c.LABEL_COMPONENT) == "trainer"
                and (p.get("status") or {}).get("phase") == "Running"
                and p["metadata"]["uid"] in self.pods
            ]
            owners = {self.pods[p["metadata"]["uid"]].owner for p in running}
            if running and uid not in owners:
                msg = (
                    f"{name} (uid {uid}) is {st['phase']} on attempt {st.get('attempt')} while"
                    f" its pods {[p['metadata']['name'] for p in running]} belong to"
                    f" FineTuneJob uid(s) {sorted(owners)}"
                )
                if msg not in self.adoptions:
                    self.adoptions.append(msg)


def _owner(obj: dict[str, Any], kind: str) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == kind:
            return str(ref["uid"])
    return None


class Chaos:
    """The jobs, the fault injector and the invariants of one chaos run."""

    def __init__(
        self,
        cluster: LocalCluster,
        api: client.ApiClient,
        namespace: str,
        claim: Path,
        operator: OperatorProcess,
        scenario: Scenario,
        seed: int,
        say: Callable[[str], None] = print,
    ) -> None:
        self.cluster, self.api, self.namespace, self.claim = cluster, api, namespace, claim
        self.operator, self.scenario, self.seed = operator, scenario, seed
        self.rng = random.Random(seed)
        self.say = say
        self.core, self.batch = client.CoreV1Api(api), client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.incarnations: list[Incarnation] = []
        self.injected: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.hit_pods: set[str] = set()
        self.log: list[str] = []
        self.monitor = Monitor(self)
        self._save_steps = 4
        self.started = time.monotonic()
        self.wall = 0.0

    # ------------------------------------------------------------------ jobs
    def host_path(self, pod_path: str) -> Path:
        """A path as trainer pods see it on the claim, on this machine."""
        return self.claim / pod_path.removeprefix(f"{c.PVC_ROOT}/{CLAIM}").lstrip("/")

    def create(self, name: str, bad: bool = False) -> Incarnation:
        """A demo job checkpointing every few steps; each incarnation its own interval."""
        self._save_steps += 1
        spec: dict[str, Any] = {
            "training": {
                "epochs": self.scenario.epochs,
                "checkpoint": {"everySteps": self._save_steps, "keep": 2},
            },
            "maxRestarts": 20,  # the test counts restarts; it must not run out of them
            # A short evaluation: the chaos is in the training, and a loaded machine is slow.
            "evaluation": {
                "strategy": "no",
                "maxTestSamples": 8,
                "maxNewTokens": 4,
                "sampleGenerations": 0,
                "forgetting": None,
            },
        }
        if bad:
            spec["dataset"] = {"train": {"pvc": {"claimName": CLAIM, "path": BAD_FILE}}}
        body = apply_job(self.api, self.namespace, demo_job(name, **spec))
        inc = Incarnation(name, body["metadata"]["uid"], self._save_steps, bad=bad)
        self.incarnations.append(inc)
        return inc

    def live(self) -> dict[str, Incarnation]:
        """The current incarnation of each name."""
        return {i.name: i for i in self.incarnations if not i.deleted}

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        self.say(f"chaos: seed {self.seed} (replay with {SEED_ENV}={self.seed})")
        (self.claim / BAD_FILE).write_text("this is not json\n{also not json\n")
        (self.claim / BAD_FILE).chmod(0o666)
        self.monitor.start()
        try:
            for i in range(self.scenario.jobs):
                self.create(f"chaos-{i}")
            self.create("chaos-bad", bad=True)
            plan = list(KINDS) * (self.scenario.faults // len(KINDS) + 1)
            plan = plan[: max(self.scenario.faults, len(KINDS))]
            self.rng.shuffle(plan)
            for kind in plan:
                time.sleep(self.rng.uniform(*self.scenario.pause))
                self.inject(kind)
            for inc in list(self.live().values()):
                body = wait_for(
                    self.api,
                    self.namespace,
                    inc.name,
                    phase_is(*FINAL),
                    TRAINING_STALL,
                    "the job to finish after the faults",
                )
                inc.final = body
        finally:
            self.wall = time.monotonic() - self.started
            self.monitor.stop_event.set()
            self.monitor.join(10)

    def inject(self, kind: str) -> None:
        """Waits (following progress) for a target the fault can hit, then hits it; a
        fault with no target before every job has finished is counted as skipped."""
        target = wait_progress(
            lambda: self._target(kind),
            self._progress,
            f"a target for {kind}",
            TRAINING_STALL,
            poll=1.0,
        )
        if target == "none":
            self.skipped[kind] += 1
            self._note(f"{kind}: skipped, every job has finished")
            return
        getattr(self, f"_{kind}")(target)
        self.injected[kind] += 1

    def _progress(self) -> Hashable:
        with self.monitor.lock:
            return tuple(
                sorted(
                    (
                        n,
                        (b.get("status") or {}).get("phase"),
                        ((b.get("status") or {}).get("progress") or {}).get("step"),
                    )
                    for n, b in self.monitor.jobs.items()
                )
            )

    def _target(self, kind: str) -> Any:
        """What `kind` can hit now: None to wait, "none" when nothing ever will."""
        with self.monitor.lock:
            jobs = dict(self.monitor.jobs)
            pods = list(self.monitor.live_pods)
            seen = dict(self.monitor.pods)
            ckpts = dict(self.monitor.checkpoints)
        live = self.live()
        active = [
            inc
            for name, inc in sorted(live.items())
            if not inc.bad
            and name in jobs
            and jobs[name]["metadata"]["uid"] == inc.uid
            and (jobs[name].get("status") or {}).get("phase") not in FINAL
        ]
        if not active:
            return "none"
        if kind in ("operator_kill", "apiserver_restart"):
            return "cluster"
        choices: list[tuple[Incarnation, dict[str, Any]]] = []
        for inc in active:
            st = jobs[inc.name].get("status") or {}
            if (
                st.get("phase") != "Running"
                or float((st.get("progress") or {}).get("percent") or 0) > 85
            ):
                continue
            for pod in pods:
                md = pod["metadata"]
                mine = seen.get(md["uid"])
                if mine is None or mine.owner != inc.uid or md["uid"] in self.hit_pods:
                    continue
                if md.get("deletionTimestamp") or not _container_running(pod):
                    continue
                if kind in ("trainer_kill", "recreate") and not self._own_checkpoint(
                    inc, pod, ckpts
                ):
                    continue
                choices.append((inc, pod))
        if kind == "recreate":  # keep the kills and deletions that landed countable
            choices = [(i, p) for i, p in choices if not i.landed.total()] or choices
        if not choices:
            return None
        return choices[self.rng.randrange(len(choices))]

    def _own_checkpoint(
        self, inc: Incarnation, pod: dict[str, Any], ckpts: dict[tuple[str, float], int | None]
    ) -> bool:
        """This pod has written a checkpoint (after it started, with its interval)."""
        started = _started_at(pod)
        prefix = str(self.claim / "runs" / inc.name / "checkpoints")
        return any(
            path.startswith(prefix) and mtime > started and steps == inc.save_steps
            for (path, mtime), steps in ckpts.items()
        )

    # ------------------------------------------------------------------ faults
    def _note(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f} s] {text}"
        self.log.append(line)
        self.say(f"chaos: {line}")

    def _operator_kill(self, _: str) -> None:
        self.operator.kill()
        down = self.rng.uniform(*self.scenario.operator_down)
        time.sleep(down)
        # Importing the operator took over 30 s here at a load average of 23 on 2 cores.
        self.operator.start(timeout=OPERATOR_START)
        self._note(f"operator SIGKILLed, restarted after {down:.1f} s")

    def _apiserver_restart(self, _: str) -> None:
        took = self.cluster.restart_apiserver(self.rng.uniform(*self.scenario.apiserver_down))
        self._note(f"kube-apiserver SIGKILLed, back after {took:.1f} s")

    def _trainer_kill(self, target: tuple[Incarnation, dict[str, Any]]) -> None:
        inc, pod = target
        for status in pod["status"].get("containerStatuses") or []:
            pid = int(status["containerID"].removeprefix("localcluster://"))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        inc.landed["trainer_kill"] += 1
        self.hit_pods.add(pod["metadata"]["uid"])
        self._note(f"trainer of {inc.name} ({pod['metadata']['name']}) SIGKILLed")

    def _pod_delete(self, target: tuple[Incarnation, dict[str, Any]]) -> None:
        inc, pod = target
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(pod["metadata"]["name"], self.namespace)
        inc.landed["pod_delete"] += 1
        self.hit_pods.add(pod["metadata"]["uid"])
        self._note(f"pod {pod['metadata']['name']} of {inc.name} deleted")

    def _recreate(self, target: tuple[Incarnation, dict[str, Any]]) -> None:
        inc, _ = target
        raw(
            self.custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            inc.name,
        )
        inc.deleted = True
        inc.landed["recreate"] += 1
        deadline = time.monotonic() + 60
        while True:  # the name is free once the object is gone (no finalizer holds it long)
            try:
                new = self.create(inc.name)
                break
            except ApiException as exc:
                if exc.status != 409 or time.monotonic() > deadline:
                    raise
                self._save_steps -= 1
                time.sleep(0.2)
        self._note(f"{inc.name} deleted (uid {inc.uid}) and created again (uid {new.uid})")

    # ------------------------------------------------------------------ invariants
    def check(self) -> list[str]:
        """Every invariant, as a list of violations (empty: all hold)."""
        self._note("checking the invariants")
        problems: list[str] = [
            f"coverage: no {kind} fault landed ({self.skipped[kind]} skipped: every job had"
            " finished); the jobs are too short for this scenario"
            for kind in KINDS
            if not self.injected[kind]
        ]
        problems += self._outcomes()
        problems += [f"adoption (issue 16 §1): {a}" for a in self.monitor.adoptions]
        problems += self._orphans()
        problems += self._checkpoints_used()
        problems += self._restarts()
        problems += self._outputs()
        return problems

    def _outcomes(self) -> list[str]:
        out = []
        for inc in self.live().values():
            st = inc.final.get("status") or {}
            phase, msg = st.get("phase"), st.get("message", "")
            if inc.bad:
                if phase != "Failed":
                    out.append(f"outcome: planted bad input {inc.name} ended {phase}: {msg}")
                elif Path(BAD_FILE).name not in msg:
                    out.append(f"outcome: {inc.name} Failed without naming {BAD_FILE}: {msg}")
                elif int(st.get("restarts") or 0):
                    out.append(
                        f"outcome: bad input {inc.name} was retried {st['restarts']} time(s)"
                        f" before failing (issue 16 §3): {msg}"
                    )
            elif phase != "Succeeded":
                out.append(f"outcome: {inc.name} (uid {inc.uid}) ended {phase}: {msg}")
        return out

    def _orphans(self) -> list[str]:
        """Waits (following progress) for garbage collection to remove every child of a
        deleted UID, then names what is left."""
        live = {i.uid for i in self.live().values()}
        left: list[str] = []

        def orphans() -> list[str]:
            nonlocal left
            left = []
            sel = c.LABEL_JOB
            kinds: list[tuple[str, Callable[..., Any]]] = [
                ("Job", self.batch.list_namespaced_job),
                ("Pod", self.core.list_namespaced_pod),
                ("Service", self.core.list_namespaced_service),
                ("ConfigMap", self.core.list_namespaced_config_map),
            ]
            owners = dict(self.monitor.workload_owner)
            jobs = raw(self.batch.list_namespaced_job, self.namespace)["items"]
            for wl in jobs:
                if (o := _owner(wl, "FineTuneJob")) is not None:
                    owners[wl["metadata"]["uid"]] = o
            for kind, lister in kinds:
                for obj in raw(lister, self.namespace, label_selector=sel)["items"]:
                    owner = _owner(obj, "FineTuneJob")
                    if owner is None and (wl := _owner(obj, "Job")) is not None:
                        owner = owners.get(wl, f"(Job {wl}, gone)")
                    if owner not in live:
                        left.append(f"{kind} {obj['metadata']['name']} (owner {owner})")
            return left

        t0 = time.monotonic()
        first = orphans()
        try:
            wait_progress(
                lambda: not orphans() or None,
                lambda: tuple(left),
                "garbage collection of deleted jobs' children",
                60,
                poll=1.0,
            )
        except Stalled:
            return [f"orphans (issue 16 §1): children of deleted FineTuneJobs remain: {left}"]
        finally:
            took = time.monotonic() - t0
            self._note(f"garbage collection settled in {took:.0f} s; left at first: {first}")
        return []

    def _checkpoints_used(self) -> list[str]:
        out = []
        by_uid = {i.uid: i for i in self.incarnations}
        firsts: dict[str, PodSeen] = {}
        for seen in sorted(self.monitor.pods.values(), key=lambda p: p.first_seen):
            firsts.setdefault(seen.owner, seen)
        for seen in self.monitor.pods.values():
            inc = by_uid.get(seen.owner)
            if inc is None or seen.resumed is None:
                continue
            path, step, writer = seen.resumed
            if firsts[seen.owner] is seen:
                whose = next((i for i in self.incarnations if i.save_steps == writer), None)
                out.append(
                    f"foreign checkpoint (issue 16 §2): {inc.name} (uid {inc.uid})'s first"
                    f" trainer {seen.name} resumed from {path} (step {step}), written by"
                    f" {f'uid {whose.uid}' if whose else 'another job'}"
                )
            elif writer is not None and writer != inc.save_steps:
                whose = next((i for i in self.incarnations if i.save_steps == writer), None)
                out.append(
                    f"foreign checkpoint (issue 16 §2): {inc.name} (uid {inc.uid}) pod"
                    f" {seen.name} resumed from {path} (step {step}), written by"
                    f" {f'uid {whose.uid}' if whose else 'another job'}"
                )
        return out

    def _restarts(self) -> list[str]:
        out = []
        for inc in self.live().values():
            st = inc.final.get("status") or {}
            restarts = int(st.get("restarts") or 0)
            kills, deletions = inc.landed["trainer_kill"], inc.landed["pod_delete"]
            if not inc.bad and restarts != kills:
                out.append(
                    f"restarts (issue 16 §6): {inc.name} (uid {inc.uid}) has status.restarts"
                    f" {restarts}, but {kills} trainer kill(s) landed on it; {deletions} pod"
                    " deletion(s) also did, which must not spend maxRestarts"
                )
        return out

    def _outputs(self) -> list[str]:
        out = []
        for inc in self.live().values():
            st = inc.final.get("status") or {}
            if inc.bad or st.get("phase") != "Succeeded":
                continue
            where = st.get("output") or {}
            adapter = self.host_path(where.get("adapter") or "(none)")
            report = self.host_path(where.get("report") or "(none)")
            missing = [
                str(p)
                for p in (
                    adapter / "adapter_config.json",
                    adapter / "adapter_model.safetensors",
                    report,
                )
                if not p.is_file()
            ]
            if missing:
                out.append(f"outputs: {inc.name} Succeeded but lacks {missing}")
                continue
            job = json.loads(report.read_text()).get("job") or {}
            if job.get("uid") != inc.uid:
                out.append(
                    f"outputs (issue 16 §1): {inc.name}'s report.json was written for uid"
                    f" {job.get('uid')}, not its own uid {inc.uid}"
                )
        return out

    # ------------------------------------------------------------------ figures
    def figures(self, problems: list[str]) -> str:
        outcomes = Counter(
            (i.final.get("status") or {}).get("phase", "?") for i in self.live().values()
        )
        landed = Counter[str]()
        for inc in self.incarnations:
            for kind in ("trainer_kill", "pod_delete"):
                landed[kind] += inc.landed[kind]
        lines = [
            f"seed {self.seed}; {len(self.incarnations)} FineTuneJobs"
            f" ({len(self.live())} names, 1 planted bad input),"
            f" wall time {self.wall:.0f} s",
            "faults injected: "
            + ", ".join(f"{k} {self.injected[k]}" for k in KINDS)
            + f" (total {sum(self.injected.values())})",
            "skipped (no target left): "
            + (", ".join(f"{k} {n}" for k, n in self.skipped.items()) or "none"),
            "outcomes: " + ", ".join(f"{k} {n}" for k, n in sorted(outcomes.items())),
            f"invariants violated: {len(problems)}",
            *self.log,
        ]
        return "\n".join(lines)


def _container_running(pod: dict[str, Any]) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and all("running" in (s.get("state") or {}) for s in statuses)


def _started_at(pod: dict[str, Any]) -> float:
    """When the pod's container started (epoch seconds); 0 when unknown."""
    from datetime import datetime

    for s in (pod.get("status") or {}).get("containerStatuses") or []:
        at = ((s.get("state") or {}).get("running") or {}).get("startedAt")
        if at:
            return datetime.fromisoformat(str(at).replace("Z", "+00:00")).timestamp()
    return 0.0
