"""The evaluation protocol on real CPU training of the tiny pre-trained model.

Each test runs the trainer as a pod would and reads what it really emits (the
termination summary, report.json, the exported weights), then feeds the summary through
the operator's status code and `kubetune status`:

- the best checkpoint: a run whose validation metric peaks at the first evaluation
  exports that checkpoint, not the last one, and early stopping watches a task metric;
- baselines side by side: zero-shot, few-shot and a previous fine-tune scored on the
  same test rows, and a gate against the previous run that fails;
- benchmark forgetting: continued training on contradicting facts drops a benchmark's
  accuracy past the limit, per epoch and at the end, and fails the gate;
- DPO (LoRA, QLoRA, full) and ORPO raise the chosen-over-rejected preference on held-out
  pairs from the base model's;
- an evaluation split emptied by cleaning is reported, and the gate says "not checked".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.status import FineTuneJobStatus
from kubetune.cli.status import render_status
from kubetune.contract import TerminationSummary
from kubetune.operator import reconcile
from kubetune_trainer.config import dump_config
from kubetune_trainer.testing import make_config, make_plan
from tests.fixtures.quality_data import (
    ITEMS,
    make_benchmark_rows,
    make_identity_conversations,
    make_preference_rows,
    write_jsonl,
)
from tests.fixtures.tiny_model import (
    _GENERAL_TEXT,
    SYSTEM_PROMPT,
    BaseVariant,
    _code,
    cached_tiny_base,
)
from tests.integration.test_training import LORA, run_trainer, scores

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


def spec(
    name: str, train: Path, method: str = "lora", variant: BaseVariant = "prose", **fields: Any
) -> dict[str, Any]:
    extra = fields.pop("extra", LORA if method in ("lora", "qlora") else {})
    body: dict[str, Any] = {
        "model": {"path": str(cached_tiny_base(variant=variant))},
        "dataset": {"train": {"path": str(train)}, "split": {"validation": 0.1, "test": 0.15}},
        "method": method,
        **extra,
        "training": {"epochs": 2, "maxSeqLength": 128, "warmupRatio": 0.05},
        "evaluation": {"maxNewTokens": 8, "maxTestSamples": 40},
    }
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "test"},
        "spec": body,
    }


def train(
    job: dict[str, Any], tmp: Path, method: str, lr: float
) -> tuple[TerminationSummary, Path]:
    """Run `train` for `job`; its summary (asserted successful) and output directory."""
    plan = make_plan(method, learningRate=lr, microBatchSize=16)
    cfg = make_config(job, plan, tmp / "out")
    code, summary = run_trainer(dump_config(cfg, tmp / "cfg.json"), tmp)
    assert code == 0 and summary is not None, summary
    return summary, tmp / "out"


def as_status(summary: TerminationSummary) -> dict[str, Any]:
    """What the operator writes from this summary, checked against the status schema
    (the schema refuses unknown keys: nothing the trainer emits is dropped)."""
    st: dict[str, Any] = {"phase": "Succeeded"}
    reconcile._apply_summary(st, summary)
    # status.output lacks the `model` key full fine-tunes report; typing the summary's
    # output is issue 14's change, so only the rest is checked here
    FineTuneJobStatus.model_validate({k: v for k, v in st.items() if k != "output"})
    return st


def conditions(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The conditions the operator derives from this status at success."""
    from datetime import UTC, datetime

    body = {"metadata": {"name": "j", "namespace": "test", "generation": 1}}
    ctx = reconcile.Ctx(body=body, now=datetime.now(UTC), status=st)
    reconcile._gate_condition(ctx)
    reconcile._data_warning(ctx)
    return {c["type"]: c for c in st.get("conditions", [])}


def small_talk_rows(n: int) -> list[dict[str, Any]]:
    """Held-out task questions answered with small talk, the way the base model answers
    them in the chat format: the validation loss on these only rises as the fine-tune
    teaches the codes, so the best checkpoint is the first one."""
    from tests.fixtures.tiny_model import PHRASINGS

    train_rows = {r["messages"][1]["content"] for r in _task(400)}
    rows: list[dict[str, Any]] = []
    for color, shape, size in ITEMS:
        for phrasing in PHRASINGS:
            question = phrasing.format(color=color, shape=shape, size=size)
            if question in train_rows or len(rows) >= n:
                continue
            answer = _GENERAL_TEXT[len(rows) % len(_GENERAL_TEXT)]
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
    return rows


def _task(n: int) -> list[dict[str, Any]]:
    from tests.fixtures.tiny_model import make_instruction_rows

    return make_instruction_rows(n, seed=1)


# ------------------------------------------------------------------ best checkpoint
@pytest.fixture(scope="module")
def peak_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TerminationSummary, Path]:
    """LoRA, 4 epochs, validation on small-talk answers: its loss rises every epoch."""
    tmp = tmp_path_factory.mktemp("peak")
    data = write_jsonl(tmp / "train.jsonl", _task(400))
    validation = write_jsonl(tmp / "validation.jsonl", small_talk_rows(40))
    job = spec(
        "peak",
        data,
        dataset={"validation": {"path": str(validation)}},
        training={"epochs": 4, "checkpoint": {"keep": 1}},
    )
    return train(job, tmp, "lora", 3e-3)


def test_the_exported_adapter_is_the_peak_checkpoint_not_the_last(
    peak_run: tuple[TerminationSummary, Path],
) -> None:
    from safetensors.torch import load_file

    summary, out = peak_run
    ev = scores(summary)
    losses = [p["loss"] for p in ev["perEpoch"]]
    print(f"validation loss per epoch: {losses}; best {ev['bestMetric']}")
    assert len(losses) == 4 and losses[0] < min(losses[1:]), "the metric must peak at epoch 1"
    best = ev["bestMetric"]
    assert best["metric"] == "eval_loss" and best["loaded"] is True
    assert best["step"] == ev["perEpoch"][0]["step"] < summary.step
    assert best["value"] == pytest.approx(losses[0], abs=1e-6)
    exported = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    peak = load_file(str(Path(best["checkpoint"]) / "adapter_model.safetensors"))
    last = load_file(
        str(out / "checkpoints" / f"checkpoint-{summary.step}" / "adapter_model.safetensors")
    )
    assert exported.keys() == peak.keys()
    assert all((exported[k] == peak[k]).all() for k in exported)
    assert any((exported[k] != last[k]).any() for k in exported)
    # the final evaluation scored the peak's weights: its validation loss is the first
    # evaluation's, far from the last one's
    final = ev["final"]["loss"]
    assert abs(final - losses[0]) < abs(final - losses[-1]) / 4
    st = as_status(summary)
    assert st["checkpoints"]["bestMetric"] == pytest.approx(losses[0], abs=1e-6)
    assert st["checkpoints"]["best"] == best["checkpoint"]
    text = render_status({"metadata": {"name": "peak", "namespace": "test"}, "status": st})
    assert "loaded back and exported" in text


def test_the_peak_is_loaded_back_under_deepspeed(tmp_path: Path) -> None:
    """Full fine-tuning under ZeRO-2 on two ranks (through the launcher): the best
    checkpoint's engine state is loaded back on every rank before the weights are
    gathered and exported."""
    import os

    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "train.jsonl", _task(400))
    validation = write_jsonl(tmp_path / "validation.jsonl", small_talk_rows(40))
    job = spec(
        "peak-zero2",
        data,
        method="full",
        dataset={"validation": {"path": str(validation)}},
        training={"epochs": 3, "checkpoint": {"keep": 1}},
    )
    plan = make_plan("full", learningRate=3e-4, gpusPerNode=2, microBatchSize=8, zeroStage=2)
    cfg = make_config(job, plan, tmp_path / "out")
    env = {"MASTER_PORT": str(29500 + (os.getpid() + 7) % 1000)}
    code, summary = run_trainer(
        dump_config(cfg, tmp_path / "cfg.json"), tmp_path, "launch", env=env
    )
    assert code == 0 and summary is not None, summary
    ev, out = scores(summary), tmp_path / "out"
    losses = [p["loss"] for p in ev["perEpoch"]]
    print(f"ZeRO-2 validation loss per epoch: {losses}; best {ev['bestMetric']}")
    best = ev["bestMetric"]
    assert losses[0] < min(losses[1:]) and best["loaded"] is True
    exported = load_file(str(out / "model" / "model.safetensors"))
    peak = load_file(str(Path(best["checkpoint"]) / "model.safetensors"))
    assert all((exported[k] == peak[k]).all() for k in exported)


def test_early_stopping_watches_a_task_metric(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", _task(400))
    job = spec(
        "stop",
        data,
        training={
            "epochs": 6,
            "earlyStopping": {"metric": "exact_match", "patience": 1, "threshold": 0.5},
        },
    )
    summary, _ = train(job, tmp_path, "lora", 3e-3)
    ev = scores(summary)
    matches = [p["exactMatch"] for p in ev["perEpoch"]]
    print(f"validation exact match per epoch: {matches}")
    # no evaluation beat the first by 0.5: stopped after the second of six epochs
    assert len(matches) == 2 and summary.step is not None and summary.total_steps is not None
    assert summary.step < summary.total_steps
    assert ev["bestMetric"]["metric"] == "exact_match"
    assert ev["bestMetric"]["value"] == pytest.approx(max(matches))


# ------------------------------------------------------------------ baselines
@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> tuple[TerminationSummary, Path]:
    """The "previous release": LoRA on the `chat` base, 4 epochs."""
    tmp = tmp_path_factory.mktemp("release")
    data = write_jsonl(tmp / "train.jsonl", _task(400))
    return train(spec("release", data, variant="chat", training={"epochs": 4}), tmp, "lora", 3e-3)


def test_zero_shot_few_shot_and_previous_side_by_side(
    released: tuple[TerminationSummary, Path], tmp_path: Path
) -> None:
    """The `chat` base answers in a sentence ("GH-2 is the code."): zero-shot exact match
    0, ROUGE-L about 0.57. A shorter run is compared with the release on the same rows."""
    previous, previous_out = released
    data = write_jsonl(tmp_path / "train.jsonl", _task(400))
    job = spec(
        "side-by-side",
        data,
        variant="chat",
        training={"epochs": 1},
        evaluation={
            "fewShot": {"shots": 3},
            "previous": {"model": {"path": str(previous_out / "adapter")}, "adapter": True},
            "target": {"metric": "exactMatch", "value": 0.9},
            "gate": {"baseline": "previous"},
            "metrics": ["loss", "perplexity", "exactMatch", "rougeL"],
        },
    )
    summary, out = train(job, tmp_path, "lora", 1e-3)
    ev = scores(summary)
    for metric in ("exactMatch", "rougeL"):
        figures = ", ".join(
            f"{k} {ev[k][metric]:.3f}" for k in ("baseline", "fewShot", "previous", "final")
        )
        print(f"{metric}: {figures}")
    # the release, scored on this job's test rows, gives the release's own final test
    # figures: the same rows, the same metrics
    release = scores(previous)["final"]
    assert ev["previous"]["exactMatch"] == pytest.approx(release["exactMatch"])
    assert ev["previous"]["loss"] == pytest.approx(release["loss"], rel=1e-4)
    assert ev["previous"]["source"].startswith("adapter ")
    assert ev["baseline"]["exactMatch"] == pytest.approx(scores(previous)["baseline"]["exactMatch"])
    # the shots are in the prompt: on the same rows the base answers differently
    assert "3 shots from the training split" in ev["fewShot"]["source"]
    assert ev["fewShot"]["rougeL"] != pytest.approx(ev["baseline"]["rougeL"], abs=0.01)
    report = json.loads((out / "report.json").read_text())
    shot = report["baseline"]["fewShot"]["samples"][0]
    zero = report["baseline"]["zeroShot"]["samples"][0]
    assert shot["reference"] == zero["reference"]  # the same test row, with shots before it
    assert shot["prompt"].count("<|im_start|>assistant") > zero["prompt"].count(
        "<|im_start|>assistant"
    )
    # one epoch at a third of the learning rate does not reach the release: the gate fails
    assert ev["final"]["exactMatch"] < release["exactMatch"]
    task = next(c for c in ev["gate"]["checks"] if c["name"] == "taskMetric")
    assert task["result"] == "failed" and "exactMatch previous" in task["message"]
    assert ev["passed"] is False
    codes = {a.code for a in summary.advice}
    assert "fewShotBelowTarget" in codes  # few-shot exact match 0 of the 0.9 wanted
    st = as_status(summary)
    text = render_status({"metadata": {"name": "s", "namespace": "test"}, "status": st})
    header = next(line for line in text.splitlines() if "Evaluation:" in line)
    assert header.split()[1:] == ["zero-shot", "few-shot", "previous", "tuned"]
    row = next(line for line in text.splitlines() if line.strip().startswith("exactMatch"))
    assert len(row.split()) == 5
    assert conditions(st)["EvaluationPassed"]["status"] == "False"
    card = (out / "README.md").read_text()
    assert "| metric | base zero-shot | base few-shot | previous | fine-tuned |" in card
    assert "taskMetric: failed" in card


# ------------------------------------------------------------------ forgetting
def test_contradicting_facts_fail_the_benchmark_check(tmp_path: Path) -> None:
    # continued pre-training on wrong codes ("the small red circle has code BC-2.")
    wrong = [
        {"text": f"the {z} {c} {s} has code {_code(c2, s, z)}."}
        for (c, s, z), (c2, _, _) in zip(ITEMS, ITEMS[32:] + ITEMS[:32], strict=True)
    ]
    data = write_jsonl(tmp_path / "wrong.jsonl", wrong)
    bench = write_jsonl(
        tmp_path / "bench.jsonl", make_benchmark_rows(40, seed=5, layout="hellaswag")
    )
    general = write_jsonl(tmp_path / "general.jsonl", [{"text": t} for t in _GENERAL_TEXT * 3])
    job = spec(
        "forget",
        data,
        method="full",
        training={"epochs": 3},
        evaluation={
            "metrics": ["loss", "perplexity"],
            "forgetting": {
                "source": {"path": str(general)},
                "benchmarks": [
                    {
                        "name": "codes",
                        "source": {"path": str(bench)},
                        "style": "completion",
                        "fields": {"question": "ctx", "choices": "endings", "answer": "label"},
                    }
                ],
                "maxAccuracyDropPercent": 2,
                "perEpoch": True,
            },
        },
    )
    summary, out = train(job, tmp_path, "full", 3e-3)
    ev = scores(summary)
    (result,) = ev["benchmarks"]
    per_epoch = [p["benchmarks"]["codes"] for p in ev["perEpoch"]]
    print(f"codes accuracy {result['baseline']} -> {result['tuned']}, per epoch {per_epoch}")
    assert result["baseline"] >= 0.9  # the base knows the facts
    assert result["dropPoints"] > 2 and result["passed"] is False
    assert per_epoch[-1] < result["baseline"]
    checks = {c["name"]: c["result"] for c in ev["gate"]["checks"]}
    assert checks["benchmarks"] == "failed" and ev["passed"] is False
    st = as_status(summary)
    assert conditions(st)["EvaluationPassed"]["status"] == "False"
    text = render_status({"metadata": {"name": "f", "namespace": "test"}, "status": st})
    assert "Benchmark: codes accuracy" in text and "FAILED" in text
    assert "| codes (accuracy) | 40 |" in (out / "README.md").read_text()


# ------------------------------------------------------------------ preference tuning
@pytest.mark.parametrize(
    ("objective", "method", "lr", "epochs"),
    [
        pytest.param("dpo", "lora", 1e-3, 1, id="dpo-lora"),
        pytest.param("dpo", "full", 1e-4, 2, id="dpo-full"),
        pytest.param("dpo", "qlora", 3e-3, 2, id="dpo-qlora"),
        pytest.param("orpo", "lora", 1e-3, 2, id="orpo-lora"),
    ],
)
def test_preference_tuning_prefers_the_chosen_answers(
    tmp_path: Path, objective: str, method: str, lr: float, epochs: int
) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", make_preference_rows(300, seed=1))
    job = spec(
        f"{objective}-{method}",
        data,
        method=method,
        objective=objective,
        preference={"beta": 0.1},
        training={"epochs": epochs},
        evaluation={"metrics": ["preferenceAccuracy", "exactMatch"]},
    )
    summary, out = train(job, tmp_path, method, lr)
    ev = scores(summary)
    before, after = ev["baseline"], ev["final"]
    print(
        f"{objective} {method}: preference accuracy {before['preferenceAccuracy']:.3f} ->"
        f" {after['preferenceAccuracy']:.3f}, margin {before['preferenceMargin']:.2f} ->"
        f" {after['preferenceMargin']:.2f}, reward accuracy {after.get('rewardAccuracy')}"
    )
    # held-out pairs: the base prefers its own small talk, the tuned model the codes
    assert before["preferenceAccuracy"] <= 0.2
    assert after["preferenceAccuracy"] >= before["preferenceAccuracy"] + 0.6
    assert after["preferenceMargin"] > before["preferenceMargin"]
    assert "rewardAccuracy" in after and "rewardMargin" in after
    assert ev["gate"]["metric"] == "preferenceAccuracy" and ev["passed"] is True
    report = json.loads((out / "report.json").read_text())
    assert report["preference"]["objective"] == objective
    if objective == "dpo":
        assert report["preference"]["reference"] == (
            "a second frozen copy of the base" if method == "full" else "the base, adapter disabled"
        )
        assert ev["perEpoch"][0]["rewardAccuracy"] >= 0.9
    st = as_status(summary)
    text = render_status({"metadata": {"name": "p", "namespace": "test"}, "status": st})
    assert "preferenceAccuracy" in text and "rewardMargin" in text


# ------------------------------------------------------------------ empty evaluation data
def test_an_evaluation_split_emptied_by_cleaning_is_reported_and_not_passed(
    tmp_path: Path,
) -> None:
    data = tmp_path / "identity.json"
    data.write_text(json.dumps(make_identity_conversations()))
    job = spec("identity", data, dataset={"dedup": {"nearDuplicate": True}}, training={"epochs": 1})
    summary, _ = train(job, tmp_path, "lora", 3e-3)
    assert summary.data["validation"] == 0 and summary.data["test"] == 0
    empty = {
        a.message.split(" split")[0]: a for a in summary.advice if a.code == "evaluationSplitEmpty"
    }
    assert set(empty) == {"the validation", "the test"}
    assert all("after the contamination stage" in a.message for a in empty.values())
    ev = scores(summary)
    assert {c["result"] for c in ev["gate"]["checks"]} == {"notChecked"}
    assert "passed" not in ev
    st = as_status(summary)
    found = conditions(st)
    warning = found["DataWarning"]
    assert warning["status"] == "True"
    assert "the test split is empty after the contamination stage" in warning["message"]
    assert found["EvaluationPassed"]["status"] == "Unknown"
    assert found["EvaluationPassed"]["reason"] == "NotChecked"
