"""Completion-only labels: the labelled tokens are exactly the assistant turns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from kubetune_trainer.data.formats import Fields, RowError, normalise
from kubetune_trainer.data.masking import (
    IGNORE_INDEX,
    chat_spans,
    encode,
    fit_length,
    prompt_and_reference,
)
from kubetune_trainer.data.templates import CHATML, resolve_template

DATA = Path(__file__).parents[1] / "fixtures" / "data"
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}


@pytest.fixture(scope="module", params=["chatml", "llama3"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    name = "tiny_tokenizer_dir" if request.param == "chatml" else "tiny_llama3_tokenizer_dir"
    tok = AutoTokenizer.from_pretrained(str(request.getfixturevalue(name)))
    tok.test_template = request.param
    return tok


def labelled_spans(tokenizer: Any, ids: list[int], labels: list[int]) -> list[str]:
    """Decoded runs of consecutive labelled tokens."""
    spans, run = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    if run:
        spans.append(tokenizer.decode(run))
    return spans


def conversations() -> list[list[dict[str, str]]]:
    share = json.loads((DATA / "sharegpt.json").read_text())
    rows = [normalise(json.dumps(r), "sharegpt", Fields(), None) for r in share]
    rows += [
        normalise(line, "messages", Fields(), None)
        for line in (DATA / "messages.jsonl").read_text().splitlines()
    ]
    return [r["messages"] for r in rows]


def test_labels_are_exactly_every_assistant_turn(tokenizer: Any) -> None:
    convs = conversations()
    assert any(len([m for m in c if m["role"] == "assistant"]) == 3 for c in convs)
    assert any(c[0]["role"] == "system" for c in convs)
    results = encode(tokenizer, ["chat"] * len(convs), [{"messages": c} for c in convs])
    eot = END_OF_TURN[tokenizer.test_template]
    for conv, result in zip(convs, results, strict=True):
        assert not isinstance(result, str), result
        ids, labels = result
        expected = [m["content"] for m in conv if m["role"] == "assistant"]
        if tokenizer.test_template == "llama3":  # Meta's template trims turns
            expected = [e.strip() for e in expected]
        assert labelled_spans(tokenizer, ids, labels) == [e + eot for e in expected]
        assert tokenizer.decode(ids) == tokenizer.apply_chat_template(conv, tokenize=False)


def test_completion_and_text_labels(tokenizer: Any) -> None:
    first, second = encode(
        tokenizer,
        ["completion", "text"],
        [
            {"prompt": "Q: What is two plus two?\nA:", "completion": " four"},
            {"text": "The quick brown fox."},
        ],
    )
    assert not isinstance(first, str) and not isinstance(second, str)
    (ids, labels), (tids, tlabels) = first, second
    assert labelled_spans(tokenizer, ids, labels) == [" four" + tokenizer.eos_token]
    assert tlabels == tids


def test_truncation_never_keeps_an_example_without_labels() -> None:
    ids, labels = list(range(10)), [IGNORE_INDEX] * 8 + [8, 9]
    assert fit_length("chat", ids, labels, 8) == []
    assert fit_length("chat", ids, labels, 9) == [(ids[:9], labels[:9])]
    assert fit_length("text", ids, ids, 4) == [
        (ids[:4], ids[:4]),
        (ids[4:8], ids[4:8]),
        (ids[8:], ids[8:]),
    ]
    assert fit_length("text", ids[:9], ids[:9], 4)[-1] == (ids[4:8], ids[4:8])  # 1-token tail


def test_prompt_and_reference_for_generation(tokenizer: Any) -> None:
    conv = conversations()[0]
    messages, prompt, reference = prompt_and_reference(tokenizer, "chat", {"messages": conv})
    assert json.loads(messages) == conv[:-1]
    assert reference == conv[-1]["content"]
    assert tokenizer.apply_chat_template(conv, tokenize=False).startswith(prompt)
    assert prompt.endswith("assistant\n" if tokenizer.test_template == "chatml" else "\n\n")


def test_fallback_chatml_is_declared(tiny_plain_tokenizer_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tiny_plain_tokenizer_dir))
    info = resolve_template(tok)
    assert info.source == "fallback-chatml" and tok.chat_template == CHATML
    assert info.markers_are_tokens
    text, spans = chat_spans(tok, conversations()[0])
    assert [text[a:b] for a, b in spans] == [
        "Paris is the capital of France.<|im_end|>",
        "Berlin is the capital of Germany.<|im_end|>",
    ]


def test_template_that_rewrites_history_is_refused(tiny_tokenizer_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}{{ loop.length }}: {{ m['content'] }}\n{% endfor %}"
    )
    with pytest.raises(RowError, match="inconsistently"):
        chat_spans(tok, conversations()[0])
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    assert encode(tok, ["chat"], [{"messages": conversations()[0]}]) == [
        "chat template error: roles must alternate"
    ]
