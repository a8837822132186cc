"""Locating assistant turns with one rendering of each conversation.

The definition of an assistant span is `masking.prefix_spans`: for turn i, the characters
between `render(messages[:i], add_generation_prompt=True)` and `render(messages[:i+1])`,
trailing whitespace removed. Computing it that way renders 2k+1 prefixes for k turns;
this module renders the conversation once and finds the same spans:

- **templates with `{% generation %}` markers**: the marked ranges (what transformers'
  `return_assistant_tokens_mask` and TRL's `assistant_only_loss` use), trailing
  whitespace removed as above;
- **other templates**: a probe conversation, rendered both ways once per template, gives
  the text the template writes before an assistant message's content (the generation
  prompt, `head`) and after it (the end-of-turn marker, `tail`); each turn is then the
  first `head + content + tail` after the previous turn. A turn that is not found that way
  (a template that trims or rewrites content, an odd row) sends the row to the prefix
  method, and so does every row of a template whose probe renders its prefixes
  inconsistently or does not show the content verbatim.

The conversations are rendered by the tokenizer's compiled template directly (the same
object `apply_chat_template` renders with) and only when every message is a plain
`{"role": str, "content": str}` — what the pipeline's normaliser produces —, for which
`apply_chat_template`'s input cleaning changes nothing; anything else goes through
`apply_chat_template` itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Span = tuple[int, int]
Messages = list[dict[str, str]]

MARKERS = re.compile(r"\{%-?\s*generation\s*-?%\}")
PROBE: Messages = [
    {"role": "system", "content": "kubetune probe system"},
    {"role": "user", "content": "kubetune probe question one"},
    {"role": "assistant", "content": "kubetune probe answer one"},
    {"role": "user", "content": "kubetune probe question two"},
    {"role": "assistant", "content": "kubetune probe answer two"},
]


class NotPlain(Exception):
    """The conversation is not plain role/content strings: render it the slow way."""


@dataclass(frozen=True)
class Layout:
    """How one template's assistant turns are found (see the module doc)."""

    markers: bool
    head: str = ""
    tail: str = ""
    searchable: bool = False
    """False: every row goes to the prefix method."""


class Renderer:
    """The tokenizer's template, compiled once, rendered without per-call overhead."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        template = tokenizer.get_chat_template()
        self.template = str(template)
        self.kwargs = dict(tokenizer.special_tokens_map)
        self.compiled: Any = None
        self.marked: Callable[..., tuple[str, list[Span]]] | None = None
        try:
            from transformers.utils import chat_template_utils as ctu

            self.compiled = ctu._compile_jinja_template(self.template)
            if MARKERS.search(self.template):
                self.marked = ctu._render_with_assistant_indices
        except (ImportError, AttributeError):  # another transformers: apply_chat_template only
            self.compiled = None

    @staticmethod
    def plain(messages: Messages) -> bool:
        return all(
            type(m) is dict
            and len(m) == 2
            and type(m.get("role")) is str
            and type(m.get("content")) is str
            for m in messages
        )

    def render(self, messages: Messages, generation: bool = False) -> str:
        if self.compiled is None or not messages or not self.plain(messages):
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation
            )
            return str(text)
        return str(
            self.compiled.render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=generation,
                **self.kwargs,
            )
        )

    def render_marked(self, messages: Messages) -> tuple[str, list[Span]]:
        """The text and its `{% generation %}` ranges (only for templates with markers)."""
        if self.marked is None or self.compiled is None or not messages:
            raise NotPlain
        if not self.plain(messages):
            raise NotPlain
        text, ranges = self.marked(self.compiled, messages, None, None, False, **self.kwargs)
        return text, [(int(a), int(b)) for a, b in ranges]


_LAYOUTS: dict[tuple[str, str], Layout] = {}


def layout(
    renderer: Renderer, prefix_spans: Callable[[Messages], tuple[str, list[Span]]]
) -> Layout:
    """The template's layout, probed once per template (and special tokens)."""
    key = (renderer.template, repr(sorted(renderer.kwargs.items())))
    if key not in _LAYOUTS:
        _LAYOUTS[key] = _probe(renderer, prefix_spans)
    return _LAYOUTS[key]


def _probe(
    renderer: Renderer, prefix_spans: Callable[[Messages], tuple[str, list[Span]]]
) -> Layout:
    if renderer.marked is not None and renderer.compiled is not None:
        return Layout(markers=True)
    try:
        text, spans = prefix_spans(PROBE)
        turns = [i for i, m in enumerate(PROBE) if m["role"] == "assistant"]
        heads, tails = set(), set()
        for i, (a, b) in zip(turns, spans, strict=True):
            content = PROBE[i]["content"]
            if text[a : a + len(content)] != content:
                return Layout(markers=False)
            closed = renderer.render(PROBE[:i])
            opened = renderer.render(PROBE[:i], generation=True)
            if not opened.startswith(closed) or len(opened) != a:
                return Layout(markers=False)
            heads.add(opened[len(closed) :])
            tails.add(text[a + len(content) : b])
    except Exception:  # a template that fails the probe uses the prefix method
        return Layout(markers=False)
    if len(heads) != 1 or len(tails) != 1:
        return Layout(markers=False)
    found = Layout(markers=False, head=heads.pop(), tail=tails.pop(), searchable=True)
    if not (found.head or found.tail) or search_spans(found, text, PROBE) != spans:
        return Layout(markers=False)
    return found


def search_spans(lay: Layout, text: str, messages: Sequence[dict[str, str]]) -> list[Span] | None:
    """Each assistant turn as the first `head + content + tail` after the previous one,
    or None when one is not found (the row then takes the prefix method)."""
    spans: list[Span] = []
    at = 0
    head, tail = lay.head, lay.tail
    for m in messages:
        if m["role"] != "assistant":
            continue
        content = m["content"]
        found = text.find(head + content + tail, at)
        if found < 0:
            return None
        start = found + len(head)
        at = start + len(content) + len(tail)
        end = start + len((content + tail).rstrip())
        if end > start:
            spans.append((start, end))
    return spans


def marked_spans(text: str, ranges: Sequence[Span]) -> list[Span]:
    """Generation ranges with their trailing whitespace removed (as the prefix method)."""
    out = []
    for a, b in ranges:
        end = a + len(text[a:b].rstrip())
        if end > a:
            out.append((a, end))
    return out
