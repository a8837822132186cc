"""Locating assistant turns with one rendering of each conversation.

The definition of an assistant span is `masking.prefix_spans_batch`: for turn i, the
characters between `render(messages[:i], add_generation_prompt=True)` and
`render(messages[:i+1])`, trailing whitespace removed. Computing it that way renders 2k+1
prefixes for k turns; this module renders the conversation once and finds the same spans.

A probe conversation, rendered both ways once per template, gives the text the template
writes before an assistant message's content (the generation prompt, `head`) and after it
(the end-of-turn marker, `tail`); each turn is then the first `head + content + tail` after
the previous turn. A turn that is not found that way (a template that trims or rewrites
content, an odd row) sends its row to the prefix method, and so does every row of a
template whose probe renders its prefixes inconsistently, differently from turn to turn,
or without the content verbatim.

Templates with `{% generation %}` markers are found the same way, not by their markers:
the markers may bound a turn differently from the definition (then kubetune's labels would
depend on whether a template has them), and transformers' marker tracking renders through
`generate()`, measured 2x slower than a plain render plus the search.

The conversations are rendered by the tokenizer's compiled template directly (the same
object `apply_chat_template` renders with) when every message is a plain
`{"role": str, "content": str}` — what the pipeline's normaliser produces —, for which
`apply_chat_template`'s input cleaning changes nothing; anything else goes through
`apply_chat_template` itself.

Known limit: a user or system message containing the literal text `head + content + tail`
of a later assistant turn (the template's control tokens included) would be taken for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Span = tuple[int, int]
Messages = list[dict[str, str]]

PROBE: Messages = [
    {"role": "system", "content": "kubetune probe system"},
    {"role": "user", "content": "kubetune probe question one"},
    {"role": "assistant", "content": "kubetune probe answer one"},
    {"role": "user", "content": "kubetune probe question two"},
    {"role": "assistant", "content": "kubetune probe answer two"},
]


@dataclass(frozen=True)
class Layout:
    """How one template's assistant turns are found (see the module doc)."""

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
        try:
            from transformers.utils import chat_template_utils as ctu

            self.compiled = ctu._compile_jinja_template(self.template)
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
    """With a system prompt, else without (templates that refuse the system role)."""
    for probe in (PROBE, PROBE[1:]):
        try:
            found = _probe_with(renderer, prefix_spans, probe)
        except Exception:  # a template that fails the probe uses the prefix method
            continue
        if found.searchable:
            return found
    return Layout()


def _probe_with(
    renderer: Renderer,
    prefix_spans: Callable[[Messages], tuple[str, list[Span]]],
    probe: Messages,
) -> Layout:
    text, spans = prefix_spans(probe)
    turns = [i for i, m in enumerate(probe) if m["role"] == "assistant"]
    heads, tails = set(), set()
    for i, (a, b) in zip(turns, spans, strict=True):
        content = probe[i]["content"]
        if text[a : a + len(content)] != content:
            return Layout()
        closed = renderer.render(probe[:i])
        opened = renderer.render(probe[:i], generation=True)
        if not opened.startswith(closed) or len(opened) != a:
            return Layout()
        heads.add(opened[len(closed) :])
        tails.add(text[a + len(content) : b])
    if len(heads) != 1 or len(tails) != 1:
        return Layout()
    found = Layout(head=heads.pop(), tail=tails.pop(), searchable=True)
    if not (found.head or found.tail) or search_spans(found, text, probe) != spans:
        return Layout()
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
