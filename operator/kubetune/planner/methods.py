"""One small policy class per fine-tuning method, in a registry keyed by method name.

A policy answers what differs between methods: which parameters train, what the frozen
base weighs, which ZeRO layouts make sense, and the default learning rate.
"""

from __future__ import annotations

from typing import ClassVar

from kubetune.api.spec import FineTuneJobSpec, LoRASpec, PromptTuningSpec, QLoRASpec

from . import calibration as cal
from .architecture import Arch, Linear, resolve_targets
from .memory import Strategy, nf4_bytes_per_weight

REGISTRY: dict[str, MethodPolicy] = {}


class MethodPolicy:
    """Defaults shared by the parameter-efficient methods: frozen 16-bit base."""

    name: ClassVar[str]
    default_lr: ClassVar[float]
    trains_all: ClassVar[bool] = False
    summary: ClassVar[str]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        REGISTRY[cls.name] = cls()

    def trainable(self, arch: Arch, spec: FineTuneJobSpec) -> int:
        raise NotImplementedError

    def frozen_weight_bytes(self, arch: Arch, spec: FineTuneJobSpec, element_bytes: int) -> float:
        """The frozen base model in the training dtype."""
        return float(arch.parameters * element_bytes)

    def strategies(self, ranks: int) -> list[Strategy]:
        """Layouts in order of preference; ZeRO-3 shards a base too big for one GPU."""
        return [Strategy(0)] if ranks == 1 else [Strategy(0), Strategy(3)]

    def adapted(self, arch: Arch, spec: FineTuneJobSpec) -> tuple[Linear, ...]:
        """Linears with an adapter (their inputs are kept for the adapter's backward)."""
        return ()

    def extra_tokens(self, spec: FineTuneJobSpec) -> int:
        return 0


def _lora(spec: FineTuneJobSpec) -> LoRASpec:
    return spec.lora or LoRASpec()


def _prompt(spec: FineTuneJobSpec) -> PromptTuningSpec:
    return spec.prompt_tuning or PromptTuningSpec()


class Full(MethodPolicy):
    name = "full"
    default_lr = 2e-5
    trains_all = True
    summary = "every weight trains (fp32 master weights and Adam states)"

    def trainable(self, arch: Arch, spec: FineTuneJobSpec) -> int:
        return arch.parameters

    def strategies(self, ranks: int) -> list[Strategy]:
        if ranks == 1:
            return [Strategy(0), Strategy(2, "optimizer"), Strategy(3, "optimizer+parameters")]
        return [
            Strategy(2),
            Strategy(3),
            Strategy(3, "optimizer"),
            Strategy(3, "optimizer+parameters"),
        ]


class LoRA(MethodPolicy):
    name = "lora"
    default_lr = 2e-4
    summary = "low-rank adapters on a frozen 16-bit base"

    def trainable(self, arch: Arch, spec: FineTuneJobSpec) -> int:
        """r * (in + out) per adapted linear (DoRA adds a magnitude vector of size out)."""
        lora = _lora(spec)
        linears, _ = resolve_targets(arch, lora.target_modules)
        per_layer = 0
        for lin in linears:
            r = lora.r * lin.lora_rank_factor
            per_layer += lin.count * r * (lin.in_features + lin.out_features)
            if lora.use_dora:
                per_layer += lin.count * lin.out_features
        return arch.num_layers * per_layer

    def adapted(self, arch: Arch, spec: FineTuneJobSpec) -> tuple[Linear, ...]:
        return tuple(resolve_targets(arch, _lora(spec).target_modules)[0])


class QLoRA(LoRA):
    name = "qlora"
    default_lr = 2e-4
    summary = "low-rank adapters on a 4-bit NF4 base"

    def frozen_weight_bytes(self, arch: Arch, spec: FineTuneJobSpec, element_bytes: int) -> float:
        """Decoder linears in 4 bits with their constants; embeddings, norms, LM head and
        routers stay 16-bit (bitsandbytes quantises nn.Linear only, never the LM head)."""
        q = spec.qlora or QLoRASpec()
        quantised = arch.quantised_parameters
        return (
            quantised * nf4_bytes_per_weight(q.double_quant)
            + (arch.parameters - quantised) * cal.HALF_BYTES
        )


class PromptTuning(MethodPolicy):
    name = "prompt-tuning"
    default_lr = 3e-2
    summary = "learned virtual-token embeddings"

    def trainable(self, arch: Arch, spec: FineTuneJobSpec) -> int:
        """num_virtual_tokens x hidden (PEFT's PromptEmbedding)."""
        return _prompt(spec).num_virtual_tokens * arch.hidden_size

    def extra_tokens(self, spec: FineTuneJobSpec) -> int:
        return _prompt(spec).num_virtual_tokens


class PrefixTuning(MethodPolicy):
    name = "prefix-tuning"
    default_lr = 1e-2
    summary = "learned key/value prefixes in every layer"

    def trainable(self, arch: Arch, spec: FineTuneJobSpec) -> int:
        """num_virtual_tokens x layers x 2 (K and V) x kv_dim (PEFT's PrefixEncoder,
        which sizes the prefix by the key/value heads on grouped-query models)."""
        return _prompt(spec).num_virtual_tokens * arch.num_layers * 2 * arch.kv_dim


class IA3(MethodPolicy):
    name = "ia3"
    default_lr = 3e-3
    summary = "learned scaling vectors on keys, values and the MLP"

    def trainable(self, arch: Arch, spec: FineTuneJobSpec) -> int:
        """PEFT's defaults: k_proj and v_proj outputs, down_proj input (feed-forward)."""
        mlp_in = arch.moe_intermediate_size or arch.intermediate_size
        experts = arch.num_experts or 1
        return arch.num_layers * (2 * arch.kv_dim + experts * mlp_in)


def policy(method: str) -> MethodPolicy:
    """The policy for a resolved method name."""
    try:
        return REGISTRY[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(REGISTRY)}") from None
