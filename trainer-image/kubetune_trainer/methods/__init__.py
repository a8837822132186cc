"""The fine-tuning methods' builders, by the name `plan.method` uses.

What each method can run with is its row in `kubetune.capabilities`; adding a method is
that row, a module here with a `Method` subclass and one line in `METHODS`.
"""

from __future__ import annotations

from ..failures import BadInput
from .base import Hardware, Method
from .full import Full
from .ia3 import IA3
from .lora import LoRA
from .prompt_tuning import PrefixTuning, PromptTuning
from .qlora import QLoRA

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (Full, LoRA, QLoRA, PromptTuning, PrefixTuning, IA3)
}


def get_method(name: str) -> Method:
    """The method `name`; `auto` must have been resolved by the planner."""
    try:
        return METHODS[name]()
    except KeyError:
        raise BadInput(
            f"plan.method {name!r} is not one of {', '.join(METHODS)}; the operator resolves"
            " `auto` before launch, so this config was not produced by a matching operator"
        ) from None


__all__ = ["METHODS", "Hardware", "Method", "get_method"]
