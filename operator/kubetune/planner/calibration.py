"""Every tunable constant of the memory model, in one place.

The first section holds published figures (bytes per parameter, quantisation bits); the
second holds engineering margins that measurement should replace. `CORRECTIONS` is the
place for measured corrections: after comparing `status.progress.peakMemoryGiB` with
`status.plan.predictedPeakGiB` on real runs, record a factor per (method, term) there
rather than editing the formulas in `memory.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GiB = 1024**3

# ----------------------------------------------------------------- published constants
# Mixed-precision AdamW, bytes per trained parameter (HF "Model training anatomy";
# ZeRO paper, Rajbhandari et al. 2020, sec. 3.1): fp32 master weights 4, fp32 grads 4,
# Adam moments 8, plus the 16-bit working copy 2 => 18.
FP32_MASTER_BYTES = 4
FP32_GRAD_BYTES = 4
ADAM_STATE_BYTES = 8
HALF_BYTES = 2
# DeepSpeed 0.19 estimators (runtime/zero/stage_1_and_2.py, stage3.py):
#   ZeRO-2: 2P + 18P/N on GPU ("18 = 2 grads16 + 4 grads32 + 4 params32 + 8 optimizer")
#   ZeRO-3: 4*largest_layer + 18P/N; CPU offload variants below.
ZERO_PARTITIONED_BYTES = 18
ZERO_OFFLOAD_BUFFER_FACTOR = 1.5  # DeepSpeed's additional_buffer_factor for host RAM
ZERO3_GATHER_BYTES = 4  # 4 * largest_layer_params: a gathered 16-bit layer, prefetched twice

# QLoRA (Dettmers et al. 2023, sec. 3): NF4 in blocks of 64 with one absmax per block.
# Without double quantisation the absmax is fp32: 32/64 = 0.5 bit per weight. With it the
# absmax is 8-bit plus one fp32 constant per 256 absmaxes: 8/64 + 32/(64*256) = 0.127 bit.
NF4_BITS = 4.0
NF4_BLOCK = 64
DOUBLE_QUANT_BLOCK = 256

# Activations, bytes per token per layer in 16-bit (Korthikanti et al. 2022, "Reducing
# Activation Recomputation in Large Transformer Models", eq. 1): sbh(34 + 5as/h). Split
# as attention 11h (+5as for the materialised softmax), MLP 19h (for a 4h GeLU MLP),
# norms 4h. Full recomputation keeps only each layer's input: 2sbh per layer.
ATTN_ACT_PER_H = 11
ATTN_SCORES_PER_AS = 5  # dropped with flash/SDPA attention, which never stores s x s
MLP_ACT_PER_H_GPT = 19
NORM_ACT_PER_H = 4
CHECKPOINT_ACT_PER_H = 2
# Cross-entropy over the vocabulary: 16-bit logits, their fp32 upcast (transformers'
# ForCausalLMLoss calls logits.float()) and the fp32 gradient: 2 + 4 + 4 bytes per entry.
LOGITS_BYTES_PER_ENTRY_16BIT = 10

# ----------------------------------------------------------------- engineering margins
CUDA_CONTEXT_GIB = 0.75  # CUDA context, cuBLAS/cuDNN workspaces
NCCL_BUFFERS_GIB = 0.5  # communicator buffers when there are several ranks
FRAGMENTATION = 0.10  # caching-allocator fragmentation, fraction of per-step allocations
#   (activations and logits; weights and optimizer states are allocated once)
MAX_MICRO_BATCH = 8  # beyond 8 sequences per GPU throughput stops improving much
AUTO_FULL_MIN_EXAMPLES = 50_000  # rule of thumb: full fine-tuning pays off above ~50k rows
MFU = 0.35  # model FLOPs utilisation assumed for step-time (cost per step) estimates
# Data-parallel scaling efficiency: fewer GPUs (less communication) win ties.
INTRA_NODE_EFFICIENCY_LOSS = 0.03  # per extra GPU in a node
INTER_NODE_EFFICIENCY_LOSS = 0.15  # per extra node

# Measured corrections: (method, term) -> multiplicative factor applied to that term of
# the breakdown (terms: weights, gradients, optimizer, activations, logits, overhead).
# Empty until runs are measured; e.g. {("qlora", "activations"): 1.12}.
CORRECTIONS: dict[tuple[str, str], float] = {}


def correction(method: str, term: str) -> float:
    """The measured factor for one term, 1.0 when none has been recorded."""
    return CORRECTIONS.get((method, term), CORRECTIONS.get(("*", term), 1.0))


# ----------------------------------------------------------------- GPU catalog
@dataclass(frozen=True)
class GPUSpec:
    """What the planner needs to know about a GPU product."""

    pattern: str
    bf16: bool
    dense_tflops_16bit: float


# Dense 16-bit tensor TFLOPS from the vendors' datasheets; first match wins.
GPU_CATALOG: tuple[GPUSpec, ...] = (
    GPUSpec(r"B200", True, 2250),
    GPUSpec(r"H200", True, 989),
    GPUSpec(r"H100.*PCIE", True, 756),
    GPUSpec(r"H100|H800|GH200", True, 989),
    GPUSpec(r"A100|A800", True, 312),
    GPUSpec(r"L40S", True, 362),
    GPUSpec(r"L40", True, 181),
    GPUSpec(r"A10G", True, 70),
    GPUSpec(r"A10", True, 125),
    GPUSpec(r"L4", True, 121),
    GPUSpec(r"A6000", True, 155),
    GPUSpec(r"4090", True, 165),
    GPUSpec(r"3090", True, 71),
    GPUSpec(r"MI300", True, 1307),
    GPUSpec(r"V100", False, 125),
    GPUSpec(r"T4", False, 65),
    GPUSpec(r"P100", False, 19),
)
UNKNOWN_GPU = GPUSpec("", True, 100)


def gpu_spec(gpu_type: str) -> GPUSpec:
    """Catalog entry for a product name such as `NVIDIA-H100-80GB-HBM3`."""
    name = gpu_type.upper()
    for spec in GPU_CATALOG:
        if re.search(spec.pattern, name):
            return spec
    return UNKNOWN_GPU
