"""QLoRA: LoRA over a frozen 4-bit (NF4, double-quantised) base, bf16 compute.

Runs single-GPU or with DDP. Not under DeepSpeed ZeRO or CPU offload: the 4-bit weights
are already the memory saving, and sharding bitsandbytes tensors needs a matching quant
storage dtype that we do not plan for; the planner picks DDP, and a config asking for
ZeRO with QLoRA is refused as bad input.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.spec import FineTuneJobSpec, QLoRASpec

from .base import Hardware, Method
from .lora import lora_config


class QLoRA(Method):
    name = "qlora"
    default_learning_rate = 2e-4
    quantized = True
    max_zero_stage = 0
    supports_offload = False

    def load_kwargs(self, spec: FineTuneJobSpec, hardware: Hardware) -> dict[str, Any]:
        import torch
        from transformers import BitsAndBytesConfig

        q = spec.qlora or QLoRASpec()
        compute = getattr(torch, q.compute_dtype)
        if compute is torch.bfloat16 and hardware.cuda and not hardware.bf16:
            compute = torch.float16  # pre-Ampere GPUs have no bf16 matmul
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=q.quant_type,
                bnb_4bit_use_double_quant=q.double_quant,
                bnb_4bit_compute_dtype=compute,
            )
        }

    def peft_config(self, spec: FineTuneJobSpec, tokenizer_path: str) -> Any:
        return lora_config(spec)

    def prepare_model(self, model: Any, gradient_checkpointing: bool) -> Any:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )

    def optimizer(self, hardware: Hardware) -> str:
        # Paged optimizer states survive memory spikes on GPU; bitsandbytes pages need CUDA.
        return "paged_adamw_32bit" if hardware.cuda else "adamw_torch"
