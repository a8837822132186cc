"""The search: the cheapest shape (pool, nodes, GPUs per node, ZeRO layout, micro-batch)
whose predicted peak fits the usable GPU memory.

Preference order, first to last: no CPU offload over offload; one node over several;
fewer GPUs over more (less communication); lower cost per step where pools give costs;
then smaller GPUs (leave the big ones to jobs that need them). Within a shape the
least sharded layout wins, then activation checkpointing off over on, then the largest
micro-batch that fits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from kubetune.api.spec import FineTuneJobSpec

from . import calibration as cal
from .architecture import Arch
from .memory import Estimate, Strategy, Workload, estimate
from .methods import MethodPolicy
from .pools import NodePool, _quantity_bytes


@dataclass(frozen=True)
class Shape:
    """Nodes x GPUs per node of one pool."""

    pool: NodePool
    nodes: int
    gpus_per_node: int

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def cost_per_hour(self) -> float | None:
        c = self.pool.cost_per_gpu_hour
        return None if c is None else round(c * self.total_gpus, 4)

    @property
    def efficiency(self) -> float:
        """Data-parallel scaling efficiency assumed for step time (calibration)."""
        loss = cal.INTRA_NODE_EFFICIENCY_LOSS * (self.gpus_per_node - 1)
        loss += cal.INTER_NODE_EFFICIENCY_LOSS * (self.nodes - 1)
        return 1 / (1 + loss)

    @property
    def throughput_tflops(self) -> float:
        return (
            cal.gpu_spec(self.pool.gpu_type).dense_tflops_16bit
            * self.total_gpus
            * (self.efficiency)
        )

    def sort_key(self) -> tuple[float, ...]:
        cost = self.cost_per_hour
        per_step = math.inf if cost is None else cost / self.throughput_tflops
        return (self.nodes, self.total_gpus, per_step, self.pool.gpu_memory_gi_b)

    def describe(self) -> str:
        return f"{self.pool.name}: {self.nodes}x{self.gpus_per_node} {self.pool.gpu_type}"


@dataclass(frozen=True)
class Request:
    """The job, for one method, independent of where it runs."""

    arch: Arch
    policy: MethodPolicy
    spec: FineTuneJobSpec
    trainable: int

    def workload(self, precision: str, checkpointing: bool, micro: int) -> Workload:
        eb = 4 if precision == "fp32" else 2
        lora = self.spec.lora
        return Workload(
            arch=self.arch,
            method=self.policy.name,
            trains_all=self.policy.trains_all,
            trainable=self.trainable,
            frozen_weight_bytes=self.policy.frozen_weight_bytes(self.arch, self.spec, eb),
            seq_len=self.spec.training.max_seq_length,
            micro_batch=micro,
            checkpointing=checkpointing,
            element_bytes=eb,
            adapted=self.policy.adapted(self.arch, self.spec),
            lora_rank=lora.r if lora else 16,
            lora_dropout=(lora.dropout if lora else 0.05) > 0,
            extra_tokens=self.policy.extra_tokens(self.spec),
            quantised=self.policy.capability.quantised_base,
        )

    def step_seconds(self, shape: Shape, checkpointing: bool) -> float:
        """Rough step time: 6 x active params x tokens for full training, 4x with a frozen
        base (no weight gradients), +2x when activations are recomputed."""
        factor = (6 if self.policy.trains_all else 4) + (2 if checkpointing else 0)
        t = self.spec.training
        flops = factor * self.arch.active_parameters * t.global_batch_size * t.max_seq_length
        return flops / (shape.throughput_tflops * 1e12 * cal.MFU)


@dataclass
class Fit:
    """A shape that fits, with everything the plan records."""

    shape: Shape
    strategy: Strategy
    checkpointing: bool
    micro_batch: int
    accumulation: int
    precision: str
    estimate: Estimate
    budget: float  # usable bytes per GPU

    @property
    def headroom(self) -> float:
        return self.budget - self.estimate.total


@dataclass
class Miss:
    """The closest a pool came to fitting, for the rejected-alternatives list."""

    shape: Shape
    reason: str
    ratio: float = math.inf  # predicted / budget


@dataclass
class SearchResult:
    fit: Fit | None = None
    per_pool: dict[str, Fit | Miss] = field(default_factory=dict)


# --------------------------------------------------------------------- precision
def resolve_precision(requested: str, gpu_type: str) -> str | None:
    """auto -> bf16 where the GPU has it, else fp16; None when bf16 is asked of a GPU
    without it."""
    has_bf16 = cal.gpu_spec(gpu_type).bf16
    if requested == "auto":
        return "bf16" if has_bf16 else "fp16"
    if requested == "bf16" and not has_bf16:
        return None
    return requested


VENDOR_PREFIXES = ("nvidia", "tesla", "amd")
GB_PER_GIB = 2**30 / 1e9
MEMORY_TOLERANCE = 0.1  # "80GB" on the box is 79.6 GiB = 85.5 GB as the driver reports it


def _parts(text: str) -> list[str]:
    """Lower-case name parts, without the vendor: `NVIDIA-H100-80GB-HBM3` -> h100 80gb hbm3."""
    parts = [p for p in re.split(r"[^a-z0-9]+", text.lower()) if p]
    while parts and parts[0] in VENDOR_PREFIXES:
        parts = parts[1:]
    return parts


def pool_matches(pool: NodePool, gpu_type: str) -> bool:
    """spec.resources.gpuType names this pool's GPU, exactly: its product name, or a short
    form of it that starts with the GPU model and keeps further parts in order (`L4`,
    `NVIDIA-L4`, `nvidia-l4`; `H100`, `H100-80GB`), case and vendor prefix aside; a memory
    part absent from the product name (`L4-24GB`) must match the pool's GPU memory within
    10 %. Or the pool's name. `L4` is never `L40S`, `A10` never `A100` or `A10G`."""
    if gpu_type == "auto":
        return True
    if _parts(gpu_type) == _parts(pool.name):
        return True
    want, have = _parts(gpu_type), _parts(pool.gpu_type)
    if not want or not have or want[0] != have[0]:
        return False
    rest = iter(have[1:])
    for part in want[1:]:
        if part in rest:  # consumes the iterator up to the match: parts stay in order
            continue
        memory = re.fullmatch(r"(\d+)gb", part)
        if memory is None or part in have:
            return False
        stated, actual = float(memory.group(1)), pool.gpu_memory_gi_b * GB_PER_GIB
        if abs(actual - stated) > MEMORY_TOLERANCE * stated:
            return False
        rest = iter(have[1:])  # the memory part matched the pool, not a name part
    return True


# --------------------------------------------------------------------- shapes
def _gpu_counts(per_node: int) -> list[int]:
    counts = {1 << k for k in range(8) if 1 << k <= per_node} | {per_node}
    return sorted(counts)


def candidate_shapes(
    pools: list[NodePool], spec: FineTuneJobSpec
) -> tuple[list[Shape], dict[str, str]]:
    """Shapes allowed by spec.resources, best first, and why whole pools were excluded."""
    res = spec.resources
    shapes: list[Shape] = []
    excluded: dict[str, str] = {}
    for pool in pools:
        if not pool_matches(pool, res.gpu_type):
            excluded[pool.name] = f"gpuType {pool.gpu_type} is not the requested {res.gpu_type}"
            continue
        if resolve_precision(spec.training.precision, pool.gpu_type) is None:
            excluded[pool.name] = f"{pool.gpu_type} has no bf16"
            continue
        max_nodes = min(pool.max_nodes, res.max_nodes or pool.max_nodes)
        options = [Shape(pool, 1, g) for g in _gpu_counts(pool.gpus_per_node)]
        options += [Shape(pool, n, pool.gpus_per_node) for n in range(2, max_nodes + 1)]
        kept = [
            s
            for s in options
            if res.min_gpus <= s.total_gpus <= (res.max_gpus or s.total_gpus)
            and not (
                res.max_cost_per_hour is not None
                and s.cost_per_hour is not None
                and s.cost_per_hour > res.max_cost_per_hour
            )
        ]
        if not kept:
            excluded[pool.name] = _why_no_shape(pool, spec)
        shapes += kept
    shapes.sort(key=lambda s: (*s.sort_key(), s.pool.name))
    return shapes, excluded


def _why_no_shape(pool: NodePool, spec: FineTuneJobSpec) -> str:
    res = spec.resources
    if res.min_gpus > pool.max_gpus:
        return f"offers at most {pool.max_gpus} GPUs, minGPUs is {res.min_gpus}"
    if res.max_cost_per_hour is not None and pool.cost_per_gpu_hour is not None:
        return (
            f"{pool.cost_per_gpu_hour}/GPU-hour exceeds maxCostPerHour {res.max_cost_per_hour}"
            " for every allowed GPU count"
        )
    return "no GPU count within minGPUs..maxGPUs"


# --------------------------------------------------------------------- search
def _divisors_desc(n: int, cap: int) -> list[int]:
    return [d for d in range(min(n, cap), 0, -1) if n % d == 0]


def _host_limit(shape: Shape, spec: FineTuneJobSpec) -> float | None:
    limits = []
    if shape.pool.host_memory_gi_b:
        limits.append(shape.pool.host_memory_gi_b * cal.GiB)
    if spec.resources.memory:
        q = _quantity_bytes(spec.resources.memory)
        if q:
            limits.append(q)
    return min(limits) if limits else None


def try_shape(req: Request, shape: Shape, offload: bool) -> Fit | Miss:
    """The best layout, checkpointing and micro-batch on this shape, or why none fits."""
    spec = req.spec
    ranks = shape.total_gpus
    gbs = spec.training.global_batch_size
    if gbs % ranks:
        return Miss(shape, f"global batch {gbs} is not divisible by {ranks} GPUs")
    precision = resolve_precision(spec.training.precision, shape.pool.gpu_type) or "bf16"
    budget = spec.resources.max_gpu_memory_fraction * shape.pool.gpu_memory_gi_b * cal.GiB
    ckpt_options = (
        [False, True]
        if spec.training.gradient_checkpointing is None
        else [spec.training.gradient_checkpointing]
    )
    if not req.policy.capability.gradient_checkpointing:
        ckpt_options = [False]
    strategies = [s for s in req.policy.strategies(ranks) if (s.offload != "none") == offload]
    if not strategies:
        return Miss(shape, "no CPU-offload layout for this method" if offload else "no layout")
    host_limit = _host_limit(shape, spec)
    if offload and host_limit is None:
        return Miss(
            shape,
            "CPU offload not considered: host RAM unknown (set resources.memory"
            " or the pool's hostMemoryGiB)",
        )
    best: Miss = Miss(shape, "does not fit")
    micros = _divisors_desc(gbs // ranks, cal.MAX_MICRO_BATCH)
    for strategy in strategies:
        for ckpt in ckpt_options:
            outcome = _try_layout(req, shape, strategy, ckpt, precision, budget, host_limit, micros)
            if isinstance(outcome, Fit):
                return outcome
            best = outcome if outcome.ratio <= best.ratio else best
    return best


def _try_layout(
    req: Request,
    shape: Shape,
    strategy: Strategy,
    ckpt: bool,
    precision: str,
    budget: float,
    host_limit: float | None,
    micros: list[int],
) -> Fit | Miss:
    """The largest micro-batch that fits this layout, or why even 1 does not."""

    def at(micro: int) -> Estimate:
        work = req.workload(precision, ckpt, micro)
        return estimate(work, strategy, shape.gpus_per_node, shape.nodes)

    label = strategy.label(shape.total_gpus) + (", checkpointing" if ckpt else "")
    low = at(1)
    if host_limit is not None and low.host_bytes > host_limit:
        need, have = low.host_bytes / cal.GiB, host_limit / cal.GiB
        return Miss(shape, f"{label} needs {need:.0f} GiB host RAM per node, {have:.0f} GiB")
    if low.total > budget:
        need, have = low.total / cal.GiB, budget / cal.GiB
        why = f"{label}: predicted {need:.1f} GiB per GPU > {have:.1f} GiB usable"
        return Miss(shape, why, low.total / budget)
    for micro in micros:
        est = low if micro == 1 else at(micro)
        if est.total <= budget:
            accumulation = req.spec.training.global_batch_size // shape.total_gpus // micro
            return Fit(shape, strategy, ckpt, micro, accumulation, precision, est, budget)
    return Miss(shape, f"{label}: does not fit", low.total / budget)  # unreachable: micro 1 fits


def search(req: Request, shapes: list[Shape]) -> SearchResult:
    """First fit in preference order (without offload, then with), and per pool its own
    first fit or closest miss."""
    result = SearchResult()
    for offload in (False, True):
        for shape in shapes:
            seen = result.per_pool.get(shape.pool.name)
            if isinstance(seen, Fit):
                continue
            outcome = try_shape(req, shape, offload)
            if isinstance(outcome, Fit):
                result.per_pool[shape.pool.name] = outcome
                result.fit = result.fit or outcome
            elif seen is None or outcome.ratio <= seen.ratio:
                result.per_pool[shape.pool.name] = outcome
        if result.fit:
            break
    return result
