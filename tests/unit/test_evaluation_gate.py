"""The evaluation gate checks what it says, part by part; the few-shot-vs-target rule;
the termination summary keeps its most important figures when it must shrink."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune.api.spec import EvaluationSpec
from kubetune.contract import TerminationSummary
from kubetune_trainer import gate, termination
from kubetune_trainer.benchmarks import verdict
from kubetune_trainer.evaluation import forgetting


def ev(**fields: Any) -> EvaluationSpec:
    return EvaluationSpec.model_validate(fields)


def results(check: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["result"] for c in check["checks"]}


def test_without_any_data_nothing_is_passed() -> None:
    # no zero-shot baseline, no forgetting source, no benchmarks: "not checked", never passed
    g = gate.gate(ev(compareBaseline=False), {}, {"exactMatch": 0.9}, {}, None, [])
    assert results(g) == {
        "taskMetric": "notChecked",
        "perplexity": "notChecked",
        "benchmarks": "notChecked",
    }
    assert "passed" not in g


def test_task_metric_against_the_chosen_baseline_and_margin() -> None:
    spec = ev(fewShot={"shots": 2}, gate={"baseline": "fewShot", "margin": 0.1})
    bases: dict[str, dict[str, Any] | None] = {
        "zeroShot": {"exactMatch": 0.0},
        "fewShot": {"exactMatch": 0.5},
        "previous": None,
    }
    ok = gate.gate(spec, bases, {"exactMatch": 0.6}, {}, None, [])
    assert results(ok)["taskMetric"] == "passed" and ok["passed"] is True
    short = gate.gate(spec, bases, {"exactMatch": 0.55}, {}, None, [])
    assert results(short)["taskMetric"] == "failed" and short["passed"] is False
    assert "fewShot 0.5 -> tuned 0.55 (needs >= 0.6" in short["checks"][0]["message"]


def test_loss_must_fall_by_the_margin() -> None:
    spec = ev(metrics=["loss"], gate={"margin": 0.5})
    assert spec.gate_metric() == "loss"
    base: dict[str, dict[str, Any] | None] = {"zeroShot": {"loss": 3.0}}
    g = gate.gate(spec, base, {"loss": 2.6}, {}, None, [])
    assert results(g)["taskMetric"] == "failed"
    g = gate.gate(spec, base, {"loss": 2.4}, {}, None, [])
    assert results(g)["taskMetric"] == "passed"


def test_a_missing_split_or_baseline_is_not_checked_with_the_reason() -> None:
    spec = ev(previous={"job": "older"}, gate={"baseline": "previous"})
    why = {"previous": "job older was not resolved"}
    g = gate.gate(spec, {"previous": None}, {"exactMatch": 1.0}, why, None, [])
    assert g["checks"][0] == {
        "name": "taskMetric",
        "result": "notChecked",
        "message": why["previous"],
    }
    # an empty test split: the tuned model has no exact match to compare
    g = gate.gate(ev(), {"zeroShot": {"loss": 2.0}}, {"loss": 1.0}, {}, None, [])
    assert results(g)["taskMetric"] == "notChecked"
    assert "no exactMatch" in g["checks"][0]["message"]


def test_forgetting_parts_fail_the_gate_only_when_checked() -> None:
    spec = ev(
        forgetting={
            "source": {"path": "/general.jsonl"},
            "benchmarks": [{"name": "mmlu", "source": {"path": "/mmlu.jsonl"}}],
            "maxAccuracyDropPercent": 2,
        }
    )
    base, final = {"zeroShot": {"exactMatch": 0.0}}, {"exactMatch": 0.8}
    ppl = forgetting(10.0, 10.2, 3.0)
    drop = verdict("mmlu", "accuracy", 0.60, 0.55, 200, 2.0)
    assert drop["dropPoints"] == pytest.approx(5.0) and drop["passed"] is False
    g = gate.gate(spec, base, final, {}, ppl, [drop])
    assert results(g) == {"taskMetric": "passed", "perplexity": "passed", "benchmarks": "failed"}
    assert g["passed"] is False
    # the forgetting rows were all contaminated: perplexity is not checked, not passed
    g = gate.gate(spec, base, final, {}, None, [verdict("mmlu", "accuracy", 0.6, 0.6, 200, 2)])
    assert results(g)["perplexity"] == "notChecked" and g["passed"] is True


def test_few_shot_close_to_the_target_says_fine_tuning_may_not_be_needed() -> None:
    spec = ev(fewShot={"shots": 3}, target={"metric": "exactMatch", "value": 0.8})
    near = gate.target_advice(spec, {"exactMatch": 0.72})
    assert near[0]["code"] == "fewShotNearTarget" and near[0]["level"] == "warning"
    assert "90% of the target 0.8" in near[0]["message"]
    far = gate.target_advice(spec, {"exactMatch": 0.2})
    assert far[0]["code"] == "fewShotBelowTarget" and far[0]["level"] == "info"
    assert gate.target_advice(ev(fewShot={"shots": 3}), {"exactMatch": 0.7}) == []


def test_a_big_summary_shrinks_oldest_epochs_first_and_keeps_the_gate() -> None:
    per_epoch = [
        {"loss": 1.0 / (i + 1), "exactMatch": i / 100, "epoch": float(i), "step": 10 * i}
        for i in range(60)
    ]
    checks = [{"name": "taskMetric", "result": "passed", "message": "x" * 400}]
    summary = TerminationSummary(
        reason="Completed",
        evaluation={
            "baseline": {"loss": 5.0, "exactMatch": 0.0},
            "final": {"loss": 0.1, "exactMatch": 0.9},
            "perEpoch": per_epoch,
            "gate": {"passed": True, "checks": checks},
            "passed": True,
        },
        output={
            key: "/out/" + "p" * 80
            for key in ("adapter", "merged", "report", "dataReport", "lossCurve")
        },
    )
    raw = termination.render(summary)
    assert len(raw) <= termination.LIMIT
    doc = json.loads(raw)["evaluation"]
    assert doc["passed"] is True and doc["gate"]["passed"] is True
    assert doc["final"]["exactMatch"] == 0.9
    kept = doc["perEpoch"]
    assert 1 <= len(kept) < 60 and kept[-1]["step"] == 590  # the newest survive
