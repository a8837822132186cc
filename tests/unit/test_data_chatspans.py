"""The one-render span finder and direct tokenising give exactly the prefix method's output.

The prefix method (`prefix_spans_batch`: render the 2k+1 prefixes) is the definition of an
assistant span; `encode` must produce, for every row, the token ids and labels that
tokenising with transformers and labelling by character offsets over those spans gives.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from kubetune_trainer.data import chatspans
from kubetune_trainer.data.formats import Fields, RowError, normalise
from kubetune_trainer.data.masking import (
    IGNORE_INDEX,
    chat_spans_batch,
    encode,
    label_tokens,
    prefix_spans,
    prefix_spans_batch,
    texts_and_spans,
)
from tests.fixtures.chat_templates import CHATML_GENERATION_TEMPLATE
from tests.fixtures.tiny_model import CHATML_TEMPLATE, make_instruction_rows

DATA = Path(__file__).parents[1] / "fixtures" / "data"

# Templates without generation markers whose turns are not all found by the search, or
# that the probe refuses: every row must still come out as the prefix method says.
ODD_TEMPLATES = {
    # the system prompt folded into the first user turn (Llama-2 style)
    "folded-system": (
        "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns = m['content'] %}"
        "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}"
    ),
    # no end-of-turn text and no generation prompt text: nothing to search for
    "bare": "{% for m in messages %}{{ m['content'] }}\n{% endfor %}",
    # rewrites history (the count of messages on every line): refused by the prefix method
    "rewrites": (
        "{% for m in messages %}{{ m['role'] }}{{ loop.length }}: {{ m['content'] }}\n{% endfor %}"
    ),
    # content trimmed: rows with surrounding whitespace miss the search
    "trimmed": (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | trim }}</{{ m['role'] }}>"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    ),
    # a different closing for the last assistant turn than for earlier ones
    "last-differs": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if loop.last %}<|im_end|>{% else %}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
}


# Gemma-style: refuses the system role, so the probe goes without one
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>assistant\n{% endif %}"
)


def conversations() -> list[list[dict[str, str]]]:
    """Fixture conversations plus generated ones: multi-turn, with and without system
    prompts, whitespace at the edges, repeated answers, answers that also occur in the
    question, unicode, empty-looking turns."""
    share = json.loads((DATA / "sharegpt.json").read_text())
    rows = [normalise(json.dumps(r), "sharegpt", Fields(), None)["messages"] for r in share]
    rows += [
        normalise(line, "messages", Fields(), None)["messages"]
        for line in (DATA / "messages.jsonl").read_text().splitlines()
    ]
    rng = random.Random(7)
    base = [r["messages"] for r in make_instruction_rows(64, seed=3)]
    pieces = ["RC-1", " padded answer ", "naïve café ✓", "same", "line\nbreak\n", "x"]
    for i in range(60):
        turns = rng.randint(1, 4)
        messages = [] if i % 3 == 0 else [base[i][0]]
        for t in range(turns):
            question = base[(i + t) % len(base)][1]["content"]
            answer = rng.choice(pieces) if i % 2 else base[(i + t) % len(base)][2]["content"]
            if i % 5 == 0:
                question = f"{question} {answer}"  # the answer also occurs in the question
            messages += [{"role": "user", "content": question}]
            messages += [{"role": "assistant", "content": answer}]
        rows.append(messages)
    return rows


def reference(tokenizer: Any, kinds: list[str], examples: list[dict[str, Any]]) -> list[Any]:
    """The pre-1.x pipeline's output: prefix spans, transformers' tokenising with offsets,
    labels by overlap."""
    chats = [i for i, k in enumerate(kinds) if k == "chat"]
    spans = iter(prefix_spans_batch(tokenizer, [examples[i]["messages"] for i in chats]))
    out: list[Any] = []
    eos = tokenizer.eos_token or ""
    for kind, example in zip(kinds, examples, strict=True):
        if kind == "chat":
            rendered = next(spans)
            if isinstance(rendered, RowError):
                out.append(str(rendered))
                continue
            text, row_spans = rendered
        elif kind == "completion":
            text = example["prompt"] + example["completion"] + eos
            row_spans = [(len(example["prompt"]), len(text))]
        else:
            text = example["text"] + eos
            row_spans = [(0, len(text))]
        enc = tokenizer(text, add_special_tokens=kind != "chat", return_offsets_mapping=True)
        import numpy as np

        mask = label_tokens(np.asarray(enc["offset_mapping"]).reshape(-1, 2), row_spans)
        ids = list(enc["input_ids"])
        out.append((ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]))
    return out


def tokenizer_with(tiny_tokenizer_dir: Path, template: str) -> Any:
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    tok.chat_template = template
    return tok


@pytest.fixture(params=["chatml", "chatml-generation", "llama3", "no-system", *ODD_TEMPLATES])
def tokenizer(
    request: pytest.FixtureRequest, tiny_tokenizer_dir: Path, tiny_llama3_tokenizer_dir: Path
) -> Any:
    if request.param == "llama3":
        return AutoTokenizer.from_pretrained(str(tiny_llama3_tokenizer_dir))
    named = {
        "chatml": CHATML_TEMPLATE,
        "chatml-generation": CHATML_GENERATION_TEMPLATE,
        "no-system": NO_SYSTEM_TEMPLATE,
        **ODD_TEMPLATES,
    }
    template = named[request.param]
    return tokenizer_with(tiny_tokenizer_dir, template)


def test_spans_equal_the_prefix_method(tokenizer: Any) -> None:
    convs = conversations()
    got, want = chat_spans_batch(tokenizer, convs), prefix_spans_batch(tokenizer, convs)
    assert [comparable(r) for r in got] == [comparable(r) for r in want]


def comparable(result: Any) -> Any:
    return f"error: {result}" if isinstance(result, RowError) else result


def test_encode_equals_the_reference(tokenizer: Any) -> None:
    convs = conversations()
    kinds = ["chat"] * len(convs) + ["completion", "text", "completion"]
    examples: list[dict[str, Any]] = [{"messages": c} for c in convs]
    examples += [
        {"prompt": "Q: What is two plus two?\nA:", "completion": " four"},
        {"text": "The quick brown fox jumps over the lazy dog."},
        {"prompt": "naïve ", "completion": "café ✓ "},
    ]
    got, want = encode(tokenizer, kinds, examples), reference(tokenizer, kinds, examples)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, (i, examples[i])


def test_the_fast_path_is_taken(tiny_tokenizer_dir: Path) -> None:
    """The equality above would hold trivially if everything went the prefix way."""
    for template, searchable in [
        (CHATML_GENERATION_TEMPLATE, True),
        (CHATML_TEMPLATE, True),
        (NO_SYSTEM_TEMPLATE, True),
        (ODD_TEMPLATES["rewrites"], False),
        (ODD_TEMPLATES["bare"], False),
    ]:
        lay = probed(tokenizer_with(tiny_tokenizer_dir, template))
        assert lay.searchable == searchable, template
    lay = probed(tokenizer_with(tiny_tokenizer_dir, CHATML_TEMPLATE))
    assert (lay.head, lay.tail) == ("<|im_start|>assistant\n", "<|im_end|>")


def probed(tok: Any) -> chatspans.Layout:
    return chatspans.layout(chatspans.Renderer(tok), lambda m: prefix_spans(tok, m))


@pytest.mark.parametrize("template", [CHATML_TEMPLATE, CHATML_GENERATION_TEMPLATE])
def test_texts_and_spans_renders_each_conversation_once(
    tiny_tokenizer_dir: Path, template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = tokenizer_with(tiny_tokenizer_dir, template)
    convs = [c for c in conversations() if len(c) > 3][:10]
    chat_spans_batch(tok, convs)  # the probe, once per template
    calls = {"render": 0, "apply": 0}
    real_render, real_apply = chatspans.Renderer.render, tok.apply_chat_template

    def render(self: Any, messages: Any, generation: bool = False) -> str:
        calls["render"] += 1
        return real_render(self, messages, generation)

    def apply(*args: Any, **kwargs: Any) -> Any:
        calls["apply"] += 1
        return real_apply(*args, **kwargs)

    monkeypatch.setattr(chatspans.Renderer, "render", render)
    monkeypatch.setattr(tok, "apply_chat_template", apply)
    texts_and_spans(tok, ["chat"] * len(convs), [{"messages": c} for c in convs])
    assert calls == {"render": len(convs), "apply": 0}  # no prefix rendering


def test_encode_through_transformers_when_the_backend_is_configured(
    tiny_tokenizer_dir: Path,
) -> None:
    """A tokenizer.json with truncation set: transformers' call (which resets it) is used,
    with the same result."""
    tok = tokenizer_with(tiny_tokenizer_dir, CHATML_TEMPLATE)
    convs = conversations()[:8]
    examples: list[dict[str, Any]] = [{"messages": c} for c in convs]
    want = reference(tok, ["chat"] * len(convs), examples)
    tok._tokenizer.enable_truncation(8)
    assert encode(tok, ["chat"] * len(convs), examples) == want
