"""The evaluation gate, part by part, and the decision rules that compare scores.

The gate checks what it says: the task metric against the chosen baseline (by the
spec's margin), perplexity on general text and benchmark accuracy against their limits.
A part without data is `notChecked`, never `passed`; the gate passes when every checked
part passed and says nothing (passed unset) when no part could be checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.api.spec import EvaluationSpec

LOWER_IS_BETTER = ("loss", "perplexity")
FEW_SHOT_TARGET_SHARE = 0.8
"""When the few-shot baseline already reaches this share of the target, fine-tuning may
not be needed (the seeds' rule of thumb)."""


def _check(name: str, result: str, message: str) -> dict[str, str]:
    return {"name": name, "result": result, "message": message}


def task_check(
    ev: EvaluationSpec,
    baselines: Mapping[str, Mapping[str, float] | None],
    final: Mapping[str, float],
    missing: Mapping[str, str],
) -> dict[str, str]:
    """Tuned vs the chosen baseline on the gate's metric. `baselines` maps zeroShot,
    fewShot, previous to their metrics (None when not scored); `missing` says why a
    baseline was not scored."""
    metric, name, margin = ev.gate_metric(), ev.gate.baseline, ev.gate.margin
    base = baselines.get(name)
    if base is None:
        why = missing.get(name) or f"the {name} baseline was not scored"
        return _check("taskMetric", "notChecked", why)
    if metric not in base or metric not in final:
        side = "baseline" if metric not in base else "tuned model"
        return _check(
            "taskMetric",
            "notChecked",
            f"no {metric} for the {side} (the split it is scored on is empty,"
            " or the metric is not in evaluation.metrics)",
        )
    before, after = base[metric], final[metric]
    if metric in LOWER_IS_BETTER:
        ok, need = after <= before - margin, f"<= {before - margin:.4g}"
    else:
        ok, need = after >= before + margin, f">= {before + margin:.4g}"
    return _check(
        "taskMetric",
        "passed" if ok else "failed",
        f"{metric} {name} {before:.4g} -> tuned {after:.4g} (needs {need}, margin {margin:g})",
    )


def perplexity_check(ev: EvaluationSpec, forgetting: dict[str, Any] | None) -> dict[str, str]:
    f = ev.forgetting
    if f is None or f.source is None:
        return _check("perplexity", "notChecked", "no evaluation.forgetting.source")
    if forgetting is None:
        return _check(
            "perplexity",
            "notChecked",
            "no general-text rows left to score (empty after the contamination check)",
        )
    return _check(
        "perplexity",
        "passed" if forgetting["passed"] else "failed",
        f"general-text perplexity {forgetting['baselinePerplexity']:.4g} ->"
        f" {forgetting['tunedPerplexity']:.4g} ({forgetting['increasePercent']:+.2f}%,"
        f" limit {forgetting['limitPercent']:g}%)",
    )


def benchmark_check(ev: EvaluationSpec, results: list[dict[str, Any]]) -> dict[str, str]:
    f = ev.forgetting
    if f is None or not f.benchmarks:
        return _check("benchmarks", "notChecked", "no evaluation.forgetting.benchmarks")
    if not results:
        return _check("benchmarks", "notChecked", "the benchmarks were not scored")
    failed = [r for r in results if not r["passed"]]
    parts = [
        f"{r['name']} {r['baseline']:.3f} -> {r['tuned']:.3f} ({-r['dropPoints']:+.1f} pts)"
        for r in results
    ]
    return _check(
        "benchmarks",
        "failed" if failed else "passed",
        "; ".join(parts) + f" (limit -{f.max_accuracy_drop_percent:g} pts)",
    )


def gate(
    ev: EvaluationSpec,
    baselines: Mapping[str, Mapping[str, float] | None],
    final: Mapping[str, float],
    missing: Mapping[str, str],
    forgetting: dict[str, Any] | None,
    benchmarks: list[dict[str, Any]],
) -> dict[str, Any]:
    """status.evaluation.gate."""
    checks = [
        task_check(ev, baselines, final, missing),
        perplexity_check(ev, forgetting),
        benchmark_check(ev, benchmarks),
    ]
    checked = [c for c in checks if c["result"] != "notChecked"]
    out: dict[str, Any] = {
        "baseline": ev.gate.baseline,
        "metric": ev.gate_metric(),
        "margin": ev.gate.margin,
        "checks": checks,
    }
    if checked:
        out["passed"] = all(c["result"] == "passed" for c in checked)
    return out


def target_advice(ev: EvaluationSpec, few_shot: dict[str, float] | None) -> list[dict[str, Any]]:
    """The few-shot baseline against the spec's target (when both exist)."""
    target = ev.target
    if target is None or few_shot is None or target.metric not in few_shot:
        return []
    score = few_shot[target.metric]
    share = score / target.value
    shots = ev.few_shot.shots if ev.few_shot else 0
    if share >= FEW_SHOT_TARGET_SHARE:
        return [
            {
                "level": "warning",
                "code": "fewShotNearTarget",
                "message": (
                    f"the base model with {shots} shots already scores {target.metric}"
                    f" {score:.3g}, {share:.0%} of the target {target.value:g} (rule: within"
                    f" {FEW_SHOT_TARGET_SHARE:.0%}): few-shot prompting may be enough;"
                    " fine-tuning may not be needed"
                ),
                "value": round(share, 4),
                "threshold": FEW_SHOT_TARGET_SHARE,
            }
        ]
    return [
        {
            "level": "info",
            "code": "fewShotBelowTarget",
            "message": (
                f"the base model with {shots} shots scores {target.metric} {score:.3g},"
                f" {share:.0%} of the target {target.value:g}: prompting alone falls short,"
                " fine-tuning is warranted"
            ),
            "value": round(share, 4),
            "threshold": FEW_SHOT_TARGET_SHARE,
        }
    ]
