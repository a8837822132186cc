"""Prompt tuning and prefix tuning: learned virtual tokens, the model stays frozen.

Virtual tokens are prepended to every sequence, so packed rows (several examples sharing
one row through position ids) cannot be used: the recipe prepares unpacked data.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.spec import FineTuneJobSpec, PromptTuningSpec

from .base import Method


class PromptTuning(Method):
    name = "prompt-tuning"

    def peft_config(self, spec: FineTuneJobSpec, tokenizer_path: str) -> Any:
        from peft import PromptTuningConfig, PromptTuningInit, TaskType

        pt = spec.prompt_tuning or PromptTuningSpec()
        if pt.init_text:
            return PromptTuningConfig(
                task_type=TaskType.CAUSAL_LM,
                num_virtual_tokens=pt.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=pt.init_text,
                tokenizer_name_or_path=tokenizer_path,
            )
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=pt.num_virtual_tokens
        )


class PrefixTuning(Method):
    name = "prefix-tuning"

    def peft_config(self, spec: FineTuneJobSpec, tokenizer_path: str) -> Any:
        from peft import PrefixTuningConfig, TaskType

        pt = spec.prompt_tuning or PromptTuningSpec()
        return PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=pt.num_virtual_tokens
        )
