"""LoRA: low-rank adapters on the chosen linear layers (rsLoRA, DoRA optional)."""

from __future__ import annotations

from typing import Any

from kubetune.api.spec import FineTuneJobSpec, LoRASpec

from .base import Method


def lora_config(spec: FineTuneJobSpec) -> Any:
    from peft import LoraConfig, TaskType

    lora = spec.lora or LoRASpec()
    targets: str | list[str] = (
        "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules)
    )
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora.r,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft accepts floats
        lora_dropout=lora.dropout,
        target_modules=targets,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        bias="none",
    )


class LoRA(Method):
    name = "lora"

    def peft_config(self, spec: FineTuneJobSpec, tokenizer_path: str) -> Any:
        return lora_config(spec)
