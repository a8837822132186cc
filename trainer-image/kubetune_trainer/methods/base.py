"""How a fine-tuning method loads and wraps the model; the recipe asks, never branches.

What a method can run with (ZeRO stages, offload, packing, checkpointing, its default
learning rate) is its row in `kubetune.capabilities`, the table the planner plans from;
a method here only builds: load arguments, the PEFT config, model preparation, the
optimizer. Modules import peft/bitsandbytes inside functions so that the registry can be
read without torch installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import Plan
from kubetune.capabilities import Capability, capability

from ..failures import BadInput


@dataclass(frozen=True)
class Hardware:
    """What the process runs on, which decides precision and optimizer choices."""

    cuda: bool
    bf16: bool
    """The accelerator computes in bf16 (Ampere and newer)."""


class Method:
    """A fine-tuning method: how to load the base model and what to wrap it in."""

    name: ClassVar[str]

    @property
    def capability(self) -> Capability:
        return capability(self.name)

    def validate(self, spec: FineTuneJobSpec, plan: Plan) -> None:
        """Refuse a layout the capability table does not allow, saying what to change."""
        problem = self.capability.layout_problem(plan.zero_stage, plan.offload)
        if problem is not None:
            raise BadInput(
                f"plan.zeroStage {plan.zero_stage} / plan.offload {plan.offload}: {problem};"
                " re-plan the job (kubetune plan) instead of editing the plan"
            )
        if plan.gradient_checkpointing and not self.capability.gradient_checkpointing:
            raise BadInput(
                f"plan.gradientCheckpointing: {self.name} cannot recompute activations;"
                " re-plan the job (kubetune plan) instead of editing the plan"
            )

    def load_kwargs(
        self, spec: FineTuneJobSpec, hardware: Hardware, dtype: Any, sharded: bool
    ) -> dict[str, Any]:
        """Extra `from_pretrained` arguments (quantisation) for a model loaded in `dtype`,
        `sharded` under DeepSpeed ZeRO-3."""
        return {}

    def peft_config(self, spec: FineTuneJobSpec, tokenizer_path: str) -> Any:
        """The PEFT config that SFTTrainer wraps the model with; None trains the weights."""
        return None

    def prepare_model(self, model: Any, gradient_checkpointing: bool, sharded: bool) -> Any:
        """Method-specific model preparation before PEFT wrapping."""
        return model

    def optimizer(self, hardware: Hardware) -> str:
        """The `TrainingArguments.optim` name."""
        if hardware.cuda:
            return "adamw_torch_fused"
        return "adamw_torch"
