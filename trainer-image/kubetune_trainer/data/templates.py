"""Which chat template formats the conversations, recorded so inference uses the same one.

The base model's own template (from its tokenizer) is always preferred: training on one
format and serving with another is a silent quality loss. Tokenizers without a template
(most base models) get ChatML, declared as a fallback in the data report.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""The declared fallback: ChatML, as used by Qwen, OpenHermes and many others."""

TEMPLATE_FILE = "chat_template.jinja"


@dataclass(frozen=True)
class TemplateInfo:
    """The template in use and where it came from (`tokenizer` or `fallback-chatml`)."""

    source: str
    template: str
    markers_are_tokens: bool = True
    """False when the fallback's <|im_start|>/<|im_end|> are not single tokens of the vocab."""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()

    def to_report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "sha256": self.sha256, "file": TEMPLATE_FILE}
        if not self.markers_are_tokens:
            out["note"] = (
                "ChatML markers are not special tokens of this tokenizer; they are "
                "learned as ordinary text"
            )
        return out


def resolve_template(tokenizer: Any) -> TemplateInfo:
    """The tokenizer's own template, else ChatML — which is then set on the tokenizer,
    so anything saving the tokenizer afterwards (the trainer) ships the template used."""
    own = tokenizer.chat_template
    if isinstance(own, dict):  # several named templates: the default one formats chats
        own = own.get("default") or next(iter(own.values()), None)
    if own:
        return TemplateInfo("tokenizer", own)
    tokenizer.chat_template = CHATML
    vocab = tokenizer.get_vocab()
    markers = all(m in vocab for m in ("<|im_start|>", "<|im_end|>"))
    return TemplateInfo("fallback-chatml", CHATML, markers_are_tokens=markers)


def write_template(out_dir: str | Path, info: TemplateInfo) -> Path:
    """Save the template next to the data, for the trainer to store with the model."""
    path = Path(out_dir) / TEMPLATE_FILE
    path.write_text(info.template, encoding="utf-8")
    return path
