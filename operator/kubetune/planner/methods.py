"""One small policy class per fine-tuning method, in a registry keyed by method name.

A policy answers what the planner computes per method: which parameters train, what the
frozen base weighs, and its layouts in order of preference. What a method can run with
(ZeRO stages, offload, default learning rate, ...) is its row in `kubetune.capabilities`,
the table the trainer reads too.
"""

from __future__ import annotations

from typing import ClassVar

from kubetune.api.spec import FineTuneJobSpec, LoRASpec, PromptTuningSpec, QLoRASpec
from kubetune.capabilities import Capability, capability

from . import calibration as cal
from .architecture import Arch, Linear, resolve_targets
from .memory import Strategy, nf4_bytes_per_weight

REGISTRY: dict[str, MethodPolicy] = {}
# Layouts in order of preference: the least sharding first. The capability table
# removes what a method cannot run with.
SINGLE_GPU: tuple[Strategy, ...] = (
    Strategy(0),
    Strategy(2, "optimizer"),
    Strategy(3, "optimizer+parameters"),
)
SEVERAL_GPUS: tuple[Strategy, ...] = (
    Strategy(0),
    Strategy(2),
    Strategy(3),
    Strategy(3, "optimizer"),
    Strategy(3, "optimizer+parameters"),
)


class MethodPolicy:
    """Defaults shared by the parameter-efficient methods: frozen 16-bit base."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        REGISTRY[cls.name] = cls()

    @property
    def capability(self) -> Capability:
        return capability(self.name)

    @property
    def default_lr(self) -> float:
        return self.capability.default_learning_rate

    @property
    def trains_all(self) -> bool:
        return self.capability.trains_base_weights

    @property
    def summary(self) -> str:
        return self.capability.trains

    def trainable(self, arch: Arch, spec: FineTuneJobSpec) -> int:
        raise NotImplementedError

    def frozen_weight_bytes(self, arch: Arch, spec: FineTuneJobSpec, element_bytes: int) -> float:
        """The frozen base model in the training dtype."""
        return float(arch.parameters * element_bytes)

    def strategies(self, ranks: int) -> list[Strategy]:
        """Layouts the method runs with, in order of preference. Full fine-tuning on
        several GPUs always shards (DDP would replicate 18 bytes per parameter); the
        parameter-efficient methods try DDP first and ZeRO-3 to shard a base too big for
        one GPU."""
        order = SINGLE_GPU if ranks == 1 else SEVERAL_GPUS
        if ranks > 1 and self.trains_all:
            order = order[1:]
        cap = self.capability
        return [s for s in order if cap.layout_problem(s.stage, s.offload) is None]

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

    def trainable(self, arch: Arch, spec: FineTuneJobSpec) -> int:
        return arch.parameters


class LoRA(MethodPolicy):
    name = "lora"

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

    def trainable(self, arch: Arch, spec: FineTuneJobSpec) -> int:
        """num_virtual_tokens x hidden (PEFT's PromptEmbedding)."""
        return _prompt(spec).num_virtual_tokens * arch.hidden_size

    def extra_tokens(self, spec: FineTuneJobSpec) -> int:
        return _prompt(spec).num_virtual_tokens


class PrefixTuning(MethodPolicy):
    name = "prefix-tuning"

    def trainable(self, arch: Arch, spec: FineTuneJobSpec) -> int:
        """num_virtual_tokens x layers x 2 (K and V) x kv_dim (PEFT's PrefixEncoder,
        which sizes the prefix by the key/value heads on grouped-query models)."""
        return _prompt(spec).num_virtual_tokens * arch.num_layers * 2 * arch.kv_dim


class IA3(MethodPolicy):
    name = "ia3"

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
