"""The data pipeline's decision rules and the evaluation protocol's data: an evaluation
split emptied by cleaning is named with the stage that emptied it, tokenizer fertility,
preference pairs in every layout, and few-shot shots drawn from training rows only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from datasets import load_from_disk

from kubetune_trainer.data import fewshot
from tests.fixtures.quality_data import (
    make_fragmented_rows,
    make_identity_conversations,
    make_preference_rows,
    write_jsonl,
)
from tests.fixtures.tiny_model import make_instruction_rows

from .test_data_pipeline import prepare


def report(out: Path) -> dict[str, Any]:
    return json.loads((out / "data-report.json").read_text())


def codes(rep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["code"] + ":" + a.get("split", ""): a for a in rep["advice"]}


def test_identity_conversations_emptied_by_cleaning_warn_naming_the_stage(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    data = tmp_path / "identity.json"
    data.write_text(json.dumps(make_identity_conversations()))
    dataset = {"train": {"path": str(data)}, "dedup": {"nearDuplicate": True}}
    code, out = prepare(tmp_path / "a", tiny_tokenizer_dir, dataset)
    assert code == 0
    rep = report(out)
    assert rep["counts"]["validation"] == 0 and rep["counts"]["test"] == 0
    assert rep["counts"]["contaminated"] > 0
    found = codes(rep)
    for split in ("validation", "test"):
        item = found[f"evaluationSplitEmpty:{split}"]
        assert item["level"] == "warning" and item["stage"] == "contamination"
        assert f"the {split} split is empty after the contamination stage" in item["message"]
        assert f"spec.dataset.{split}" in item["message"]
    # a job that relies on validation for early stopping fails before any training
    code, _ = prepare(
        tmp_path / "b",
        tiny_tokenizer_dir,
        dataset,
        training={"maxSeqLength": 128, "earlyStopping": {"patience": 2}},
    )
    assert code == 2


def test_a_dataset_too_small_to_split_names_the_split_stage(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    data = write_jsonl(tmp_path / "tiny.jsonl", make_instruction_rows(3))
    code, out = prepare(tmp_path, tiny_tokenizer_dir, {"train": {"path": str(data)}})
    assert code == 0
    found = codes(report(out))
    item = found["evaluationSplitEmpty:validation"]
    assert item["stage"] == "split" and "too few rows" in item["message"]
    small = found["evaluationSplitSmall:test"]  # one row: a score moves by 100 points
    assert small["value"] == 1 and "moves a score by 100 points" in small["message"]


def test_tokenizer_fertility_fires_on_unseen_vocabulary_only(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    odd = write_jsonl(tmp_path / "clinical.jsonl", make_fragmented_rows(200))
    code, out = prepare(tmp_path / "a", tiny_tokenizer_dir, {"train": {"path": str(odd)}})
    assert code == 0
    rep = report(out)
    fert = rep["fertility"]
    assert fert["share"] > 0.5 and fert["examples"][0]["tokens"] >= 4
    item = codes(rep)["tokenizerFertility:"]
    assert item["value"] == fert["share"] and item["threshold"] == 0.1
    assert "continued pre-training" in item["message"]
    # the task the tiny tokenizer was trained on splits into whole words: no warning
    plain = write_jsonl(tmp_path / "task.jsonl", make_instruction_rows(200))
    code, out = prepare(tmp_path / "b", tiny_tokenizer_dir, {"train": {"path": str(plain)}})
    rep = report(out)
    assert rep["fertility"]["share"] < 0.1
    assert "tokenizerFertility:" not in codes(rep)


@pytest.mark.parametrize("layout", ["explicit", "implicit", "text"])
def test_preference_pairs_in_every_layout(
    tmp_path: Path, tiny_tokenizer_dir: Path, layout: str
) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", make_preference_rows(100, layout=layout))
    code, out = prepare(
        tmp_path, tiny_tokenizer_dir, {"train": {"path": str(data)}}, objective="dpo"
    )
    assert code == 0
    rep = report(out)
    assert rep["format"] == "preference" and rep["packing"]["enabled"] is False
    splits = load_from_disk(str(out))
    row = splits["test"][0]
    prompt, chosen = json.loads(row["prompt"]), json.loads(row["chosen"])
    if layout == "text":
        assert isinstance(prompt, str) and row["prompt_text"] == prompt
        assert row["chosen_text"] == chosen + "<|im_end|>"  # EOS added, as TRL does
    else:
        # the implicit layout's shared turns became the prompt
        assert [m["role"] for m in prompt] == ["system", "user"]
        assert chosen == [{"role": "assistant", "content": row["reference"]}]
        assert row["prompt_text"].endswith("<|im_start|>assistant\n")
        assert row["chosen_text"] == row["reference"] + "<|im_end|>"


def test_preference_rows_need_a_preference_objective_and_one_layout(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_preference_rows(50))
    code, _ = prepare(tmp_path / "a", tiny_tokenizer_dir, {"train": {"path": str(pairs)}})
    assert code == 2
    sft = write_jsonl(tmp_path / "sft.jsonl", make_instruction_rows(50))
    code, _ = prepare(
        tmp_path / "b", tiny_tokenizer_dir, {"train": {"path": str(sft)}}, objective="dpo"
    )
    assert code == 2
    mixed = make_preference_rows(50) + make_preference_rows(5, layout="text")
    data = write_jsonl(tmp_path / "mixed.jsonl", mixed)
    code, _ = prepare(
        tmp_path / "c", tiny_tokenizer_dir, {"train": {"path": str(data)}}, objective="dpo"
    )
    assert code == 2


def test_few_shot_shots_come_from_training_rows_and_precede_every_test_prompt(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    from transformers import AutoTokenizer

    data = write_jsonl(tmp_path / "task.jsonl", make_instruction_rows(200))
    code, out = prepare(
        tmp_path,
        tiny_tokenizer_dir,
        {"train": {"path": str(data)}},
        evaluation={"fewShot": {"shots": 3, "seed": 7}},
    )
    assert code == 0
    shots = json.loads((out / fewshot.FEWSHOT_FILE).read_text())
    assert len(shots) == 3 and report(out)["fewShot"]["shots"] == 3
    splits = load_from_disk(str(out))
    test_users = {json.loads(m)[-1]["content"] for m in splits["test"]["prompt_messages"]}
    for shot in shots:  # never a test row
        assert shot["example"]["messages"][1]["content"] not in test_users
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    prompts, refs = fewshot.prompts(tok, shots, splits["test"])
    assert refs == list(splits["test"]["reference"])
    first = prompts[0]
    assert first.count("<|im_start|>system") == 1  # one system prompt
    assert first.count("<|im_start|>assistant") == 4  # three solved shots, then the question
    for shot in shots:
        assert shot["example"]["messages"][2]["content"] in first
    assert first.endswith(
        splits["test"][0]["prompt_text"].split("<|im_end|>\n")[-2]
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
