"""Per-GPU memory of one training configuration, term by term, with sources.

All figures are bytes per GPU. P = parameters, T = trainable parameters, N = data-parallel
ranks, LL = parameters of the largest single module. Every constant comes from
`calibration`, which also holds the measured corrections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from . import calibration as cal
from .architecture import Arch, Linear

Offload = Literal["none", "optimizer", "optimizer+parameters"]
TERMS = ("weights", "gradients", "optimizer", "activations", "logits", "overhead")
LOADING = "loading"
"""The extra a layout needs while the model loads, above its training peak (QLoRA, ZeRO-3)."""


@dataclass(frozen=True)
class Strategy:
    """How model states are laid out: DeepSpeed ZeRO stage and CPU offload."""

    stage: int = 0
    offload: Offload = "none"

    def label(self, ranks: int) -> str:
        if self.stage == 0:
            return "single GPU" if ranks == 1 else "DDP"
        extra = "" if self.offload == "none" else f" + {self.offload} offload"
        return f"ZeRO-{self.stage}{extra}"


@dataclass(frozen=True)
class Workload:
    """What the memory depends on, besides the layout and the ranks."""

    arch: Arch
    method: str
    trains_all: bool  # full fine-tuning: every parameter gets optimizer state
    trainable: int
    frozen_weight_bytes: float  # bytes of the (frozen) base weights, whole model
    seq_len: int
    micro_batch: int
    checkpointing: bool
    element_bytes: int = 2  # 2 for bf16/fp16 activations, 4 for fp32
    adapted: tuple[Linear, ...] = ()  # LoRA-adapted linears (for their activations)
    lora_rank: int = 0
    lora_dropout: bool = False
    extra_tokens: int = 0  # prompt tuning's virtual tokens
    flash_attention: bool = True
    quantised: bool = False  # a 4-bit base (bitsandbytes)


@dataclass
class Estimate:
    """Predicted peak per GPU by term, and the host RAM offload needs per node."""

    terms: dict[str, float] = field(default_factory=dict)
    host_bytes: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    def gib(self) -> dict[str, float]:
        return {k: round(v / cal.GiB, 2) for k, v in self.terms.items()}


# --------------------------------------------------------------------- model states
def model_states(
    w: Workload, s: Strategy, gpus_per_node: int, nodes: int
) -> tuple[dict[str, float], float]:
    """Weights, gradients and optimizer states per GPU, and host bytes per node."""
    n = gpus_per_node * nodes
    p = w.arch.parameters
    ll = cal.ZERO3_GATHER_BYTES * w.arch.largest_layer_parameters
    buf = cal.ZERO_OFFLOAD_BUFFER_FACTOR
    if w.trains_all:
        return _full_states(p, ll, s, n, gpus_per_node, nodes, buf)
    return _peft_states(w, ll, s, n)


def _full_states(
    p: int, ll: float, s: Strategy, n: int, gpn: int, nodes: int, buf: float
) -> tuple[dict[str, float], float]:
    half, m32, g32, adam = (
        cal.HALF_BYTES,
        cal.FP32_MASTER_BYTES,
        cal.FP32_GRAD_BYTES,
        (cal.ADAM_STATE_BYTES),
    )
    if s.stage == 0:
        # HF Trainer AMP: fp32 weights + their 16-bit cast, fp32 grads, Adam: 18P.
        return {"weights": (m32 + half) * p, "gradients": g32 * p, "optimizer": adam * p}, 0.0
    if s.stage in (1, 2):
        if s.offload != "none":
            # estimate_zero2_model_states_mem_needs(cpu_offload=True): GPU 2P,
            # host P * max(4N, 16) * 1.5.
            return {"weights": half * p}, p * max(4 * n, 16) * buf
        # estimate_zero2_model_states_mem_needs: 2P + 18P/N.
        return {
            "weights": half * p + m32 * p / n,
            "gradients": (half + g32) * p / n,
            "optimizer": adam * p / n,
        }, 0.0
    # ZeRO-3, zero_init=True (HF from_pretrained under a ZeRO-3 config uses zero.Init).
    if s.offload == "optimizer+parameters":
        # GPU 4*LL, host 18P/nodes * 1.5
        return {"weights": ll}, p * cal.ZERO_PARTITIONED_BYTES / nodes * buf
    if s.offload == "optimizer":
        # GPU 4*LL + 2P/N, host 16P/nodes * 1.5
        return {"weights": ll + half * p / n}, p * 16 / nodes * buf
    # estimate_zero3_model_states_mem_needs_all_live: 4*LL + 18P/N
    return {
        "weights": ll + (half + m32) * p / n,
        "gradients": g32 * p / n,
        "optimizer": adam * p / n,
    }, 0.0


def _peft_states(w: Workload, ll: float, s: Strategy, n: int) -> tuple[dict[str, float], float]:
    # PEFT keeps adapters in fp32 (autocast_adapter_dtype=True), so a trainable parameter
    # costs fp32 weight 4 + fp32 grad 4 + Adam 8 = 16 bytes; the base is frozen.
    t = w.trainable
    if s.stage == 3:
        # Frozen base and adapters partitioned; one gathered layer in flight (4*LL).
        return {
            "weights": ll + w.frozen_weight_bytes / n + cal.FP32_MASTER_BYTES * t / n,
            "gradients": (cal.HALF_BYTES + cal.FP32_GRAD_BYTES) * t / n,
            "optimizer": cal.ADAM_STATE_BYTES * t / n,
        }, 0.0
    return {
        "weights": w.frozen_weight_bytes + cal.FP32_MASTER_BYTES * t,
        "gradients": cal.FP32_GRAD_BYTES * t,
        "optimizer": cal.ADAM_STATE_BYTES * t,
    }, 0.0


# --------------------------------------------------------------------- activations
def layer_activation_bytes_per_token(w: Workload, seq_len: int) -> float:
    """One decoder layer's saved activations per token (Korthikanti et al. 2022, eq. 1).

    Attention 11h (+5as without flash attention), norms 4h, MLP 19h for a 4h GeLU MLP;
    for a gated (SwiGLU) MLP re-derived as 2h input + 4 tensors of width i in 16 bits
    (gate out, up out, activation out, product) = 2h + 8i. MoE: k routed experts.
    LoRA adds, per adapted linear, its dropout output and mask (in x (e + 1) bytes,
    only with dropout > 0) and the rank-r intermediate.
    """
    a = w.arch
    h, e = a.hidden_size, w.element_bytes
    scale = e / 2  # the paper's constants are bytes in 16-bit
    attn: float = cal.ATTN_ACT_PER_H * h
    if not w.flash_attention:
        attn += cal.ATTN_SCORES_PER_AS * a.num_attention_heads * seq_len
    if a.is_moe:
        mi = a.moe_intermediate_size or a.intermediate_size
        mlp: float = (2 * h + 8 * mi) * (a.num_experts_per_token or 1)
        if a.shared_expert_intermediate_size:
            mlp += 2 * h + 8 * a.shared_expert_intermediate_size
    elif a.gated:
        mlp = 2 * h + 8 * a.intermediate_size
    else:
        mlp = cal.MLP_ACT_PER_H_GPT * h * a.intermediate_size / (4 * h)
    lora = 0.0
    for lin in w.adapted:
        per = lin.lora_rank_factor * w.lora_rank * e
        if w.lora_dropout:
            per += lin.in_features * (e + 1)
        lora += per * lin.tokens
    return (attn + mlp + cal.NORM_ACT_PER_H * h) * scale + lora


def activations(w: Workload) -> float:
    """Saved activations per GPU: every layer's, or with full recomputation each layer's
    input (2sbh) plus one layer recomputed during the backward pass."""
    tokens = w.micro_batch * (w.seq_len + w.extra_tokens)
    seq = w.seq_len + w.extra_tokens
    layer = layer_activation_bytes_per_token(w, seq)
    if w.checkpointing:
        kept = (
            w.arch.num_layers * cal.CHECKPOINT_ACT_PER_H * w.arch.hidden_size * w.element_bytes / 2
        )
        return tokens * (kept + layer)
    return tokens * w.arch.num_layers * layer


def logits(w: Workload) -> float:
    """Logits, their fp32 upcast and fp32 gradient: s * b * vocab * 10 bytes in 16-bit."""
    per_entry = cal.LOGITS_BYTES_PER_ENTRY_16BIT + (4 if w.element_bytes == 4 else 0)
    return w.micro_batch * w.seq_len * w.arch.vocab_size * per_entry


# --------------------------------------------------------------------- total
def estimate(w: Workload, s: Strategy, gpus_per_node: int = 1, nodes: int = 1) -> Estimate:
    """Predicted peak memory per GPU for this workload, layout and shape."""
    states, host = model_states(w, s, gpus_per_node, nodes)
    terms = {k: 0.0 for k in TERMS}
    terms.update(states)
    terms["activations"] = activations(w)
    terms["logits"] = logits(w)
    dynamic = terms["activations"] + terms["logits"]
    fixed = cal.CUDA_CONTEXT_GIB + (cal.NCCL_BUFFERS_GIB if gpus_per_node * nodes > 1 else 0)
    terms["overhead"] = fixed * cal.GiB + cal.FRAGMENTATION * dynamic
    terms = {k: v * cal.correction(w.method, k) for k, v in terms.items()}
    loading = load_peak(w, s, gpus_per_node * nodes)
    if loading > sum(terms.values()):
        terms[LOADING] = loading - sum(terms.values())
    return Estimate(terms=terms, host_bytes=host)


def load_peak(w: Workload, s: Strategy, ranks: int) -> float:
    """Bytes per GPU while the model loads, when that exceeds the training layout.

    transformers builds a quantised model without `zero.Init` (it cannot shard 4-bit
    weights as it loads them), so under ZeRO-3 every rank first holds the whole 4-bit
    base, and DeepSpeed shards it only when the engine starts.
    """
    if not (w.quantised and s.stage == 3):
        return 0.0
    fixed = cal.CUDA_CONTEXT_GIB + (cal.NCCL_BUFFERS_GIB if ranks > 1 else 0)
    return w.frozen_weight_bytes + fixed * cal.GiB


def nf4_bytes_per_weight(double_quant: bool) -> float:
    """Bytes per 4-bit weight including the quantisation constants (QLoRA sec. 3)."""
    if double_quant:
        const_bits = 8 / cal.NF4_BLOCK + 32 / (cal.NF4_BLOCK * cal.DOUBLE_QUANT_BLOCK)
    else:
        const_bits = 32 / cal.NF4_BLOCK
    return (cal.NF4_BITS + const_bits) / 8
