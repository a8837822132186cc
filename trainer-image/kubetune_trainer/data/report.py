"""The data report: what happened to the user's data, as JSON and as a log summary.

It answers the questions users ask after a disappointing run — how many rows were
actually used, what was dropped and why, how long the examples are, whether eval data
leaked into training, what template was used — and hashes the final training set so
two runs can be shown to have trained on the same tokens.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

REPORT_FILE = "data-report.json"

ADVICE = [
    (
        100,
        "error-prone",
        "fewer than 100 training examples: few-shot prompting or retrieval is "
        "likely to beat fine-tuning; collect more data before tuning",
    ),
    (
        500,
        "thin",
        "fewer than 500 training examples: thin for LoRA; expect a narrow effect and "
        "watch validation loss for overfitting",
    ),
    (
        10_000,
        "small-for-full",
        "fewer than 10,000 training examples: too few for a full fine-tune to pay off; prefer LoRA",
    ),
]
"""(threshold, code, message): the field's rules of thumb on dataset size."""


MIN_EVAL_ROWS = 10
"""Fewer evaluation rows than this make a score too coarse to compare (one row moves a
task metric by more than 10 points)."""
STAGE_WORDS = {
    "load": "no usable rows in the given source",
    "split": "too few rows were left after cleaning to hold out any",
    "contamination": "the contamination check removed every row (they overlap training)",
    "tokenisation": "every row was dropped at tokenisation (nothing left within maxSeqLength)",
}


def size_advice(n_train: int, method: str, objective: str = "sft") -> list[dict[str, Any]]:
    """Rules-of-thumb advice for a training set of `n_train` examples and `method`."""
    for limit, code, message in ADVICE:
        if n_train < limit:
            if code == "small-for-full" and method not in ("full", "auto"):
                return []
            level = "warning" if code != "small-for-full" or method == "full" else "info"
            unit = "training examples" if objective == "sft" else "preference pairs"
            return [
                {
                    "level": level,
                    "code": code,
                    "message": f"{message.replace('training examples', unit)} (this job:"
                    f" {n_train} {unit}, method {method})",
                    "value": n_train,
                    "threshold": limit,
                }
            ]
    return []


def split_advice(
    stages: dict[str, list[tuple[str, int]]],
    relied_on: dict[str, str],
    counts: dict[str, int],
) -> list[dict[str, Any]]:
    """Evaluation splits the job relies on that ended empty or too small to score, naming
    the stage that emptied them (`stages`: rows after each stage, in order)."""
    out: list[dict[str, Any]] = []
    for role, use in relied_on.items():
        trail = stages.get(role) or []
        if not trail:
            continue
        final = trail[-1][1]
        if final == 0:
            before = 0
            culprit = trail[0][0]
            for stage, rows in trail:
                if rows == 0:
                    culprit = stage
                    break
                before = rows
            cause = STAGE_WORDS[culprit]
            if culprit == "split":
                dropped = counts.get("exactDuplicates", 0) + counts.get("nearDuplicates", 0)
                if dropped:
                    cause += f" (deduplication removed {dropped} rows first)"
            elif before:
                cause += f" ({before} -> 0)"
            out.append(
                {
                    "level": "warning",
                    "code": "evaluationSplitEmpty",
                    "split": role,
                    "stage": culprit,
                    "message": (
                        f"the {role} split is empty after the {culprit} stage: {cause};"
                        f" without it this job runs with no {use}. Give spec.dataset.{role} as"
                        " a separate source, or add distinct rows, or relax spec.dataset.dedup"
                    ),
                    "value": 0,
                    "threshold": MIN_EVAL_ROWS,
                }
            )
        elif final < MIN_EVAL_ROWS:
            out.append(
                {
                    "level": "warning",
                    "code": "evaluationSplitSmall",
                    "split": role,
                    "message": (
                        f"the {role} split has only {final} rows: one row moves a score by"
                        f" {100 / final:.0f} points, too coarse for {use}; give more rows"
                        f" (spec.dataset.{role} or spec.dataset.split.{role})"
                    ),
                    "value": final,
                    "threshold": MIN_EVAL_ROWS,
                }
            )
    return out


def length_stats(lengths: list[int], trainable: list[int]) -> dict[str, Any]:
    """Token length statistics of one split."""
    if not lengths:
        return {"examples": 0, "total": 0, "trainable": 0}
    arr = np.asarray(lengths)
    return {
        "examples": len(lengths),
        "total": int(arr.sum()),
        "trainable": int(sum(trainable)),
        "mean": round(float(arr.mean()), 2),
        "p50": int(np.percentile(arr, 50)),
        "p95": int(np.percentile(arr, 95)),
        "max": int(arr.max()),
    }


def content_hash(ds: Dataset, columns: tuple[str, ...] = ("input_ids", "labels")) -> str:
    """sha256 over the token values and row boundaries of `columns`, in row order."""
    digest = hashlib.sha256()
    view = ds.select_columns(list(columns)).with_format("arrow")
    for batch in view.iter(batch_size=4096):
        assert isinstance(batch, pa.Table)
        for name in columns:
            column = batch.column(name).combine_chunks()
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
            digest.update(name.encode())
            digest.update(lengths.astype("<i8").tobytes())
            digest.update(values.astype("<i8").tobytes())
    return digest.hexdigest()


def content_hash_strings(ds: Dataset, columns: tuple[str, ...]) -> str:
    """sha256 over string columns, row by row (preference pairs)."""
    digest = hashlib.sha256()
    for row in ds.select_columns(list(columns)):
        for name in columns:
            digest.update(name.encode())
            digest.update(len(row[name]).to_bytes(8, "little"))
            digest.update(row[name].encode())
    return digest.hexdigest()


def write_report(out_dir: str | Path, report: dict[str, Any]) -> Path:
    path = Path(out_dir) / REPORT_FILE
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def summary(report: dict[str, Any]) -> str:
    """A few human lines for the pod log."""
    c = report["counts"]
    tok = report["tokens"].get("train", {})
    lines = [
        f"data: format {report['format']}, template {report['template']['source']}",
        f"data: {c['raw']} rows read, {c['malformed']} malformed, {c['piiRows']} with PII "
        f"({report['pii']['mode']}), {c['exactDuplicates']} exact + {c['nearDuplicates']} near "
        f"duplicates, {c['contaminated']} contaminated eval rows removed",
        f"data: train {c['train']} / validation {c['validation']} / test {c['test']} examples; "
        f"{c['truncated']} truncated, {c['truncatedAway']} dropped (nothing left to learn)",
    ]
    if tok.get("examples"):
        lines.append(
            f"data: train tokens {tok['total']} ({tok['trainable']} trained on), length mean "
            f"{tok['mean']} p50 {tok['p50']} p95 {tok['p95']} max {tok['max']}"
        )
    if report["packing"].get("enabled"):
        p = report["packing"]
        lines.append(
            f"data: packed into {p['sequences']} sequences, efficiency {p['efficiency']:.1%}"
        )
    lines += [f"data: {a['level']}: {a['message']}" for a in report["advice"]]
    lines.append(f"data: train sha256 {report['sha256']}")
    return "\n".join(lines)
