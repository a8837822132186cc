"""kubetune against the reference tools it is measured by.

- The multiple-choice scorer against EleutherAI's lm-evaluation-harness: the same rows,
  the same model, the harness's own task definitions for the three layouts (ARC-style
  question/answer, HellaSwag-style completion, MMLU-style lettered choices): every
  choice's log-likelihood must match the harness's, and so must accuracy and
  length-normalised accuracy.
- The data preparation benchmark against TRL's own (`benchmarks/data_pipeline.py`): its
  smoke run, and its equality check failing when one label differs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.spec import BenchmarkSpec
from kubetune_trainer import benchmarks
from tests.fixtures.quality_data import make_benchmark_rows, write_jsonl
from tests.fixtures.tiny_model import cached_tiny_base

pytestmark = [pytest.mark.trainer, pytest.mark.slow]

STYLES = [
    # layout, our spec (style + fields), the harness's task template
    pytest.param(
        "arc",
        {"style": "question", "fields": {"answer": "answerKey"}},
        {
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_choice": "{{choices.text}}",
            "doc_to_target": "{{choices.label.index(answerKey)}}",
        },
        id="arc-question",
    ),
    pytest.param(
        "hellaswag",
        {
            "style": "completion",
            "fields": {"question": "ctx", "choices": "endings", "answer": "label"},
        },
        {"doc_to_text": "{{ctx}}", "doc_to_choice": "{{endings}}", "doc_to_target": "{{label}}"},
        id="hellaswag-completion",
    ),
    pytest.param(
        "mmlu",
        {"style": "letters"},
        {
            "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\n"
            "C. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "{{answer}}",
        },
        id="mmlu-letters",
    ),
]


@pytest.fixture(scope="module")
def model() -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = cached_tiny_base()
    return AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)


def harness(model: Any, tokenizer: Any, path: Path, template: dict[str, Any]) -> dict[str, Any]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    task = {
        "task": f"kubetune_{path.stem}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        **template,
    }
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
    out = simple_evaluate(model=lm, tasks=[task], log_samples=True)
    assert out is not None
    return {
        "results": out["results"][task["task"]],
        "samples": sorted(out["samples"][task["task"]], key=lambda s: s["doc_id"]),
    }


@pytest.mark.parametrize(("layout", "ours", "template"), STYLES)
def test_scores_match_the_harness(
    model: tuple[Any, Any],
    tmp_path: Path,
    layout: str,
    ours: dict[str, Any],
    template: dict[str, Any],
) -> None:
    lm, tok = model
    rows = make_benchmark_rows(24, seed=3, layout=layout)
    path = write_jsonl(tmp_path / f"{layout}.jsonl", rows)
    spec = BenchmarkSpec.model_validate({"name": layout, "source": {"path": str(path)}, **ours})
    items = benchmarks.load(spec, str(tmp_path / "cache"), seed=0)
    assert len(items) == len(rows)
    mine = benchmarks.score(lm, tok, items)
    theirs = harness(lm, tok, path, template)
    by_context = {it.context: lls for it, lls in zip(items, mine["loglikelihoods"], strict=True)}
    assert len(theirs["samples"]) == len(rows)
    for sample in theirs["samples"]:
        context = sample["arguments"][0][0]
        want = [resp[0][0] for resp in sample["resps"]]
        assert by_context[context] == pytest.approx(want, abs=1e-4), context
    print(
        f"{layout}: accuracy {mine['accuracy']:.3f} (harness {theirs['results']['acc,none']:.3f}),"
        f" norm {mine['accuracyNorm']:.3f} (harness {theirs['results']['acc_norm,none']:.3f})"
    )
    assert mine["accuracy"] == pytest.approx(theirs["results"]["acc,none"])
    assert mine["accuracyNorm"] == pytest.approx(theirs["results"]["acc_norm,none"])


# ---------------------------------------------------------------- data preparation vs TRL
ROOT = Path(__file__).parents[2]


def test_data_pipeline_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/data_pipeline.py --smoke: TRL's preparation and kubetune's run, the
    ids/labels equality check passes (1 and 2 processes), every figure is there. No
    timing thresholds: the machine is shared."""
    import json
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["operator", "trainer-image", "."])}
    proc = subprocess.run(
        [sys.executable, "benchmarks/data_pipeline.py", "--smoke", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["equality"]["rows"] == 120
    assert res["equalityTwoProcesses"]["rows"] == 240
    assert res["equality"]["maskedTokens"] > 0
    for side in ("bare", "trl", "kubetune"):
        assert res["oneCore"]["perSecond"][side] > 0
    for run in ("kubetune-1", "kubetune-2", "trl-1", "trl-2"):
        assert res["twoProcesses"]["perSecond"][run] > 0
    assert res["twoProcesses"]["times"]["kubetune-2"][0]["workers"] > 0  # it did fork
    stages = res["stages"]["seconds"]
    for stage in ("load + normalise", "tokenise stage (all)", "pack", "save", "total"):
        assert stages[stage] > 0, stage
    assert len(res["loadBefore"]) == 3


def test_data_pipeline_equality_check_fails_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One label changed on kubetune's side: the benchmark must refuse to report."""
    import datasets

    from benchmarks import data_pipeline as bench
    from tests.fixtures.chat_templates import build_generation_tokenizer

    datasets.disable_caching()
    b = bench.Bench(tmp_path, build_generation_tokenizer(tmp_path / "tok"), bench.rows(40))
    assert bench.check_equal(b)["rows"] == 40
    real = bench.Bench.kubetune

    def tampered(self: Any, num_proc: int | None = None) -> tuple[Any, Any]:
        tokenised, packed = real(self, num_proc)

        def flip(row: dict[str, Any], i: int) -> dict[str, Any]:
            if i == 7:
                at = next(j for j, x in enumerate(row["labels"]) if x != -100)
                row["labels"][at] = -100
            return row

        return tokenised.map(flip, with_indices=True), packed

    monkeypatch.setattr(bench.Bench, "kubetune", tampered)
    with pytest.raises(bench.Mismatch, match="row 7: labels differ"):
        bench.check_equal(b)
