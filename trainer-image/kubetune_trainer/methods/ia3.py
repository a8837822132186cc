"""IA3: learned rescaling vectors on keys, values and the MLP (PEFT's per-model defaults)."""

from __future__ import annotations

from typing import Any

from kubetune.api.spec import FineTuneJobSpec

from .base import Method


class IA3(Method):
    name = "ia3"

    def peft_config(self, spec: FineTuneJobSpec, tokenizer_path: str) -> Any:
        from peft import IA3Config, TaskType

        return IA3Config(task_type=TaskType.CAUSAL_LM)
