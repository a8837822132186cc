"""Row formats: detecting which one a dataset uses and normalising rows to one shape.

Every format becomes one of three canonical kinds, stored as a JSON string in `example`:

- `chat`: `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`
  (from OpenAI/ChatML messages, ShareGPT conversations and Alpaca rows);
- `completion`: `{"prompt": str, "completion": str}` (raw text, no chat template);
- `text`: `{"text": str}` (continued pre-training, loss on every token).

A row that cannot be normalised gets a human-readable `error` instead; the pipeline
reports it with its file and line and drops it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from kubetune.api.spec import FieldMapping

from .errors import BadInputError

FORMATS = ("messages", "sharegpt", "alpaca", "completion", "text")
KIND_OF_FORMAT = {
    "messages": "chat",
    "sharegpt": "chat",
    "alpaca": "chat",
    "completion": "completion",
    "text": "text",
}
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
}
DETECT_SAMPLE = 200


@dataclass(frozen=True)
class Fields:
    """Resolved column names for every format (the spec's mapping over the defaults)."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    conversations: str = "conversations"
    messages: str = "messages"
    role: str | None = None
    content: str | None = None
    text: str = "text"
    prompt: str = "prompt"
    completion: str = "completion"
    system: str = "system"

    @classmethod
    def from_mapping(cls, mapping: FieldMapping | None) -> Fields:
        if mapping is None:
            return cls()
        given = {k: v for k, v in mapping.model_dump().items() if v is not None}
        return cls(**given)


def check_readable(rows: Iterable[Mapping[str, Any]]) -> None:
    """Refuse a source none of whose first raw rows (`file`, `line`, `raw`, `error`) is a
    JSON object, naming the first row: the file is not JSON rows at all (plain text, the
    wrong format for its name), and "N of N rows are malformed" would hide that."""
    first: tuple[Mapping[str, Any], str] | None = None
    count = 0
    for row in rows:
        problem = row["error"] or _not_an_object(row["raw"])
        if not problem:
            return
        count += 1
        first = first or (row, problem)
    if first is None:
        return
    row, problem = first
    file, line = str(row["file"]), int(row["line"])
    unit = _UNITS.get(PurePosixPath(re.sub(r"\.(gz|zst|zstd)$", "", file.lower())).suffix, "line")
    others = "the only row" if count == 1 else f"none of the first {count} rows is a JSON object"
    raise BadInputError(
        f"{unit} {line} is {problem} ({others}); check that the file holds JSON rows in the"
        " format its name says",
        file=file,
        line=line,
    )


_UNITS = {".json": "item", ".parquet": "row", ".csv": "row"}


def _not_an_object(raw: str) -> str:
    """Why a raw row is not a JSON object, in words that follow "line N is"; "" if it is."""
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as err:
        return f"not valid JSON ({err.msg} at column {err.colno})"
    except RecursionError:
        return "JSON nested too deeply to read"
    return "" if isinstance(row, dict) else f"not a JSON object (got {_kind(row)})"


def detect_format(rows: Iterable[str], fields: Fields) -> str:
    """The format most of the first parseable rows match; BadInputError when none does."""
    votes: Counter[str] = Counter()
    keys: Counter[str] = Counter()
    for raw in rows:
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            continue
        if not isinstance(row, dict):
            continue
        keys.update(row.keys())
        fmt = _match(row, fields)
        if fmt:
            votes[fmt] += 1
    if not votes:
        seen = ", ".join(k for k, _ in keys.most_common(10)) or "none"
        raise BadInputError(
            f"cannot detect the dataset format: rows have keys [{seen}]; expected messages, "
            "conversations, instruction/output, prompt/completion or text — set "
            "spec.dataset.format or spec.dataset.fieldMapping"
        )
    return votes.most_common(1)[0][0]


def _match(row: dict[str, Any], f: Fields) -> str | None:
    if f.messages in row:
        return "messages"
    if f.conversations in row:
        return "sharegpt"
    if f.instruction in row and f.output in row:
        return "alpaca"
    if f.prompt in row and f.completion in row:
        return "completion"
    if f.text in row:
        return "text"
    return None


class RowError(ValueError):
    """Why one row is malformed (becomes the report's `reason`)."""


def normalise(raw: str, fmt: str, fields: Fields, system_prompt: str | None) -> dict[str, Any]:
    """The canonical example for one raw row; raises RowError with the reason if malformed."""
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as err:
        raise RowError(f"invalid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise RowError("JSON nested too deeply to read") from None
    if not isinstance(row, dict):
        raise RowError(f"row is not a JSON object (got {_kind(row)})")
    if "\\u" in raw:  # an escape may decode to a lone surrogate, which is not text
        _check_unicode(row)
    if fmt in ("messages", "sharegpt"):
        column = fields.messages if fmt == "messages" else fields.conversations
        messages = _messages(row, column, fmt, fields)
    elif fmt == "alpaca":
        instruction = _string(row, fields.instruction)
        extra = _string(row, fields.input, required=False)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": _string(row, fields.output)},
        ]
    elif fmt == "completion":
        return {
            "prompt": _string(row, fields.prompt, allow_empty=True),
            "completion": _string(row, fields.completion),
        }
    elif fmt == "text":
        return {"text": _string(row, fields.text)}
    else:
        raise ValueError(f"unknown format {fmt!r}")
    row_system = row.get(fields.system)
    if messages[0]["role"] != "system":
        system = row_system if isinstance(row_system, str) and row_system else system_prompt
        if system:
            messages.insert(0, {"role": "system", "content": system})
    _check_conversation(messages)
    return {"messages": messages}


def _check_unicode(value: Any) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            bad = value[err.start : err.end].encode("unicode_escape").decode()
            raise RowError(f"invalid Unicode: a lone surrogate ({bad})") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key)
            _check_unicode(item)
    elif isinstance(value, list):
        for item in value:
            _check_unicode(item)


def _string(row: dict[str, Any], key: str, required: bool = True, allow_empty: bool = False) -> str:
    if key not in row or row[key] is None:
        if required:
            raise RowError(f"missing field {key!r}")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise RowError(f"field {key!r} is not a string (got {_kind(value)})")
    if required and not allow_empty and not value.strip():
        raise RowError(f"field {key!r} is empty")
    return value


def _messages(row: dict[str, Any], column: str, fmt: str, f: Fields) -> list[dict[str, str]]:
    if column not in row:
        raise RowError(f"missing field {column!r}")
    turns = row[column]
    if isinstance(turns, str):  # CSV cells and some exports hold the list as a JSON string
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            raise RowError(f"field {column!r} is not a list (got a string)") from None
    if not isinstance(turns, list):
        raise RowError(f"field {column!r} is not a list (got {_kind(turns)})")
    if not turns:
        raise RowError(f"field {column!r} is empty")
    role_key = f.role or ("from" if fmt == "sharegpt" else "role")
    content_key = f.content or ("value" if fmt == "sharegpt" else "content")
    messages = []
    for number, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise RowError(f"message {number} is not an object (got {_kind(turn)})")
        role = turn.get(role_key, turn.get("role", turn.get("from")))
        if role is None:
            raise RowError(f"message {number} has no {role_key!r}")
        if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
            raise RowError(f"message {number} has unknown role {role!r}")
        if content_key in turn:
            content = turn[content_key]
        elif "content" in turn or "value" in turn:
            content = turn.get("content", turn.get("value"))
        else:
            raise RowError(f"message {number} has no {content_key!r}")
        messages.append({"role": ROLE_ALIASES[role.lower()], "content": _content(content, number)})
    return messages


def _content(content: Any, number: int) -> str:
    """A message's text; OpenAI-style lists of text parts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise RowError(f"message {number} content is not a string (got {_kind(content)})")


def _check_conversation(messages: list[dict[str, str]]) -> None:
    for number, message in enumerate(messages, start=1):
        role = message["role"]
        if role == "system" and number != 1:
            raise RowError(f"message {number}: a system message must come first")
        if role != "system" and not message["content"].strip():
            raise RowError(f"message {number}: empty {role} turn")
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("no assistant turn")
    if messages[-1]["role"] != "assistant":
        raise RowError(f"last turn is from the {messages[-1]['role']}, not the assistant")


def _kind(value: Any) -> str:
    """The JSON type name of a value, as users know it."""
    names = {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def example_text(kind: str, example: dict[str, Any]) -> str:
    """All of an example's words in one string (for dedup, contamination and PII)."""
    if kind == "chat":
        return "\n".join(m["content"] for m in example["messages"] if m["role"] != "system")
    if kind == "completion":
        return example["prompt"] + "\n" + example["completion"]
    return str(example["text"])
