"""Format detection, normalisation and malformed-row reporting (no tokenizer needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kubetune.api.spec import FieldMapping
from kubetune_trainer.data.errors import BadInputError
from kubetune_trainer.data.formats import (
    Fields,
    RowError,
    check_readable,
    detect_format,
    normalise,
)
from kubetune_trainer.data.sources import load_raw_urls

DATA = Path(__file__).parents[1] / "fixtures" / "data"


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("alpaca.jsonl", "alpaca"),
        ("sharegpt.json", "sharegpt"),
        ("messages.jsonl", "messages"),
        ("text.jsonl", "text"),
        ("completion.csv", "completion"),
        ("corrupted.jsonl", "messages"),
    ],
)
def test_detects_every_format_from_real_files(name: str, fmt: str, tmp_path: Path) -> None:
    raw = load_raw_urls([str(DATA / name)], cache_dir=str(tmp_path))
    assert detect_format(raw["raw"], Fields()) == fmt


def test_undetectable_rows_name_their_keys() -> None:
    with pytest.raises(BadInputError, match=r"keys \[question, answer\]"):
        detect_format([json.dumps({"question": "q", "answer": "a"})], Fields())


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        (b"hello world\nfoo bar\n", r"train.jsonl:1: line 1 is not valid JSON \(Expecting value"),
        (b"\xff\xfe\n[1, 2]\n", r"train.jsonl:1: line 1 is invalid UTF-8"),
        (b'[1, 2]\n"text"\n', r"train.jsonl:1: line 1 is not a JSON object \(got array\)"),
    ],
)
def test_a_file_of_no_json_rows_names_its_first_line(
    tmp_path: Path, lines: bytes, says: str
) -> None:
    """Before, such a file failed format detection with "rows have keys [none]"."""
    (tmp_path / "train.jsonl").write_bytes(lines)
    raw = load_raw_urls([str(tmp_path / "train.jsonl")], cache_dir=str(tmp_path / "c"))
    with pytest.raises(BadInputError, match=says) as err:
        check_readable(raw)
    assert err.value.file == str(tmp_path / "train.jsonl") and err.value.line == 1
    check_readable([*raw, {"file": "x", "line": 9, "raw": '{"text": "ok"}', "error": ""}])


def test_sharegpt_multi_turn_with_system_becomes_messages() -> None:
    row = json.loads((DATA / "sharegpt.json").read_text())[0]
    out = normalise(json.dumps(row), "sharegpt", Fields(), None)
    assert [m["role"] for m in out["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert out["messages"][4]["content"] == "Berlin is the capital of Germany."


def test_alpaca_joins_input_and_uses_row_system_then_default() -> None:
    row = {"instruction": "Translate.", "input": "Hello", "output": "Bonjour", "system": "S"}
    out = normalise(json.dumps(row), "alpaca", Fields(), "default system")
    assert out["messages"] == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Translate.\n\nHello"},
        {"role": "assistant", "content": "Bonjour"},
    ]
    del row["system"], row["input"]
    out = normalise(json.dumps(row), "alpaca", Fields(), "default system")
    assert out["messages"][0] == {"role": "system", "content": "default system"}
    assert out["messages"][1]["content"] == "Translate."


def test_field_mapping_renames_columns_and_message_keys() -> None:
    fields = Fields.from_mapping(FieldMapping(messages="dialog", role="speaker", content="says"))
    row = {"dialog": [{"speaker": "user", "says": "hi"}, {"speaker": "assistant", "says": "yo"}]}
    assert detect_format([json.dumps(row)], fields) == "messages"
    assert normalise(json.dumps(row), "messages", fields, None)["messages"][1] == {
        "role": "assistant",
        "content": "yo",
    }
    fields = Fields.from_mapping(FieldMapping(prompt="question", completion="answer"))
    assert normalise('{"question": "q", "answer": "a"}', "completion", fields, None) == {
        "prompt": "q",
        "completion": "a",
    }


def test_openai_text_parts_and_csv_json_cells_are_accepted() -> None:
    parts = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": "c"},
        ]
    }
    out = normalise(json.dumps(parts), "messages", Fields(), None)
    assert out["messages"][0]["content"] == "ab"
    cell = {"messages": json.dumps(parts["messages"])}
    assert normalise(json.dumps(cell), "messages", Fields(), None)["messages"][1]["content"] == "c"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"text": ""}, "field 'text' is empty"),
        ({"text": 3}, "field 'text' is not a string (got number)"),
        ({"prompt": "p"}, "missing field 'completion'"),
    ],
)
def test_text_and_completion_problems(row: dict[str, object], reason: str) -> None:
    fmt = "text" if "text" in row else "completion"
    with pytest.raises(RowError, match=f"^{re.escape(reason)}$"):
        normalise(json.dumps(row), fmt, Fields(), None)


CORRUPTED = {
    2: "invalid JSON (Expecting ',' delimiter at column 99)",
    3: "row is not a JSON object (got array)",
    4: "missing field 'messages'",
    5: "field 'messages' is not a list (got a string)",
    6: "field 'messages' is empty",
    7: "message 1 is not an object (got string)",
    9: "message 1 has unknown role 'bot'",
    10: "message 1 has no 'role'",
    11: "message 1 has no 'content'",
    12: "message 1 content is not a string (got number)",
    13: "message 2: empty assistant turn",
    14: "no assistant turn",
    15: "message 2: a system message must come first",
    16: "last turn is from the user, not the assistant",
    18: "invalid UTF-8 (invalid start byte)",
    19: "message 2 content is not a string (got null)",
}
"""Line -> reason for tests/fixtures/data/corrupted.jsonl (line 8 is blank and skipped)."""


def test_corrupted_file_reports_exact_lines_and_reasons(tmp_path: Path) -> None:
    raw = load_raw_urls([str(DATA / "corrupted.jsonl")], cache_dir=str(tmp_path))
    found, good = {}, []
    for row in raw:
        if row["error"]:
            found[row["line"]] = row["error"]
            continue
        try:
            normalise(row["raw"], "messages", Fields(), None)
            good.append(row["line"])
        except RowError as err:
            found[row["line"]] = str(err)
    assert found == CORRUPTED
    assert good == [1, 17, 20]
