"""Tokenising examples with loss only where the model should learn: the assistant's turns.

What an assistant turn is (chosen over `{% generation %}` / assistant-token masks, which
few templates support): every assistant turn i is the characters between
`render(messages[:i], add_generation_prompt=True)` and `render(messages[:i+1])`, minus
trailing whitespace — i.e. the assistant's content plus the template's end-of-turn marker
(which the model must learn, or it never stops). `prefix_spans_batch` computes exactly that
by rendering the 2k+1 prefixes; `chat_spans_batch` finds the same spans rendering each
conversation once (`chatspans`: the generation prompt and end-of-turn text learned from a
probe, searched for) and uses the prefix method only for the rows (or templates) where that
does not apply. The conversation is tokenised once and a token is labelled when its
characters overlap an assistant span. This works for any template whose renderings of a
conversation's prefixes are prefixes of its full rendering; a template that is not (it
rewrites earlier turns) is refused for that row rather than mislabelled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import chatspans
from .formats import RowError

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (PyTorch cross-entropy's ignore_index)."""

Span = tuple[int, int]


def render(tokenizer: Any, messages: list[dict[str, str]], generation: bool = False) -> str:
    """The chat template's text for `messages` (no tokenisation)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    return str(text)


def chat_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[Span]]:
    """The rendered conversation and the character spans of its assistant turns."""
    result = chat_spans_batch(tokenizer, [messages])[0]
    if isinstance(result, RowError):
        raise result
    return result


def _render_many(
    tokenizer: Any, conversations: list[list[dict[str, str]]], generation: bool
) -> list[str | RowError]:
    """Renders in one call (the per-call overhead dominates), row by row if one fails."""
    if not conversations:
        return []
    try:
        return [
            str(t)
            for t in tokenizer.apply_chat_template(
                conversations, tokenize=False, add_generation_prompt=generation
            )
        ]
    except Exception:
        out: list[str | RowError] = []
        for conversation in conversations:
            try:
                out.append(render(tokenizer, conversation, generation))
            except Exception as err:  # jinja's raise_exception(), e.g. roles must alternate
                out.append(RowError(f"chat template error: {err}"))
        return out


def chat_spans_batch(
    tokenizer: Any, conversations: Sequence[list[dict[str, str]]]
) -> list[tuple[str, list[Span]] | RowError]:
    """`chat_spans` for many conversations: one rendering each where the template allows
    (see `chatspans`), the prefix method for the rest; the same result either way."""
    renderer = chatspans.Renderer(tokenizer)
    lay = chatspans.layout(renderer, lambda messages: prefix_spans(tokenizer, messages))
    results: list[tuple[str, list[Span]] | RowError | None] = [None] * len(conversations)
    slow: list[int] = []
    for at, messages in enumerate(conversations):
        if not lay.searchable:
            slow.append(at)
            continue
        try:
            text = renderer.render(messages)
        except Exception as err:  # jinja's raise_exception(), e.g. roles must alternate
            results[at] = RowError(f"chat template error: {err}")
            continue
        spans = chatspans.search_spans(lay, text, messages)
        if spans is None:
            slow.append(at)
        else:
            results[at] = (text, spans)
    if slow:
        for at, result in zip(
            slow, prefix_spans_batch(tokenizer, [conversations[i] for i in slow]), strict=True
        ):
            results[at] = result
    return [r for r in results if r is not None]


def prefix_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[Span]]:
    """The prefix method for one conversation (what `chatspans` probes templates with)."""
    result = prefix_spans_batch(tokenizer, [messages])[0]
    if isinstance(result, RowError):
        raise result
    return result


def prefix_spans_batch(
    tokenizer: Any, conversations: Sequence[list[dict[str, str]]]
) -> list[tuple[str, list[Span]] | RowError]:
    """The definition (module doc): every conversation's prefixes rendered, in two calls."""
    closed: list[list[dict[str, str]]] = []  # full conversations, then prefixes up to turn i
    opened: list[list[dict[str, str]]] = []  # prefixes before turn i, with generation prompt
    plan = []
    for messages in conversations:
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        at = len(closed)
        closed.append(messages)
        pairs = []
        for i in turns:
            opened.append(messages[:i])
            upto = at if i == turns[-1] else len(closed)
            if i != turns[-1]:
                closed.append(messages[: i + 1])
            pairs.append((len(opened) - 1, upto))
        plan.append((at, pairs))
    closed_text = _render_many(tokenizer, closed, False)
    opened_text = _render_many(tokenizer, opened, True)
    results: list[tuple[str, list[Span]] | RowError] = []
    for full_at, pairs in plan:
        texts = [closed_text[full_at]] + [
            t for b, u in pairs for t in (opened_text[b], closed_text[u])
        ]
        error = next((t for t in texts if isinstance(t, RowError)), None)
        if error is not None:
            results.append(error)
            continue
        text = str(texts[0])
        spans: list[Span] = []
        for b, u in pairs:
            head, done = str(opened_text[b]), str(closed_text[u])
            if not (text.startswith(done) and done.startswith(head)):
                results.append(
                    RowError(
                        "the chat template renders this conversation's prefixes inconsistently, "
                        "so assistant turns cannot be located"
                    )
                )
                break
            end = len(done.rstrip())
            if end > len(head):
                spans.append((len(head), end))
        else:
            results.append((text, spans))
    return results


def texts_and_spans(
    tokenizer: Any, kinds: Sequence[str], examples: Sequence[dict[str, Any]]
) -> list[tuple[str, list[Span]] | RowError]:
    """The text to tokenise and the character spans that carry loss, for any kind."""
    eos = tokenizer.eos_token or ""
    chats = [i for i, k in enumerate(kinds) if k == "chat"]
    rendered = iter(chat_spans_batch(tokenizer, [examples[i]["messages"] for i in chats]))
    out: list[tuple[str, list[Span]] | RowError] = []
    for kind, example in zip(kinds, examples, strict=True):
        if kind == "chat":
            out.append(next(rendered))
        elif kind == "completion":
            text = example["prompt"] + example["completion"] + eos
            out.append((text, [(len(example["prompt"]), len(text))]))
        else:
            text = example["text"] + eos
            out.append((text, [(0, len(text))]))
    return out


def label_tokens(offsets: np.ndarray, spans: Sequence[Span]) -> np.ndarray:
    """Boolean mask of tokens whose character range overlaps any span."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    mask = np.zeros(len(offsets), dtype=bool)
    for a, b in spans:
        mask |= (ends > a) & (starts < b) & (ends > starts)
    return mask


def encode(
    tokenizer: Any, kinds: Sequence[str], examples: Sequence[dict[str, Any]]
) -> list[tuple[list[int], list[int]] | str]:
    """(input_ids, labels) per example, or the reason it could not be encoded.

    Chat text already holds the template's special tokens (BOS included), so it is
    tokenised without adding more; completion and text get the tokenizer's usual ones.
    """
    results: list[tuple[list[int], list[int]] | str] = [""] * len(examples)
    groups: dict[bool, list[tuple[int, str, list[Span]]]] = {True: [], False: []}
    for i, (kind, rendered) in enumerate(
        zip(kinds, texts_and_spans(tokenizer, kinds, examples), strict=True)
    ):
        if isinstance(rendered, RowError):
            results[i] = str(rendered)
            continue
        groups[kind != "chat"].append((i, *rendered))
    for add_special, group in groups.items():
        if not group:
            continue
        texts = [t for _, t, _ in group]
        backend = _backend(tokenizer)
        if backend is None:
            enc = tokenizer(texts, add_special_tokens=add_special, return_offsets_mapping=True)
            for (i, _, spans), ids, offsets in zip(
                group, enc["input_ids"], enc["offset_mapping"], strict=True
            ):
                results[i] = _labelled(list(ids), offsets, spans)
            continue
        for (i, _, spans), encoding in zip(
            group, backend.encode_batch(texts, add_special_tokens=add_special), strict=True
        ):
            ids = encoding.ids
            labels = _labels_by_position(encoding, ids, spans)
            results[i] = (
                (ids, labels) if labels is not None else _labelled(ids, encoding.offsets, spans)
            )
    return results


def _backend(tokenizer: Any) -> Any:
    """The Rust tokenizer to call directly when that is what `tokenizer(...)` would run
    with these settings (fast tokenizer, no truncation or padding configured, special
    tokens not split); else None. Saves transformers' per-row conversion to dicts."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if not getattr(tokenizer, "is_fast", False) or backend is None:
        return None
    if backend.truncation is not None or backend.padding is not None:
        return None
    if bool(getattr(tokenizer, "split_special_tokens", False)) != bool(
        getattr(backend, "encode_special_tokens", False)
    ):
        return None
    return backend


def _labelled(ids: list[int], offsets: Any, spans: Sequence[Span]) -> tuple[list[int], list[int]]:
    mask = label_tokens(np.asarray(offsets, dtype=np.int64).reshape(-1, 2), spans)
    return ids, np.where(mask, np.asarray(ids, dtype=np.int64), IGNORE_INDEX).tolist()


def _labels_by_position(encoding: Any, ids: list[int], spans: Sequence[Span]) -> list[int] | None:
    """`label_tokens`' result from the tokens at each span's two ends (char_to_token),
    widened to every neighbour that still overlaps the span, without building the offset
    array. None when a span end maps to no token (the caller then uses the offsets)."""
    labels = [IGNORE_INDEX] * len(ids)
    n = len(ids)
    for a, b in spans:
        first, last = encoding.char_to_token(a), encoding.char_to_token(b - 1)
        if first is None or last is None:
            return None
        while first > 0 and _overlaps(encoding.token_to_chars(first - 1), a, b):
            first -= 1
        while last + 1 < n and _overlaps(encoding.token_to_chars(last + 1), a, b):
            last += 1
        for t in range(first, last + 1):
            if not _overlaps(encoding.token_to_chars(t), a, b):
                return None  # an empty token inside the span: let label_tokens decide
        labels[first : last + 1] = ids[first : last + 1]
    return labels


def _overlaps(chars: Any, a: int, b: int) -> bool:
    if chars is None:
        return False
    start, end = chars
    return bool(end > a and start < b and end > start)


def fit_length(
    kind: str, ids: list[int], labels: list[int], max_len: int
) -> list[tuple[list[int], list[int]]]:
    """Pieces of at most `max_len` tokens that still carry loss.

    Plain text is cut into consecutive chunks (no pre-training text is wasted); chat and
    completion examples are truncated, and dropped when nothing trainable survives.
    """
    if kind == "text":
        pieces = [
            (ids[s : s + max_len], labels[s : s + max_len]) for s in range(0, len(ids), max_len)
        ]
    else:
        pieces = [(ids[:max_len], labels[:max_len])]
    # some label after the first token (list.count runs in C: this is per row)
    return [(i, lab) for i, lab in pieces if lab[1:].count(IGNORE_INDEX) < len(lab) - 1]


def preference_parts(tokenizer: Any, example: dict[str, Any]) -> tuple[str, str, str, str]:
    """(prompt messages as JSON, prompt text, chosen continuation, rejected continuation).

    Chat pairs are rendered with the template: the prompt with its generation prompt,
    each answer as the text the full conversation adds after it (end-of-turn marker
    included), as TRL tokenises conversational preference data. Plain-text pairs are
    used as given, each answer ending with EOS (as TRL adds it).
    """
    if isinstance(example["chosen"], str):
        eos = tokenizer.eos_token or ""
        answers = [
            a if a.endswith(eos) else a + eos for a in (example["chosen"], example["rejected"])
        ]
        return "[]", example["prompt"], answers[0], answers[1]
    prompt = example["prompt"]
    head = render(tokenizer, prompt, True)
    out = []
    for key in ("chosen", "rejected"):
        full = render(tokenizer, [*prompt, *example[key]])
        if not full.startswith(head):
            raise RowError(
                "the chat template renders the prompt differently inside the conversation,"
                " so the answer cannot be separated from it"
            )
        out.append(full[len(head) :].rstrip())  # as the SFT spans: no trailing whitespace
    return json.dumps(prompt, ensure_ascii=False), head, out[0], out[1]


def prompt_and_reference(
    tokenizer: Any, kind: str, example: dict[str, Any]
) -> tuple[str, str, str]:
    """(prompt messages as JSON, prompt text ready to generate from, reference answer).

    The test split keeps these so evaluation generates with exactly the training template.
    """
    if kind == "chat":
        messages = example["messages"]
        prompt = messages[:-1]
        return (
            json.dumps(prompt, ensure_ascii=False),
            render(tokenizer, prompt, True),
            messages[-1]["content"],
        )
    if kind == "completion":
        return "[]", example["prompt"], example["completion"]
    if kind == "preference":
        chosen = example["chosen"]
        reference = chosen if isinstance(chosen, str) else chosen[-1]["content"]
        if isinstance(chosen, str):
            return "[]", example["prompt"], reference
        return (
            json.dumps(example["prompt"], ensure_ascii=False),
            render(tokenizer, example["prompt"], True),
            reference,
        )
    return "[]", "", ""
