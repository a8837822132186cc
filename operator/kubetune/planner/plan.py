"""The planner's entry point: `plan(spec, arch, pools, dataset_size) -> Plan`.

Pure: no I/O, no cluster access. The operator and `kubetune plan` call the same function.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.api.spec import Architecture, FineTuneJobSpec
from kubetune.api.status import Alternative, Plan

from . import calibration as cal
from .architecture import Arch, as_arch, resolve_targets, to_spec
from .methods import policy
from .pools import NodePool
from .shape import Fit, Request, SearchResult, Shape, candidate_shapes, search


@dataclass(frozen=True)
class DatasetSize:
    """The training data's size, as counted before planning (the operator's probe) or
    given to `kubetune plan`."""

    rows: int
    """Training examples (rows of the training source)."""
    tokens: int | None = None
    """Training tokens, when known (the probe estimates them from the text)."""
    complete: bool = True
    """False when counting stopped early: `rows` is then only a lower bound."""

    @property
    def known_rows(self) -> int | None:
        """Rows the size rules may use: a lower bound counts only when it is already
        large (it can prove a dataset large, never small)."""
        if self.complete or self.rows >= cal.AUTO_FULL_MIN_EXAMPLES:
            return self.rows
        return None

    def describe(self) -> str:
        tokens = f", ~{self.tokens:,} tokens" if self.tokens else ""
        at_least = "" if self.complete else "at least "
        return f"{at_least}{self.rows:,} examples{tokens}"


def as_dataset_size(value: DatasetSize | int | None) -> DatasetSize | None:
    """Accept a bare row count (kubetune plan --dataset-size) as well."""
    if value is None or isinstance(value, DatasetSize):
        return value
    return DatasetSize(rows=int(value))


class PlanRefused(Exception):
    """Nothing fits: `reason` says why in one paragraph, `alternatives` what was tried."""

    def __init__(self, reason: str, alternatives: list[Alternative] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.alternatives = alternatives or []


def auto_methods(dataset_size: int | None) -> list[str]:
    """Candidates for `method: auto`, least invasive first.

    LoRA by default, QLoRA when LoRA does not fit; full fine-tuning first only when the
    dataset is large (>= 50k examples, the field's rule of thumb).
    """
    if dataset_size is not None and dataset_size >= cal.AUTO_FULL_MIN_EXAMPLES:
        return ["full", "lora", "qlora"]
    return ["lora", "qlora"]


def plan(
    spec: FineTuneJobSpec,
    arch: Arch | Architecture | Mapping[str, Any],
    pools: list[NodePool],
    dataset_size: DatasetSize | int | None = None,
) -> Plan:
    """Choose method, shape, ZeRO layout and batch split; raise PlanRefused if none fits."""
    a = as_arch(arch, name=_model_name(spec))
    size = as_dataset_size(dataset_size)
    rows = size.known_rows if size else None
    if not pools:
        raise PlanRefused("no GPU node pools are configured or discovered")
    shapes, excluded = candidate_shapes(pools, spec)
    alternatives = [
        Alternative(method=spec.method, pool=name, reason=why) for name, why in excluded.items()
    ]
    if not shapes:
        hint = ""
        if spec.resources.gpu_type != "auto":
            hint = (
                "; spec.resources.gpuType takes a pool's GPU product or a short form of it"
                " (e.g. L4, NVIDIA-L4, H100-80GB) or a pool's name"
            )
        raise PlanRefused(
            "no node pool matches spec.resources: "
            + "; ".join(f"{n}: {w}" for n, w in excluded.items())
            + hint,
            alternatives,
        )
    methods: list[str] = auto_methods(rows) if spec.method == "auto" else [spec.method]
    _check_targets(spec, a, methods)
    _check_capabilities(spec, methods)
    reasons: list[str] = []
    if spec.method == "auto":
        reasons.append(_auto_reason(size))
    for name in methods:
        pol = policy(name)
        req = Request(a, pol, spec, pol.trainable(a, spec))
        result = search(req, shapes)
        if result.fit is not None:
            alternatives += _pool_alternatives(name, result)
            return _build(req, result.fit, size, reasons, alternatives)
        alternatives += _pool_alternatives(name, result)
        alternatives.append(
            Alternative(method=name, reason=f"no shape fits: {_refusal(req, shapes)}")
        )
        if spec.method == "auto":
            reasons.append(f"{name} does not fit any allowed shape; trying the next method")
    raise PlanRefused(
        _refusal(
            Request(a, policy(methods[0]), spec, policy(methods[0]).trainable(a, spec)),
            shapes,
            all_methods=methods,
        ),
        alternatives,
    )


def _check_targets(spec: FineTuneJobSpec, arch: Arch, methods: list[str]) -> None:
    """LoRA target names that match no linear layer are a typo, not a smaller adapter."""
    if spec.lora is None or not {"lora", "qlora"} & set(methods):
        return
    _, unknown = resolve_targets(arch, spec.lora.target_modules)
    if unknown:
        known = sorted({lin.name for lin in arch.linears()})
        raise PlanRefused(
            f"spec.lora.targetModules: {', '.join(unknown)} match no linear layer of this"
            f" {arch.model_type} model (its linears: {', '.join(known)}, or all-linear)"
        )


def _check_capabilities(spec: FineTuneJobSpec, methods: list[str]) -> None:
    """Options the spec sets explicitly that the method cannot honour are refused, never
    silently dropped by the trainer."""
    for name in methods:
        cap = policy(name).capability
        if spec.training.gradient_checkpointing and not cap.gradient_checkpointing:
            raise PlanRefused(
                f"spec.training.gradientCheckpointing: {name} cannot recompute activations"
                " (its virtual tokens live in the attention cache); remove the field or set"
                " it to false"
            )


def _model_name(spec: FineTuneJobSpec) -> str:
    m = spec.model
    if m.hf is not None:
        return m.hf.repo.split("/")[-1]
    if m.pvc is not None:
        return (m.pvc.path or m.pvc.claim_name).rstrip("/").split("/")[-1]
    return (m.path or "model").rstrip("/").split("/")[-1]


def _auto_reason(size: DatasetSize | None) -> str:
    rows = size.known_rows if size else None
    if size is None or rows is None:
        what = "unknown" if size is None else f"{size.describe()} (counting stopped early)"
        return f"method auto: dataset size {what}, so full fine-tuning is not considered"
    if rows >= cal.AUTO_FULL_MIN_EXAMPLES:
        return (
            f"method auto: {size.describe()} >= {cal.AUTO_FULL_MIN_EXAMPLES:,} examples, so"
            " full fine-tuning is tried first"
        )
    return (
        f"method auto: {size.describe()} < {cal.AUTO_FULL_MIN_EXAMPLES:,} examples: LoRA, or"
        " QLoRA when LoRA does not fit"
    )


def _pool_alternatives(method: str, result: SearchResult) -> list[Alternative]:
    chosen = result.fit
    out = []
    for name, outcome in result.per_pool.items():
        if chosen is not None and outcome is chosen:
            continue
        why = _why_not_chosen(outcome, chosen) if isinstance(outcome, Fit) else outcome.reason
        out.append(Alternative(method=method, pool=name, gpus=outcome.shape.total_gpus, reason=why))
    return out


def _why_not_chosen(fit: Fit, chosen: Fit | None) -> str:
    if chosen is None:
        return "fits"
    a, b = fit.shape, chosen.shape
    if (fit.strategy.offload != "none") and chosen.strategy.offload == "none":
        return f"fits only with CPU offload ({fit.strategy.label(a.total_gpus)})"
    if a.nodes != b.nodes:
        return f"fits on {a.nodes} nodes, the plan needs {b.nodes}"
    if a.total_gpus != b.total_gpus:
        return f"fits on {a.total_gpus} GPUs, the plan needs {b.total_gpus}"
    ca, cb = a.cost_per_hour, b.cost_per_hour
    if ca is not None and cb is not None:
        return (
            f"fits, but costs more per step ({ca:.2f}/h for {a.throughput_tflops:.0f} TFLOPS"
            f" vs {cb:.2f}/h for {b.throughput_tflops:.0f})"
        )
    return f"fits, but {a.pool.gpu_memory_gi_b:g} GiB GPUs are larger than needed"


# --------------------------------------------------------------------- refusal
def _fmt_bytes(b: float) -> str:
    return f"{b / 1e12:.2f} TB" if b >= 1e12 else f"{b / 1e9:.0f} GB"


def _model_state_bytes(req: Request) -> tuple[float, str]:
    """Least total model-state bytes over all GPUs (ZeRO-3 sharding, no offload)."""
    p, t = req.arch.parameters, req.trainable
    if req.policy.trains_all:
        return cal.ZERO_PARTITIONED_BYTES * p, f"{cal.ZERO_PARTITIONED_BYTES} bytes x {p:,}"
    w = req.policy.frozen_weight_bytes(req.arch, req.spec, 2)
    return w + cal.ZERO_PARTITIONED_BYTES * t, f"{_fmt_bytes(w)} of weights + adapter states"


def _refusal(req: Request, shapes: list[Shape], all_methods: list[str] | None = None) -> str:
    """A specific refusal: what the method needs against the largest allowed shape."""
    need, detail = _model_state_bytes(req)
    res = req.spec.resources
    frac = res.max_gpu_memory_fraction
    cap_ = req.policy.capability
    shards = 3 in cap_.zero_stages  # else every GPU holds all model states
    biggest = max(shapes, key=lambda s: (s.total_gpus if shards else 1) * s.pool.gpu_memory_gi_b)
    pool = biggest.pool
    cap = (biggest.total_gpus if shards else 1) * pool.gpu_memory_gi_b * frac * cal.GiB
    name = req.arch.name
    methods = all_methods or [req.policy.name]
    head = f"{name} {' / '.join(methods)} fine-tuning"
    offer = (
        f"the largest allowed shape is {pool.name}: {biggest.gpus_per_node}x"
        f"{pool.gpu_memory_gi_b:g} GiB per node x {biggest.nodes} node(s) ="
        f" {_fmt_bytes(cap)} usable at maxGPUMemoryFraction {frac:g}"
    )
    if not shards:
        offer = (
            f"{req.policy.name} keeps the whole model on every GPU (no ZeRO-3:"
            f" {cap_.layout_notes.split('; ')[0]}), and the largest allowed GPU is"
            f" {pool.name}'s {pool.gpu_memory_gi_b:g} GiB = {_fmt_bytes(cap)} usable at"
            f" maxGPUMemoryFraction {frac:g}"
        )
    if need > cap:
        msg = f"{head} needs ~{_fmt_bytes(need)} of model states ({detail}); {offer}, before"
        msg += " activations"
    else:
        msg = (
            f"{head} needs ~{_fmt_bytes(need)} of model states, but no allowed shape fits the"
            f" per-GPU peak (activations, the largest layer, or batch divisibility); {offer}"
        )
    hints = []
    if req.policy.name == "full" or not shards:
        hints.append("use lora or qlora")
    elif req.policy.name == "lora":
        hints.append("use qlora")
    if res.max_gpus is not None and biggest.total_gpus >= res.max_gpus:
        hints.append("raise maxGPUs")
    if res.max_nodes is not None and biggest.nodes >= res.max_nodes:
        hints.append("raise maxNodes")
    gbs = req.spec.training.global_batch_size
    bigger = sorted({s.total_gpus for s in shapes if gbs % s.total_gpus} - {1})
    roomy = [n for n in bigger if n * biggest.pool.gpu_memory_gi_b * frac * cal.GiB > need]
    if roomy:
        hints.append(f"make globalBatchSize ({gbs}) a multiple of {roomy[0]} GPUs")
    if need <= cap:
        hints.append("lower maxSeqLength")
    hints.append("add a pool with more or larger GPUs")
    return f"{msg}; {', or '.join(hints)}"


# --------------------------------------------------------------------- the plan
def _build(
    req: Request,
    fit: Fit,
    size: DatasetSize | None,
    reasons: list[str],
    alternatives: list[Alternative],
) -> Plan:
    spec, shape, a = req.spec, fit.shape, req.arch
    ranks = shape.total_gpus
    t = spec.training
    lr = t.learning_rate if t.learning_rate is not None else req.policy.default_lr
    est = fit.estimate
    reasons = [
        *reasons,
        f"{req.policy.name}: {req.policy.summary}; {req.trainable:,} of {a.parameters:,}"
        f" parameters train ({100 * req.trainable / a.parameters:.3g} %)",
        f"{shape.describe()}: the first fit preferring one node, fewer GPUs, then lower cost",
        _layout_reason(req, fit),
        _ckpt_reason(req, fit),
        f"micro-batch {fit.micro_batch} x accumulation {fit.accumulation} x {ranks} rank(s)"
        f" = global batch {t.global_batch_size}",
        f"predicted peak {est.total / cal.GiB:.1f} GiB per GPU of"
        f" {fit.budget / cal.GiB:.1f} GiB usable ({spec.resources.max_gpu_memory_fraction:g}"
        f" of {shape.pool.gpu_memory_gi_b:g} GiB)",
        f"learning rate {lr:g}"
        + (" (spec)" if t.learning_rate is not None else " (method default)"),
        f"~{req.step_seconds(shape, fit.checkpointing):.1f} s per optimizer step at"
        f" {cal.MFU:.0%} MFU (rough)",
    ]
    return Plan(
        method=req.policy.name,
        zero_stage=fit.strategy.stage,
        offload=fit.strategy.offload,
        pool=shape.pool.name,
        node_selector=dict(shape.pool.node_selector),
        tolerations=list(shape.pool.tolerations),
        gpu_type=shape.pool.gpu_type,
        gpu_memory_gi_b=shape.pool.gpu_memory_gi_b,
        nodes=shape.nodes,
        gpus_per_node=shape.gpus_per_node,
        total_gpus=ranks,
        micro_batch_size=fit.micro_batch,
        gradient_accumulation_steps=fit.accumulation,
        global_batch_size=t.global_batch_size,
        gradient_checkpointing=fit.checkpointing,
        precision=fit.precision,
        learning_rate=lr,
        max_seq_length=t.max_seq_length,
        parameters=a.parameters,
        architecture=to_spec(a),
        trainable_parameters=req.trainable,
        predicted_peak_gi_b=round(est.total / cal.GiB, 2),
        headroom_gi_b=round(fit.headroom / cal.GiB, 2),
        breakdown_gi_b=est.gib(),
        host_memory_gi_b=round(est.host_bytes / cal.GiB, 1),
        cost_per_hour=shape.cost_per_hour,
        reasons=[r for r in reasons if r],
        warnings=warnings_for(req, fit, size.known_rows if size and size.complete else None),
        alternatives=alternatives,
        dataset_rows=size.rows if size else None,
        dataset_tokens=size.tokens if size else None,
    )


def _layout_reason(req: Request, fit: Fit) -> str:
    n = fit.shape.total_gpus
    label = fit.strategy.label(n)
    if fit.strategy.stage == 0:
        reason = f"{label}: model states fit on each GPU unsharded"
        cap = req.policy.capability
        if n > 1 and 3 not in cap.zero_stages:
            reason += f"; ZeRO-3 is not offered for {cap.name}: {cap.layout_notes}"
        return reason
    reason = f"{label}: the least sharding that fits on {n} GPUs"
    if req.policy.capability.quantised_base:
        whole = req.policy.frozen_weight_bytes(req.arch, req.spec, 2) / cal.GiB
        reason += (
            f"; the 4-bit weights are stored as {fit.precision} (bnb_4bit_quant_storage) so"
            f" DeepSpeed can shard them, and each rank holds the whole 4-bit base"
            f" ({whole:.1f} GiB) while it loads"
        )
    return reason


def _ckpt_reason(req: Request, fit: Fit) -> str:
    if req.spec.training.gradient_checkpointing is not None:
        return f"gradient checkpointing {'on' if fit.checkpointing else 'off'} (spec)"
    if fit.checkpointing:
        return "gradient checkpointing on: activations do not fit without it"
    return "gradient checkpointing off: fits without recomputation"


def warnings_for(req: Request, fit: Fit | None, dataset_size: int | None) -> list[str]:
    """The field's rules of thumb that apply to this job."""
    out: list[str] = list(req.arch.notes)
    name = req.policy.name
    spec = req.spec
    lora = spec.lora
    if dataset_size is not None:
        if dataset_size < 100:
            out.append(f"only {dataset_size} examples: try prompting (few-shot) before fine-tuning")
        elif dataset_size < 500 and name in ("lora", "qlora"):
            out.append(f"{dataset_size} examples is thin for LoRA; expect noisy results")
        if name == "full" and dataset_size < cal.AUTO_FULL_MIN_EXAMPLES:
            out.append(
                f"full fine-tuning on {dataset_size} examples risks forgetting; LoRA usually"
                " matches it below ~50k examples"
            )
        if lora and lora.r > 64 and name in ("lora", "qlora") and dataset_size < 10_000:
            out.append(f"LoRA rank {lora.r} on {dataset_size} examples: overfitting risk")
    if name == "qlora":
        out.append(
            "QLoRA trains against a 4-bit base: for numerical-precision tasks (arithmetic,"
            " exact figures, code) compare with a 16-bit LoRA run"
        )
    if name in ("lora", "qlora") and lora is not None:
        _, unknown = resolve_targets(req.arch, lora.target_modules)
        if unknown:
            out.append(
                f"targetModules {unknown} match no linear of {req.arch.model_type}"
                " (known: " + ", ".join(x.name for x in req.arch.linears()) + ")"
            )
    if fit is not None:
        s = fit.shape
        if s.nodes > 1:
            out.extend(_shared_output_warnings(spec, s.nodes))
        if s.nodes > 1 and (s.pool.interconnect or "").lower() in ("", "ethernet", "tcp"):
            out.append(
                f"{s.nodes} nodes over {s.pool.interconnect or 'an unknown interconnect'}:"
                " ZeRO traffic between nodes may dominate step time"
            )
        if fit.precision == "fp16":
            out.append(f"{s.pool.gpu_type} has no bf16: fp16 training needs loss scaling")
        if spec.resources.max_cost_per_hour is not None and s.cost_per_hour is None:
            out.append(f"pool {s.pool.name} has no costPerGPUHour: maxCostPerHour not checked")
        if fit.strategy.offload != "none":
            out.append(
                f"CPU offload needs ~{fit.estimate.host_bytes / cal.GiB:.0f} GiB host RAM per"
                " node and slows steps several-fold"
            )
    return out


def _shared_output_warnings(spec: FineTuneJobSpec, nodes: int) -> list[str]:
    """Several nodes write checkpoints (every rank its ZeRO shards) to one place."""
    pvc = spec.output.pvc if spec.output else None
    if pvc is None:
        return [
            f"{nodes} nodes but no output.pvc: each node keeps its part of every checkpoint"
            " in its own pod, so a retry cannot resume and the results are lost with the"
            " pods; give output.pvc a ReadWriteMany claim"
        ]
    if pvc.size is None:
        return [
            f"{nodes} nodes write to output.pvc {pvc.claim_name}: it must be ReadWriteMany"
            " (the operator refuses to launch on a claim only one node can mount)"
        ]
    return []  # the operator creates it ReadWriteMany


__all__ = ["DatasetSize", "PlanRefused", "auto_methods", "plan", "warnings_for"]
