"""What each fine-tuning method can run with: one table, read by the planner and the trainer.

The planner only plans layouts this table allows and the trainer refuses (as bad input)
any other, so a plan can never name something the trainer will not run. Both import it;
neither restates a row. `docs/planner.md` shows the table as `markdown_table()` renders it
(a test keeps the two equal).

Adding a method: a row here, a policy in `kubetune.planner.methods` (its trainable
parameters), a builder in `kubetune_trainer.methods`, the spec's `Method` enum and the docs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Offload = Literal["none", "optimizer", "optimizer+parameters"]
OFFLOADS: tuple[Offload, ...] = ("none", "optimizer", "optimizer+parameters")


@dataclass(frozen=True)
class Capability:
    """One method's row: what it trains and the layouts, data and options it runs with."""

    name: str
    trains: str
    """What the method trains, in a few words (shown in plan reasons)."""
    default_learning_rate: float
    """The peak learning rate when spec.training.learningRate is unset."""
    zero_stages: tuple[int, ...]
    """DeepSpeed ZeRO stages it runs under (0: single process or plain DDP)."""
    offload: tuple[Offload, ...] = ("none",)
    """CPU offload modes it runs with."""
    trains_base_weights: bool = False
    """The saved result is the whole model, not an adapter."""
    quantised_base: bool = False
    """The frozen base is loaded in 4 bits (bitsandbytes)."""
    packing: bool = True
    """Packed rows work; virtual-token methods cannot follow packed position ids."""
    gradient_checkpointing: bool = True
    """Activations can be recomputed in the backward pass."""
    mergeable: bool = True
    """output.mergeAdapter is allowed: the adapter merges into the base weights (full
    fine-tuning saves the whole model and has nothing to merge)."""
    layout_notes: str = ""
    """Why some stages or offloads are not offered (shown in refusals and reasons)."""

    def layout_problem(self, zero_stage: int, offload: str) -> str | None:
        """Why this method cannot run with (zero_stage, offload), or None when it can."""
        if offload not in OFFLOADS:
            return f"offload {offload!r} is not one of {', '.join(OFFLOADS)}"
        if offload != "none" and zero_stage == 0:
            return f"CPU offload ({offload}) needs DeepSpeed ZeRO-2 or ZeRO-3, the plan has none"
        if offload == "optimizer+parameters" and zero_stage != 3:
            return f"parameter offload needs ZeRO-3, the plan has ZeRO-{zero_stage}"
        why = f": {self.layout_notes}" if self.layout_notes else ""
        if zero_stage not in self.zero_stages:
            stages = " or ".join(_stage(s) for s in self.zero_stages)
            return f"{self.name} runs with {stages}, not {_stage(zero_stage)}{why}"
        if offload not in self.offload:
            return f"{self.name} does not run with CPU offload ({offload}){why}"
        return None


def _stage(stage: int) -> str:
    return "no ZeRO (single GPU or DDP)" if stage == 0 else f"ZeRO-{stage}"


_PEFT_OFFLOAD = "adapter optimizer states are small, so CPU offload would save nothing"
_VIRTUAL_ZERO3 = (
    "PEFT saves virtual tokens by running their encoder on rank 0 alone, which waits"
    " forever for the other ranks under ZeRO-3's sharded weights (PEFT 0.21), so the base"
    " is never sharded; "
)

CAPABILITIES: dict[str, Capability] = {
    c.name: c
    for c in (
        Capability(
            name="full",
            trains="every weight (fp32 master weights and Adam states)",
            default_learning_rate=2e-5,
            zero_stages=(0, 2, 3),
            offload=OFFLOADS,
            trains_base_weights=True,
        ),
        Capability(
            name="lora",
            trains="low-rank adapters on a frozen 16-bit base",
            default_learning_rate=2e-4,
            zero_stages=(0, 3),
            layout_notes=_PEFT_OFFLOAD,
        ),
        Capability(
            name="qlora",
            trains="low-rank adapters on a frozen 4-bit NF4 base",
            default_learning_rate=2e-4,
            zero_stages=(0, 3),
            quantised_base=True,
            layout_notes="under ZeRO-3 the 4-bit weights are stored in the model's dtype"
            " (bnb_4bit_quant_storage) so DeepSpeed can shard them; " + _PEFT_OFFLOAD,
        ),
        Capability(
            name="prompt-tuning",
            trains="learned virtual-token embeddings",
            default_learning_rate=3e-2,
            zero_stages=(0,),
            packing=False,
            mergeable=False,
            layout_notes=_VIRTUAL_ZERO3 + _PEFT_OFFLOAD,
        ),
        Capability(
            name="prefix-tuning",
            trains="learned key/value prefixes in every layer",
            default_learning_rate=1e-2,
            zero_stages=(0,),
            packing=False,
            gradient_checkpointing=False,  # the prefix is a KV cache, not recomputable
            mergeable=False,
            layout_notes=_VIRTUAL_ZERO3 + _PEFT_OFFLOAD,
        ),
        Capability(
            name="ia3",
            trains="learned scaling vectors on keys, values and the MLP",
            default_learning_rate=3e-3,
            zero_stages=(0, 3),
            layout_notes=_PEFT_OFFLOAD,
        ),
    )
}
METHODS: tuple[str, ...] = tuple(CAPABILITIES)
"""Every concrete method (`auto` is resolved by the planner to one of these)."""
UNMERGEABLE: tuple[str, ...] = tuple(n for n, c in CAPABILITIES.items() if not c.mergeable)


class UnknownMethod(ValueError):
    """A method name that is not in the table."""


def capability(name: str) -> Capability:
    """The row for a concrete method; `auto` is not one."""
    try:
        return CAPABILITIES[name]
    except KeyError:
        raise UnknownMethod(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def _lr(value: float) -> str:
    """2e-4, not 0.0002."""
    return f"{value:.0e}".replace("e-0", "e-")


def markdown_table() -> str:
    """The table as docs/planner.md shows it."""
    head = (
        "| method | trains | default LR | ZeRO stages | CPU offload | 4-bit base | packing"
        " | gradient checkpointing | mergeAdapter |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    rows = [
        f"| {c.name} | {c.trains} | {_lr(c.default_learning_rate)}"
        f" | {', '.join(str(s) for s in c.zero_stages)}"
        f" | {', '.join(o for o in c.offload if o != 'none') or '-'}"
        f" | {yes(c.quantised_base)} | {yes(c.packing)} | {yes(c.gradient_checkpointing)}"
        f" | {yes(c.mergeable) if not c.trains_base_weights else '-'} |"
        for c in CAPABILITIES.values()
    ]
    return head + "\n".join(rows) + "\n"
