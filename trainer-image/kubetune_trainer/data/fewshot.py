"""Few-shot prompts: k solved training examples before each test prompt.

The shots are drawn once, seeded, from the cleaned training split (never the validation
or test split, and never replay rows), and the same shots precede every test row, so
the baseline is reproducible and the test rows are the ones every other model is scored
on. Chat examples are rendered with the model's chat template as earlier turns of the
conversation; completion examples are concatenated as raw text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .masking import render
from .split import sample

FEWSHOT_FILE = "fewshot.json"
SHOT_KINDS = ("chat", "completion", "preference")
COMPLETION_SEPARATOR = "\n\n"


def pick_shots(kinds: Sequence[str], examples: Sequence[str], k: int, seed: int) -> list[int]:
    """Positions of k training rows usable as shots (chat or completion), seeded."""
    usable = [i for i, kind in enumerate(kinds) if kind in SHOT_KINDS]
    return [usable[i] for i in sample(len(usable), min(k, len(usable)), seed)]


def shot_record(kind: str, example: str, file: str, line: int) -> dict[str, Any]:
    """What the prepared data keeps of one shot (fewshot.json); a preference pair becomes
    its prompt solved with the chosen answer."""
    ex = json.loads(example)
    if kind == "preference":
        if isinstance(ex["chosen"], list):
            kind, ex = "chat", {"messages": [*ex["prompt"], *ex["chosen"]]}
        else:
            kind, ex = "completion", {"prompt": ex["prompt"], "completion": ex["chosen"]}
    return {"kind": kind, "example": ex, "file": file, "line": line}


def prompts(
    tokenizer: Any, shots: Sequence[dict[str, Any]], test_rows: Any
) -> tuple[list[str], list[str]]:
    """(prompt texts, references) for the test rows, each prompt preceded by the shots.

    `test_rows` are the prepared test split's rows (`prompt_messages` for chat,
    `prompt_text` for completion, `reference`).
    """
    texts: list[str] = []
    chat = [s["example"]["messages"] for s in shots if s["kind"] == "chat"]
    raw = [s["example"] for s in shots if s["kind"] == "completion"]
    for messages_json, prompt_text in zip(
        test_rows["prompt_messages"], test_rows["prompt_text"], strict=True
    ):
        messages = json.loads(messages_json)
        if messages:  # chat: the shots become earlier turns of the same conversation
            system = [m for m in messages if m["role"] == "system"][:1]
            turns = [m for shot in chat for m in shot if m["role"] != "system"]
            rest = [m for m in messages if m["role"] != "system"]
            texts.append(render(tokenizer, [*system, *turns, *rest], generation=True))
        else:
            head = "".join(s["prompt"] + s["completion"] + COMPLETION_SEPARATOR for s in raw)
            texts.append(head + prompt_text)
    return texts, list(test_rows["reference"])
