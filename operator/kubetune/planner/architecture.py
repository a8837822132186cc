"""A model's shape (from config.json or the spec), its parameter count and its linears.

Parameter counting is exact for decoder-only transformers of the Llama family and its
relatives: it reproduces the published counts of Llama 3.x, Mistral, Qwen2.5, Gemma 2,
Phi-3 and Mixtral (see tests/fixtures/model-configs). The linear-layer table is what
LoRA adapts and what QLoRA quantises, so it uses the module names PEFT matches.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.spec import Architecture

# Families whose decoder layers carry 4 RMSNorms (pre/post attention and MLP) instead of 2.
SANDWICH_NORM_TYPES = frozenset({"gemma2", "gemma3", "gemma3_text"})
# Families with biases on q/k/v (Qwen2 and Qwen2-MoE).
QKV_BIAS_TYPES = frozenset({"qwen2", "qwen2_moe"})
# Families with fused qkv_proj and gate_up_proj linears.
FUSED_TYPES = frozenset({"phi3"})
# Families whose dense MLP is not gated (two linears, GeLU).
UNGATED_TYPES = frozenset({"gpt_neox", "gpt2", "starcoder2", "falcon"})


class ArchitectureError(ValueError):
    """config.json or the spec's architecture lacks what planning needs."""


@dataclass(frozen=True)
class Linear:
    """One kind of linear layer in a decoder layer, as PEFT names it.

    `count` is how many exist per layer (experts); `tokens` how many of them a token
    passes through; `lora_rank_factor` is 2 for PEFT's fused gate_up expert parameter,
    which PEFT adapts with rank 2r.
    """

    name: str
    in_features: int
    out_features: int
    count: int = 1
    tokens: int = 1
    bias: bool = False
    quantisable: bool = True
    lora_rank_factor: int = 1

    @property
    def parameters(self) -> int:
        return self.count * (self.in_features * self.out_features + self.bias * self.out_features)


@dataclass(frozen=True)
class Arch:
    """The shape of a decoder-only transformer."""

    num_layers: int
    hidden_size: int
    vocab_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    num_experts: int | None = None
    num_experts_per_token: int | None = None
    moe_intermediate_size: int | None = None
    shared_expert_intermediate_size: int | None = None
    model_type: str = "llama"
    name: str = "model"
    parameters_override: int | None = None
    rough: bool = False
    notes: tuple[str, ...] = field(default=())

    # ----------------------------------------------------------------- layout
    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts and self.num_experts > 1)

    @property
    def gated(self) -> bool:
        return self.model_type not in UNGATED_TYPES

    @property
    def norms_per_layer(self) -> int:
        return 4 if self.model_type in SANDWICH_NORM_TYPES else 2

    def linears(self) -> tuple[Linear, ...]:
        """The linear layers of one decoder layer, with PEFT's module names."""
        h, i = self.hidden_size, self.intermediate_size
        bias = self.model_type in QKV_BIAS_TYPES
        if self.model_type in FUSED_TYPES:
            attn = [Linear("qkv_proj", h, self.q_dim + 2 * self.kv_dim)]
        else:
            attn = [
                Linear("q_proj", h, self.q_dim, bias=bias),
                Linear("k_proj", h, self.kv_dim, bias=bias),
                Linear("v_proj", h, self.kv_dim, bias=bias),
            ]
        attn.append(Linear("o_proj", self.q_dim, h))
        return (*attn, *self._mlp_linears(h, i))

    def _mlp_linears(self, h: int, i: int) -> list[Linear]:
        if self.is_moe:
            e = self.num_experts or 1
            k = self.num_experts_per_token or 1
            mi = self.moe_intermediate_size or i
            # transformers 5 stores experts as fused 3D parameters; PEFT 0.21 adapts
            # gate_up_proj with rank 2r (it stands for gate_proj and up_proj).
            out = [
                Linear("gate", h, e, quantisable=False),  # the router
                Linear("gate_up_proj", h, 2 * mi, count=e, tokens=k, lora_rank_factor=2),
                Linear("down_proj", mi, h, count=e, tokens=k),
            ]
            si = self.shared_expert_intermediate_size
            if si:
                out += [
                    Linear("shared_expert.gate_proj", h, si),
                    Linear("shared_expert.up_proj", h, si),
                    Linear("shared_expert.down_proj", si, h),
                    Linear("shared_expert_gate", h, 1, quantisable=False),
                ]
            return out
        if self.model_type in FUSED_TYPES:
            return [Linear("gate_up_proj", h, 2 * i), Linear("down_proj", i, h)]
        if not self.gated:
            return [Linear("up_proj", h, i, bias=True), Linear("down_proj", i, h, bias=True)]
        return [Linear("gate_proj", h, i), Linear("up_proj", h, i), Linear("down_proj", i, h)]

    # ----------------------------------------------------------------- counts
    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_parameters(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def norm_parameters(self) -> int:
        """RMSNorm weights: per layer, plus the final norm."""
        return self.hidden_size * (self.num_layers * self.norms_per_layer + 1)

    @property
    def linear_parameters(self) -> int:
        """All decoder-layer linear weights (and biases): what QLoRA quantises."""
        return self.num_layers * sum(lin.parameters for lin in self.linears())

    @property
    def quantised_parameters(self) -> int:
        """Parameters bitsandbytes stores in 4 bits (decoder linears but routers)."""
        q = sum(lin.parameters for lin in self.linears() if lin.quantisable)
        return min(self.num_layers * q, self.parameters)

    @property
    def computed_parameters(self) -> int:
        return (
            self.embedding_parameters
            + self.lm_head_parameters
            + self.norm_parameters
            + self.linear_parameters
        )

    @property
    def parameters(self) -> int:
        """Total parameters: the spec's figure when given, else counted from the shape."""
        return self.parameters_override or self.computed_parameters

    @property
    def active_parameters(self) -> int:
        """Parameters a token passes through (MoE: only the routed experts)."""
        per_layer = sum(lin.parameters // lin.count * lin.tokens for lin in self.linears())
        dense = self.embedding_parameters + self.lm_head_parameters + self.norm_parameters
        scale = self.parameters / self.computed_parameters
        return int((dense + self.num_layers * per_layer) * scale)

    @property
    def largest_layer_parameters(self) -> int:
        """Largest single module (DeepSpeed's ZeRO-3 `largest_layer_params`)."""
        biggest_linear = max(lin.parameters for lin in self.linears())
        return max(self.embedding_parameters, self.lm_head_parameters, biggest_linear)

    def describe(self) -> str:
        moe = f", {self.num_experts}x{self.num_experts_per_token} experts" if self.is_moe else ""
        return (
            f"{self.name}: {self.parameters / 1e9:.2f}B parameters, {self.num_layers} layers,"
            f" hidden {self.hidden_size}, vocab {self.vocab_size}{moe}"
        )


# --------------------------------------------------------------------- readers
CONFIG_KEYS: tuple[str, ...] = (
    "model_type",
    "architectures",
    "_name_or_path",
    "num_hidden_layers",
    "n_layer",
    "num_layers",
    "hidden_size",
    "n_embd",
    "d_model",
    "vocab_size",
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "n_inner",
    "ffn_dim",
    "tie_word_embeddings",
    "num_local_experts",
    "num_experts",
    "n_routed_experts",
    "num_experts_per_tok",
    "num_experts_per_token",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "attention_bias",
    "mlp_bias",
    "text_config",
)
"""Every config.json key `from_config` reads: the operator's model probe sends these and
nothing else (a termination message holds 4 KiB), so adding a read here adds it there."""


def _first(cfg: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return None


def from_config(config: Mapping[str, Any], name: str | None = None) -> Arch:
    """Read a Hugging Face `config.json` (already parsed)."""
    cfg: Mapping[str, Any] = config
    if "text_config" in cfg and "hidden_size" not in cfg:  # multimodal wrappers
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", "")}
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    vocab = _first(cfg, "vocab_size")
    if not (layers and hidden and vocab):
        raise ArchitectureError("config.json needs num_hidden_layers, hidden_size and vocab_size")
    heads = _first(cfg, "num_attention_heads", "n_head") or max(1, hidden // 128)
    model_type = str(cfg.get("model_type") or "llama")
    gated = model_type not in UNGATED_TYPES
    inter = _first(cfg, "intermediate_size", "n_inner", "ffn_dim") or (
        _swiglu_width(hidden) if gated else 4 * hidden
    )
    experts = _first(cfg, "num_local_experts", "num_experts", "n_routed_experts")
    # Gemma configs tie embeddings by default; the Llama-family configs say so explicitly.
    tie_default = model_type.startswith("gemma")
    return Arch(
        num_layers=int(layers),
        hidden_size=int(hidden),
        vocab_size=int(vocab),
        intermediate_size=int(inter),
        num_attention_heads=int(heads),
        num_key_value_heads=int(_first(cfg, "num_key_value_heads") or heads),
        head_dim=int(_first(cfg, "head_dim") or hidden // heads),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", tie_default)),
        num_experts=int(experts) if experts else None,
        num_experts_per_token=_first(cfg, "num_experts_per_tok", "num_experts_per_token"),
        moe_intermediate_size=_first(cfg, "moe_intermediate_size"),
        shared_expert_intermediate_size=_first(cfg, "shared_expert_intermediate_size"),
        model_type=model_type,
        name=name or str(cfg.get("_name_or_path") or model_type),
    )


def to_spec(arch: Arch) -> Architecture:
    """The shape as the spec's `architecture` (what status.plan records): `from_spec` of it
    gives the same parameter count, so a re-plan needs no second look at config.json."""
    if arch.rough:
        return Architecture(parameters=arch.parameters, model_type=arch.model_type)
    return Architecture(
        parameters=arch.parameters_override,
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        head_dim=arch.head_dim,
        vocab_size=arch.vocab_size,
        tie_word_embeddings=arch.tie_word_embeddings,
        num_experts=arch.num_experts,
        num_experts_per_token=arch.num_experts_per_token,
        moe_intermediate_size=arch.moe_intermediate_size,
        shared_expert_intermediate_size=arch.shared_expert_intermediate_size,
        model_type=arch.model_type,
    )


def load_config(path: str | Path) -> Arch:
    """Read a `config.json` file."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArchitectureError(f"cannot read {p}: {err}") from err
    return from_config(data, name=p.parent.name if p.name == "config.json" else p.stem)


def _swiglu_width(hidden: int) -> int:
    """SwiGLU convention 8h/3 rounded up to a multiple of 256 (Llama)."""
    return 256 * math.ceil(8 * hidden / 3 / 256)


def from_spec(spec: Architecture, name: str = "model") -> Arch:
    """The spec's `architecture` override; with `parameters` alone the shape is guessed."""
    if spec.num_layers and spec.hidden_size and spec.vocab_size:
        heads = spec.num_attention_heads or max(1, spec.hidden_size // 128)
        if spec.head_dim is None and spec.hidden_size % heads:
            raise ArchitectureError(
                f"hiddenSize {spec.hidden_size} is not divisible by numAttentionHeads {heads};"
                " give headDim if the model really has such heads"
            )
        kv = spec.num_key_value_heads or heads
        if heads % kv:
            raise ArchitectureError(
                f"numAttentionHeads {heads} is not a multiple of numKeyValueHeads {kv}"
            )
        return Arch(
            num_layers=spec.num_layers,
            hidden_size=spec.hidden_size,
            vocab_size=spec.vocab_size,
            intermediate_size=spec.intermediate_size or _swiglu_width(spec.hidden_size),
            num_attention_heads=heads,
            num_key_value_heads=spec.num_key_value_heads or heads,
            head_dim=spec.head_dim or spec.hidden_size // heads,
            tie_word_embeddings=bool(spec.tie_word_embeddings),
            num_experts=spec.num_experts,
            num_experts_per_token=spec.num_experts_per_token,
            moe_intermediate_size=spec.moe_intermediate_size,
            shared_expert_intermediate_size=spec.shared_expert_intermediate_size,
            model_type=spec.model_type or "llama",
            name=name,
            parameters_override=spec.parameters,
        )
    assert spec.parameters is not None  # the Architecture validator guarantees it
    return rough_arch(spec.parameters, name=name, model_type=spec.model_type or "llama")


def rough_arch(parameters: int, name: str = "model", model_type: str = "llama") -> Arch:
    """A Llama-like shape for a bare parameter count: P ~ 12 L h^2 with L ~ h/128."""
    hidden = max(256, 128 * round((parameters * 128 / 12) ** (1 / 3) / 128))
    layers = max(1, round(parameters / (12 * hidden * hidden)))
    heads = max(1, hidden // 128)
    return Arch(
        num_layers=layers,
        hidden_size=hidden,
        vocab_size=32_000,
        intermediate_size=_swiglu_width(hidden),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=128,
        model_type=model_type,
        name=name,
        parameters_override=parameters,
        rough=True,
        notes=("only spec.model.architecture.parameters is known: the shape is guessed",),
    )


def as_arch(value: Arch | Architecture | Mapping[str, Any], name: str = "model") -> Arch:
    """Accept an Arch, the spec's Architecture, or a parsed config.json."""
    if isinstance(value, Arch):
        return value
    if isinstance(value, Architecture):
        return from_spec(value, name=name)
    return from_config(value, name=name)


# --------------------------------------------------------------------- targets
ALL_LINEAR = "all-linear"


def resolve_targets(arch: Arch, targets: list[str]) -> tuple[list[Linear], list[str]]:
    """The linears LoRA adapts, and the target names that matched nothing.

    `all-linear` is every linear in the decoder layers (PEFT excludes the LM head).
    Other names match a module name or its suffix, as PEFT's target_modules does.
    """
    linears = arch.linears()
    if ALL_LINEAR in targets:
        return list(linears), []
    chosen: list[Linear] = []
    unknown: list[str] = []
    for target in targets:
        hits = [lin for lin in linears if lin.name == target or lin.name.endswith("." + target)]
        if not hits:
            unknown.append(target)
        chosen += [lin for lin in hits if lin not in chosen]
    return chosen, unknown
