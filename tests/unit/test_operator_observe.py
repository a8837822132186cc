"""Classifying an attempt from its Job and pods, and the status helpers."""

from __future__ import annotations

import json
from typing import Any

from kubetune.api.phases import Phase
from kubetune.contract import ExitCode
from kubetune.operator.conditions import set_condition, with_kstatus
from kubetune.operator.observe import observe
from kubetune.operator.statusdiff import merge_patch


def job(*conds: str, suspend: bool = False, parallelism: int = 2) -> dict[str, Any]:
    return {
        "spec": {"parallelism": parallelism, "suspend": suspend},
        "status": {"conditions": [{"type": t, "status": "True"} for t in conds]},
    }


def pod(index: int, phase: str = "Running", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"tiny-a1-{index}",
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": {"phase": phase, **status},
    }


def terminated(code: int, reason: str = "Error", message: str = "") -> dict[str, Any]:
    return {
        "containerStatuses": [
            {"state": {"terminated": {"exitCode": code, "reason": reason, "message": message}}}
        ]
    }


def test_absent_queued_pending_running() -> None:
    assert observe(None, []).state == "absent"
    assert observe(job(suspend=True), []).state == "queued"
    assert observe(job(), [pod(0), pod(1, "Pending")]).state == "pending"
    assert observe(job(), [pod(0), pod(1)]).state == "running"


def test_unschedulable_names_the_missing_resource() -> None:
    stuck = pod(
        0,
        "Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/7 nodes are available: 7 Insufficient nvidia.com/gpu.",
            }
        ],
    )
    seen = observe(job(), [stuck])
    assert seen.state == "stuck" and seen.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in seen.message


def test_image_pull_backoff_is_stuck() -> None:
    waiting = pod(
        0,
        "Pending",
        containerStatuses=[
            {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}
        ],
    )
    seen = observe(job(), [waiting])
    assert (seen.state, seen.reason) == ("stuck", "ImagePullBackOff")


def test_a_rank_killed_by_a_signal_says_so_not_its_last_log_line() -> None:
    """A SIGKILLed trainer writes no summary; with FallbackToLogsOnError the message is
    the log's tail (a loss dict), which the status used to show as the cause."""
    tail = "{'loss': '1.467', 'grad_norm': '0.82', 'learning_rate': '0.0002', 'epoch': '0.4'}"
    seen = observe(job(), [pod(0), pod(1, "Failed", **terminated(137, message=tail))])
    assert seen.state == "failed" and seen.exit_code == ExitCode.RETRYABLE
    assert seen.message == "pod tiny-a1-1 (rank 1) exited 137 (Error): killed by signal 9 (SIGKILL)"
    # a summary, when the trainer wrote one, still wins over the exit code
    summary = json.dumps({"exitCode": 6, "reason": "Preempted", "message": "SIGTERM at step 7"})
    seen = observe(job(), [pod(0, "Failed", **terminated(143, message=summary))])
    assert seen.message.endswith(": SIGTERM at step 7") and seen.reason == "Preempted"


def test_success_reads_rank0_summary() -> None:
    summary = json.dumps(
        {
            "reason": "Completed",
            "step": 40,
            "checkpoints": {"latest": "/o/ckpt-40", "latestStep": 40},
        }
    )
    seen = observe(
        job("Complete"),
        [pod(1, "Succeeded", **terminated(0)), pod(0, "Succeeded", **terminated(0, "", summary))],
    )
    assert seen.state == "succeeded"
    assert seen.summary is not None and seen.summary.step == 40


def test_failure_prefers_the_rank_that_explains_itself() -> None:
    bad = json.dumps({"reason": "BadInput", "message": "train.jsonl:7: invalid JSON"})
    seen = observe(
        job("Failed"),
        [pod(0, "Failed", **terminated(137)), pod(1, "Failed", **terminated(2, "Error", bad))],
    )
    assert seen.state == "failed"
    assert seen.exit_code == ExitCode.BAD_INPUT and not seen.exit_code.retryable
    assert "train.jsonl:7" in seen.message and seen.reason == "BadInput"


def test_signals_are_retryable_and_oom_is_recognised() -> None:
    killed = observe(job("Failed"), [pod(0, "Failed", **terminated(137))])
    assert killed.exit_code == ExitCode.RETRYABLE and killed.exit_code.retryable
    oom = observe(job("Failed"), [pod(0, "Failed", **terminated(137, "OOMKilled"))])
    # the kernel's OOM killer: host memory, which the operator tells apart from the GPU's
    assert oom.exit_code == ExitCode.OOM and oom.reason == "HostOutOfMemory"
    assert "out of host memory" in oom.message


def test_evicted_pod_is_retryable() -> None:
    seen = observe(job(), [pod(0, "Failed", reason="Evicted", message="node lost")])
    assert seen.reason == "Evicted" and seen.exit_code == ExitCode.RETRYABLE


def test_condition_transition_time_moves_only_on_change() -> None:
    conds = set_condition([], "Running", True, "Running", "", 1, "t1")
    conds = set_condition(conds, "Running", True, "Running", "again", 1, "t2")
    assert conds[0]["lastTransitionTime"] == "t1"
    conds = set_condition(conds, "Running", False, "Done", "", 1, "t3")
    assert conds[0]["lastTransitionTime"] == "t3"


def test_kstatus_trio() -> None:
    def state(phase: str) -> dict[str, str]:
        conds = with_kstatus([], Phase(phase), "r", "m", 1, "t")
        return {x["type"]: x["status"] for x in conds}

    assert state("Succeeded")["Ready"] == "True"
    assert state("Running")["Reconciling"] == "True"
    assert state("Failed")["Stalled"] == "True" and state("Failed")["Reconciling"] == "False"
    assert state("Suspended")["Suspended"] == "True"
    # kstatus reads Ready=False as InProgress: a job suspended as asked is at rest.
    assert state("Suspended")["Ready"] == "True" and state("Suspended")["Reconciling"] == "False"
    for phase in Phase:
        s = state(phase)
        assert not (s["Reconciling"] == s["Stalled"] == "True"), phase
    stalled = {
        x["type"]: x["status"] for x in with_kstatus([], Phase.PENDING, "r", "m", 1, "t", True)
    }
    assert stalled["Stalled"] == "True" and stalled["Reconciling"] == "False"


def test_merge_patch_only_changes_and_nulls_removed_keys() -> None:
    old = {"phase": "Running", "plan": {"method": "lora", "pool": "a"}, "x": 1}
    new = {"phase": "Running", "plan": {"method": "qlora", "pool": "a"}}
    assert merge_patch(old, new) == {"plan": {"method": "qlora"}, "x": None}
    assert merge_patch(new, new) == {}


def test_termination_summary_parts_reach_status_unchanged() -> None:
    """The summary is typed with the status's models: what the trainer reports (a full
    fine-tune's model, object-store and Hub copies, its forgetting verdict) is copied
    as it is, never re-keyed or recomputed by the operator."""
    from kubetune.api.status import (
        CheckpointStatus,
        EvalMetrics,
        EvaluationStatus,
        FineTuneJobStatus,
        ForgettingStatus,
        OutputStatus,
        Progress,
    )
    from kubetune.contract import TerminationSummary
    from kubetune.operator.reconcile import _apply_summary

    summary = TerminationSummary(
        reason="Completed",
        step=120,
        total_steps=120,
        progress=Progress(step=120, loss=0.4, tokens_per_second=3600.0),
        checkpoints=CheckpointStatus(latest="/out/checkpoints/checkpoint-120", latest_step=120),
        evaluation=EvaluationStatus(
            baseline=EvalMetrics(loss=5.2, perplexity=180.0, exact_match=0.0),
            final=EvalMetrics(loss=0.01, perplexity=1.01, exact_match=1.0, rouge_l=1.0),
            # The trainer's verdict, even where the figures alone would say otherwise.
            forgetting=ForgettingStatus(
                baseline_perplexity=40.0,
                tuned_perplexity=41.0,
                increase_percent=2.5,
                limit_percent=3.0,
                passed=False,
            ),
            passed=False,
        ),
        output=OutputStatus(
            model="/out/model",
            loss_curve="/out/loss.png",
            object_store="s3://bucket/jobs/x",
            hub="https://huggingface.co/acme/x",
        ),
        data={"raw": 400, "train": 300},
    )
    st: dict[str, object] = {"progress": {"step": 100, "updatedAt": "2026-01-01T00:00:00Z"}}
    _apply_summary(st, summary)
    status = FineTuneJobStatus.model_validate(st)
    assert status.output == summary.output
    assert status.evaluation == summary.evaluation
    assert status.checkpoints == summary.checkpoints
    assert status.data == summary.data
    assert st["output"] == {
        "model": "/out/model",
        "lossCurve": "/out/loss.png",
        "objectStore": "s3://bucket/jobs/x",
        "hub": "https://huggingface.co/acme/x",
    }
    assert status.progress is not None and status.progress.percent == 100.0
    assert status.progress.loss == 0.4 and status.progress.updated_at == "2026-01-01T00:00:00Z"
