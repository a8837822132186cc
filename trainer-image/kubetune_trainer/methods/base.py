"""What every fine-tuning method states about itself; the recipe asks, never branches.

Modules here import peft/bitsandbytes inside functions so that the registry (and the
default learning rates) can be read without torch installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import Plan

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
    default_learning_rate: ClassVar[float]
    trains_base_weights: ClassVar[bool] = False
    """Full fine-tuning: the saved result is the whole model, not an adapter."""
    quantized: ClassVar[bool] = False
    supports_packing: ClassVar[bool] = True
    """Methods that prepend virtual tokens cannot follow packed position ids."""
    supports_gradient_checkpointing: ClassVar[bool] = True
    max_zero_stage: ClassVar[int] = 3
    supports_offload: ClassVar[bool] = True

    def validate(self, spec: FineTuneJobSpec, plan: Plan) -> None:
        """Refuse combinations that cannot work, with what to change instead."""
        if plan.zero_stage > self.max_zero_stage:
            raise BadInput(
                f"method {self.name} does not run under DeepSpeed ZeRO-{plan.zero_stage}"
                f" (at most ZeRO-{self.max_zero_stage}); plan it with DDP"
                f"{' or ZeRO-' + str(self.max_zero_stage) if self.max_zero_stage else ''}"
                " (zeroStage 0) or choose method full/lora"
            )
        if plan.offload != "none" and not self.supports_offload:
            raise BadInput(
                f"method {self.name} does not support DeepSpeed CPU offload"
                f" ({plan.offload}); use offload none"
            )

    def load_kwargs(self, spec: FineTuneJobSpec, hardware: Hardware) -> dict[str, Any]:
        """Extra `from_pretrained` arguments (quantisation)."""
        return {}

    def peft_config(self, spec: FineTuneJobSpec, tokenizer_path: str) -> Any:
        """The PEFT config that SFTTrainer wraps the model with; None trains the weights."""
        return None

    def prepare_model(self, model: Any, gradient_checkpointing: bool) -> Any:
        """Method-specific model preparation before PEFT wrapping."""
        return model

    def optimizer(self, hardware: Hardware) -> str:
        """The `TrainingArguments.optim` name."""
        if hardware.cuda:
            return "adamw_torch_fused"
        return "adamw_torch"
