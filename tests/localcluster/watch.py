"""Waiting on a FineTuneJob for as long as it makes progress.

A fixed deadline either fails a slow but healthy run on a busy machine or waits far too long
for a stuck one. These helpers describe what moves (the job's status, its pods' phases and
container states) so a caller can give up only once nothing has moved for a while, and say
what it was waiting for when it does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]


def describe(job: Obj, pods: list[Obj]) -> tuple[str, str]:
    """(a signature that changes whenever the job or its pods move, a one-line description)."""
    st = job.get("status") or {}
    states = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        detail = []
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            state, info = next(iter((cs.get("state") or {"unknown": {}}).items()))
            detail.append(f"{state}{':' + info['reason'] if info.get('reason') else ''}")
        phase = (pod.get("status") or {}).get("phase", "Pending")
        states.append(f"{pod['metadata']['name']} {phase} {','.join(detail)}".strip())
    progress = st.get("progress") or {}
    where = f"phase {st.get('phase') or 'Pending'}"
    if progress.get("step") is not None:
        where += f", step {progress['step']}/{progress.get('totalSteps')}"
    if st.get("message"):
        where += f": {st['message']}"
    text = f"{job['metadata']['name']} ({where}); pods: {'; '.join(states) or 'none yet'}"
    return json.dumps([st, states], sort_keys=True), text


def wait_moving(
    read: Callable[[], tuple[Obj, list[Obj]]],
    done: Callable[[Obj], bool],
    what: str,
    stall: float = 300.0,
    every: float = 2.0,
) -> Obj:
    """Poll `read()` (the job and its pods) until `done(job)`; raise once nothing moved for
    `stall` seconds, naming `what` was awaited and where the job stood."""
    last, changed = "", time.monotonic()
    while True:
        job, pods = read()
        if done(job):
            return job
        sig, text = describe(job, pods)
        if sig != last:
            last, changed = sig, time.monotonic()
        elif time.monotonic() - changed > stall:
            status = json.dumps(job.get("status"), indent=1)[-3000:]
            raise AssertionError(
                f"nothing moved for {stall:.0f}s while waiting for {what}: {text}\n{status}"
            )
        time.sleep(every)
