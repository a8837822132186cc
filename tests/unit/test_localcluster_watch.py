"""Waiting on a job for as long as it moves (tests/localcluster/watch.py), as `make demo` and
the real-node tests do: progress resets the clock, a stall fails naming what was awaited."""

from __future__ import annotations

from typing import Any

import pytest

from tests.localcluster.watch import describe, wait_moving


def job(phase: str, step: int | None = None, message: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "message": message}
    if step is not None:
        status["progress"] = {"step": step, "totalSteps": 10}
    return {"metadata": {"name": "demo"}, "status": status}


POD = {
    "metadata": {"name": "demo-a1-0"},
    "status": {
        "phase": "Pending",
        "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}],
    },
}


def test_describe_names_the_phase_step_and_pod_states() -> None:
    sig, text = describe(job("Running", 3, "training"), [POD])
    assert text == (
        "demo (phase Running, step 3/10: training); "
        "pods: demo-a1-0 Pending waiting:ContainerCreating"
    )
    assert describe(job("Running", 4, "training"), [POD])[0] != sig


def test_a_slow_job_that_keeps_moving_is_waited_for() -> None:
    # 8 polls at 0.05 s, each with a new step: 0.4 s in all, far past the 0.15 s stall limit.
    states = iter([job("Running", i) for i in range(8)] + [job("Succeeded", 10)])
    done = wait_moving(
        lambda: (next(states), []),
        lambda j: j["status"]["phase"] == "Succeeded",
        "demo to finish",
        stall=0.15,
        every=0.05,
    )
    assert done["status"]["phase"] == "Succeeded"


def test_a_job_that_stops_moving_fails_saying_what_was_awaited() -> None:
    with pytest.raises(
        AssertionError,
        match=r"nothing moved for 0s while waiting for demo to "
        r"finish: demo \(phase Running, step 5/10\)",
    ):
        wait_moving(
            lambda: (job("Running", 5), []),
            lambda j: False,
            "demo to finish",
            stall=0.2,
            every=0.05,
        )
