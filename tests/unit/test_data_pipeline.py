"""The `prepare` command end to end on real-shaped data in every format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from datasets import load_from_disk

from kubetune_trainer.cli import main
from kubetune_trainer.data.masking import IGNORE_INDEX
from tests.fixtures.tiny_model import make_instruction_rows

DATA = Path(__file__).parents[1] / "fixtures" / "data"


def write_job(path: Path, dataset: dict[str, Any], **spec: Any) -> Path:
    job = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "t"},
        "spec": {
            "model": {"path": "/models/tiny"},
            "dataset": dataset,
            "training": {"maxSeqLength": 128},
            **spec,
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(job))
    return path


def prepare(
    tmp_path: Path, tokenizer: Path, dataset: dict[str, Any], **spec: Any
) -> tuple[int, Path]:
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", dataset, **spec)
    code = main(["prepare", "--job", str(job), "--tokenizer", str(tokenizer), "--out", str(out)])
    return code, out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("alpaca.jsonl", "alpaca"),
        ("sharegpt.json", "sharegpt"),
        ("messages.jsonl", "messages"),
        ("text.jsonl", "text"),
        ("completion.csv", "completion"),
    ],
)
def test_every_format_prepares(
    tmp_path: Path, tiny_tokenizer_dir: Path, name: str, fmt: str
) -> None:
    code, out = prepare(tmp_path, tiny_tokenizer_dir, {"train": {"path": str(DATA / name)}})
    assert code == 0
    report = json.loads((out / "data-report.json").read_text())
    assert report["format"] == fmt
    assert {"format", "template", "counts", "tokens", "packing", "pii", "advice", "sha256"} <= set(
        report
    )
    counts = report["counts"]
    assert {
        "raw",
        "malformed",
        "truncatedAway",
        "exactDuplicates",
        "nearDuplicates",
        "contaminated",
        "train",
        "validation",
        "test",
    } <= set(counts)
    assert counts["train"] + counts["validation"] + counts["test"] == counts["raw"]
    splits = load_from_disk(str(out))
    assert set(splits) == {"train", "validation", "test", "validation_prompts"}
    assert set(splits["train"].column_names) == {"input_ids", "labels", "position_ids"}
    # validation rows keep their prompts apart, for task metrics during training
    assert len(splits["validation_prompts"]) == counts["validation"]
    assert {"input_ids", "labels", "attention_mask", "prompt_messages", "reference"} <= set(
        splits["test"].column_names
    )
    for row in splits["train"]:
        assert any(label != IGNORE_INDEX for label in row["labels"])
    assert (out / "chat_template.jinja").read_text().startswith("{% for message")


def test_instruction_task_report_and_reproducible_hash(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    rows = make_instruction_rows(300, seed=1)
    assert make_instruction_rows(300, seed=1) == rows
    train = write_jsonl(tmp_path / "train.jsonl", rows + rows[:7])  # 7 exact duplicates
    dataset = {"train": {"path": str(train)}, "dedup": {"nearDuplicate": True, "threshold": 0.95}}
    code, out = prepare(tmp_path / "a", tiny_tokenizer_dir, dataset)
    assert code == 0
    report = json.loads((out / "data-report.json").read_text())
    c = report["counts"]
    assert (c["raw"], c["exactDuplicates"]) == (307, 7)
    assert (c["train"], c["validation"], c["test"]) == (240, 30, 30)
    assert report["template"]["source"] == "tokenizer"
    assert report["advice"][0]["code"] == "thin"
    assert 0.5 < report["packing"]["efficiency"] <= 1.0
    tokens = report["tokens"]["train"]
    assert tokens["examples"] == 240 and tokens["p50"] <= tokens["p95"] <= tokens["max"]
    test = load_from_disk(str(out / "test"))
    first = test[0]
    assert json.loads(first["prompt_messages"])[-1]["role"] == "user"
    assert first["prompt_text"].endswith("<|im_start|>assistant\n")
    assert len(first["reference"]) == 4  # e.g. "RC-4"
    code, again = prepare(tmp_path / "b", tiny_tokenizer_dir, dataset)
    assert json.loads((again / "data-report.json").read_text())["sha256"] == report["sha256"]


def test_corrupted_file_exits_2_with_file_line_reason(
    tmp_path: Path, tiny_tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(DATA / "corrupted.jsonl")
    code, _ = prepare(tmp_path, tiny_tokenizer_dir, {"train": {"path": path}})
    assert code == 2
    err = capsys.readouterr().err
    assert "16 of 19 rows (84.2%) are malformed" in err
    assert f"{path}:9: message 1 has unknown role 'bot'" in err
    assert f"{path}:18: invalid UTF-8 (invalid start byte)" in err

    code, out = prepare(
        tmp_path, tiny_tokenizer_dir, {"train": {"path": path}, "maxBadFraction": 0.9}
    )
    assert code == 0
    report = json.loads((out / "data-report.json").read_text())
    assert report["counts"]["malformed"] == 16
    assert [r["line"] for r in report["malformed"]["rows"]] == [
        2,
        3,
        4,
        5,
        6,
        7,
        9,
        10,
        11,
        12,
        13,
        14,
        15,
        16,
        18,
        19,
    ]


def test_bad_job_and_missing_file_exit_2(
    tmp_path: Path, tiny_tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = prepare(tmp_path, tiny_tokenizer_dir, {"train": {"path": "/nope/x.jsonl"}})
    assert code == 2
    assert "/nope/x.jsonl: no such file or directory" in capsys.readouterr().err
    job = tmp_path / "bad.yaml"
    job.write_text("spec: {model: {}}\n")
    assert (
        main(
            [
                "prepare",
                "--job",
                str(job),
                "--tokenizer",
                str(tiny_tokenizer_dir),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "invalid FineTuneJob" in capsys.readouterr().err


def test_eval_sources_contamination_truncation_replay_and_forgetting(
    tmp_path: Path, tiny_llama3_tokenizer_dir: Path
) -> None:
    rows = make_instruction_rows(120, seed=2)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:100])
    val = write_jsonl(tmp_path / "val.jsonl", rows[100:110] + rows[:3])  # 3 leaked
    long_answer = {
        "messages": [
            {"role": "user", "content": "word " * 200},
            {"role": "assistant", "content": "late"},
        ]
    }
    write_jsonl(tmp_path / "train.jsonl", [*rows[:100], long_answer])
    general = write_jsonl(
        tmp_path / "general.jsonl",
        [{"text": f"General sentence number {i} about the weather and the sea."} for i in range(50)]
        + [{"text": " ".join(m["content"] for m in r["messages"][1:])} for r in rows[:20]],
    )
    dataset = {
        "train": {"path": str(train)},
        "validation": {"path": str(val)},
        "replay": {"source": {"path": str(general)}, "ratio": 0.1},
        "pii": "redact",
    }
    evaluation = {"forgetting": {"source": {"path": str(general)}, "maxSamples": 20}}
    code, out = prepare(tmp_path, tiny_llama3_tokenizer_dir, dataset, evaluation=evaluation)
    assert code == 0
    report = json.loads((out / "data-report.json").read_text())
    c = report["counts"]
    assert c["truncatedAway"] == 1  # the answer lies past maxSeqLength
    assert report["contamination"]["validation"] == 3 and c["validation"] == 10
    assert c["test"] == 10  # 10% of the 101 train rows, validation came from its source
    assert c["replay"] == round(91 * 0.1 / 0.9) == 10  # 10% of train after mixing
    assert report["contamination"]["forgetting"] >= 15 and c["forgetting"] == 20
    assert c["train"] + c["test"] == 101 - 1 + 10  # the long row is dropped from either
    assert report["template"]["source"] == "tokenizer"
    splits = load_from_disk(str(out))
    assert "forgetting" in splits
    assert splits["test"][0]["prompt_text"].startswith("<|begin_of_text|>")


def test_pii_modes(
    tmp_path: Path, tiny_tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = make_instruction_rows(30, seed=3)
    rows[4]["messages"][1]["content"] += " Contact me at someone@example.com."
    rows[9]["messages"][2]["content"] = "Card 4111 1111 1111 1111"
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    code, out = prepare(
        tmp_path / "w", tiny_tokenizer_dir, {"train": {"path": str(train)}, "pii": "warn"}
    )
    report = json.loads((out / "data-report.json").read_text())["pii"]
    assert report["counts"] == {"email": 1, "creditCard": 1}
    assert report["rows"]["email"] == [f"{train}:5"]
    code, out = prepare(
        tmp_path / "f", tiny_tokenizer_dir, {"train": {"path": str(train)}, "pii": "fail"}
    )
    assert code == 2
    assert f"email: {train}:5" in capsys.readouterr().err
    code, out = prepare(
        tmp_path / "r",
        tiny_tokenizer_dir,
        {"train": {"path": str(train)}, "pii": "redact", "split": {"validation": 0.0, "test": 0.0}},
        training={"maxSeqLength": 128, "packing": False},
    )
    assert code == 0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    text = "".join(str(tok.decode(r["input_ids"])) for r in load_from_disk(str(out / "train")))
    assert "[EMAIL]" in text and "[CREDITCARD]" in text and "example.com" not in text


def test_fallback_template_is_reported(tmp_path: Path, tiny_plain_tokenizer_dir: Path) -> None:
    code, out = prepare(
        tmp_path, tiny_plain_tokenizer_dir, {"train": {"path": str(DATA / "messages.jsonl")}}
    )
    assert code == 0
    report = json.loads((out / "data-report.json").read_text())
    assert report["template"]["source"] == "fallback-chatml"
    assert "<|im_start|>" in (out / "chat_template.jinja").read_text()
