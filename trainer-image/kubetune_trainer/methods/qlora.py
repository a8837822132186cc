"""QLoRA: LoRA over a frozen 4-bit (NF4, double-quantised) base, bf16 compute.

Single GPU and DDP keep bitsandbytes' default uint8 storage. Under DeepSpeed ZeRO-3 the
4-bit weights are stored in the model's dtype (`bnb_4bit_quant_storage`, the dtype the
model loads in), which lets DeepSpeed flatten and shard them with the rest of the frozen
base (PEFT's "QLoRA and DeepSpeed with ZeRO3" recipe); transformers then loads the 4-bit
model without zero.Init, so each rank briefly holds all of it (the planner counts that).
"""

from __future__ import annotations

from typing import Any

from kubetune.api.spec import FineTuneJobSpec, QLoRASpec

from .base import Hardware, Method
from .lora import lora_config


class QLoRA(Method):
    name = "qlora"

    def load_kwargs(
        self, spec: FineTuneJobSpec, hardware: Hardware, dtype: Any, sharded: bool
    ) -> dict[str, Any]:
        import torch
        from transformers import BitsAndBytesConfig

        q = spec.qlora or QLoRASpec()
        compute = getattr(torch, q.compute_dtype)
        if compute is torch.bfloat16 and hardware.cuda and not hardware.bf16:
            compute = torch.float16  # pre-Ampere GPUs have no bf16 matmul
        extra: dict[str, Any] = {"bnb_4bit_quant_storage": dtype} if sharded else {}
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=q.quant_type,
                bnb_4bit_use_double_quant=q.double_quant,
                bnb_4bit_compute_dtype=compute,
                **extra,
            )
        }

    def peft_config(self, spec: FineTuneJobSpec, tokenizer_path: str) -> Any:
        return lora_config(spec)

    def prepare_model(self, model: Any, gradient_checkpointing: bool, sharded: bool) -> Any:
        if sharded:
            # PEFT's k-bit preparation upcasts every 16-bit parameter to fp32, which would
            # leave DeepSpeed mixed dtypes to shard; the sharded recipe skips it.
            if gradient_checkpointing:
                model.enable_input_require_grads()
            for module in model.modules():
                # bitsandbytes repacks 4-bit weights in place for its AVX-512 CPU kernels
                # at inference, as uint8 whatever their storage dtype, which breaks the
                # weights DeepSpeed partitions (CPU runs only; GPUs never repack).
                if getattr(module, "support_avx512bf16_for_cpu", False):
                    module.support_avx512bf16_for_cpu = False
            return model
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )

    def optimizer(self, hardware: Hardware) -> str:
        # Paged optimizer states survive memory spikes on GPU; bitsandbytes pages need CUDA.
        return "paged_adamw_32bit" if hardware.cuda else "adamw_torch"
