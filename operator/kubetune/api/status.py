"""The FineTuneJob status: what the operator observed, planned and measured.

Written only by the operator (through the status subresource). The `plan` object is a
stable contract shared with `kubetune plan -o json` and the trainer config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from .base import ApiModel
from .phases import Phase
from .spec import Architecture, Toleration


class Condition(ApiModel):
    """A condition in the Kubernetes convention (metav1.Condition)."""

    type: str
    """Condition type, e.g. Planned (see `ConditionType`)."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str = ""
    """CamelCase machine-readable reason."""
    message: str = ""
    """Human-readable detail, with the field path for validation errors."""
    last_transition_time: str | None = None
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The spec generation this condition describes."""


class Alternative(ApiModel):
    """A shape or method the planner considered and rejected."""

    method: str
    """Method considered."""
    pool: str | None = None
    """Pool considered."""
    gpus: int | None = None
    """Total GPUs considered."""
    reason: str
    """Why it was not chosen, in one line."""


class Plan(ApiModel):
    """How kubetune will fine-tune, and the memory arithmetic behind it."""

    method: str
    """Resolved method: full, lora, qlora, prompt-tuning, prefix-tuning or ia3."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage (0 = plain DDP or a single GPU)."""
    offload: Literal["none", "optimizer", "optimizer+parameters"] = "none"
    """DeepSpeed CPU offload."""
    pool: str
    """Node pool chosen."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """The chosen pool's node labels: the trainer pods select them (with
    spec.resources.nodeSelector), so launching needs no second look at the pools."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations for the chosen pool's taints (with spec.resources.tolerations)."""
    gpu_type: str = Field(alias="gpuType")
    """GPU product of that pool."""
    gpu_memory_gi_b: float = Field(alias="gpuMemoryGiB")
    """Memory of one GPU, GiB."""
    nodes: int
    """Nodes (one trainer pod each)."""
    gpus_per_node: int
    """GPUs (trainer processes) per node."""
    total_gpus: int = Field(alias="totalGPUs")
    """nodes × gpusPerNode."""
    micro_batch_size: int
    """Sequences per GPU per forward pass."""
    gradient_accumulation_steps: int
    """Micro-batches per optimizer step."""
    global_batch_size: int
    """microBatch × accumulation × data-parallel ranks."""
    gradient_checkpointing: bool
    """Activation recomputation on or off."""
    precision: str
    """bf16, fp16 or fp32."""
    learning_rate: float
    """Peak learning rate (the spec's or the method's default)."""
    max_seq_length: int
    """Tokens per sequence."""
    parameters: int
    """Total parameters of the base model."""
    architecture: Architecture | None = None
    """The model shape planned from (config.json or spec.model.architecture); a re-plan
    (after running out of memory) starts from it."""
    trainable_parameters: int
    """Parameters that receive gradients."""
    predicted_peak_gi_b: float = Field(alias="predictedPeakGiB")
    """Predicted peak memory per GPU, GiB."""
    headroom_gi_b: float = Field(default=0.0, alias="headroomGiB")
    """Usable GPU memory left over, GiB."""
    breakdown_gi_b: dict[str, float] = Field(default_factory=dict, alias="breakdownGiB")
    """Predicted memory per GPU by term (weights, gradients, optimizer, activations, ...)."""
    host_memory_gi_b: float = Field(default=0.0, alias="hostMemoryGiB")
    """Host RAM per node needed for CPU offload, GiB."""
    cost_per_hour: float | None = None
    """Pool cost of the shape per hour, when the pools give costs."""
    reasons: list[str] = Field(default_factory=list)
    """Why this plan, one line each."""
    warnings: list[str] = Field(default_factory=list)
    """The field's rules of thumb that apply to this job."""
    alternatives: list[Alternative] = Field(default_factory=list)
    """What was rejected and why."""
    dataset_rows: int | None = None
    """Training examples counted before planning (a lower bound when counting stopped
    early); unset when unknown. `auto` and the small-data warnings use it."""
    dataset_tokens: int | None = None
    """Training tokens estimated before planning (characters / 4), when known."""


class Progress(ApiModel):
    """Training progress reported by rank 0."""

    step: int = 0
    """Optimizer steps done."""
    total_steps: int | None = None
    """Optimizer steps planned."""
    epoch: float | None = None
    """Fractional epoch."""
    percent: float | None = None
    """Percentage done."""
    loss: float | None = None
    """Latest training loss."""
    learning_rate: float | None = None
    """Current learning rate."""
    grad_norm: float | None = None
    """Latest gradient norm."""
    tokens_per_second: float | None = None
    """Real (non-padding) tokens per second, all ranks."""
    eta_seconds: float | None = None
    """Estimated seconds remaining."""
    peak_memory_gi_b: float | None = Field(default=None, alias="peakMemoryGiB")
    """Measured peak GPU memory per GPU, GiB (compare with plan.predictedPeakGiB)."""
    updated_at: str | None = None
    """When rank 0 last reported (RFC 3339)."""


def duration_text(seconds: float | None) -> str:
    """`2m10s`, `1h05m`; `-` when unknown."""
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_parts(progress: Mapping[str, Any]) -> list[str]:
    """`step 40/120 (33%)`, `loss 1.23`, `812 tok/s`, `ETA 2m10s` from a status.progress
    (wire form), leaving out what is unknown. `status.message` joins them while the job
    runs (what Argo CD and kstatus show), and `kubetune status` prints them."""
    total = progress.get("totalSteps")
    step = f"step {progress.get('step', 0)}" + (f"/{total}" if total else "")
    if progress.get("percent") is not None:
        step += f" ({progress['percent']:.0f}%)"
    parts = [step]
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4g}")
    if progress.get("tokensPerSecond") is not None:
        parts.append(f"{progress['tokensPerSecond']:.0f} tok/s")
    if progress.get("etaSeconds") is not None:
        parts.append(f"ETA {duration_text(progress['etaSeconds'])}")
    return parts


class CheckpointStatus(ApiModel):
    """Checkpoints written so far."""

    latest: str | None = None
    """Path of the newest complete checkpoint."""
    latest_step: int | None = None
    """Its step."""
    best: str | None = None
    """Path of the best checkpoint by the early-stopping metric."""
    best_metric: float | None = None
    """Its metric value."""


class EvalMetrics(ApiModel):
    """One set of evaluation figures."""

    loss: float | None = None
    """Validation loss."""
    perplexity: float | None = None
    """exp(loss)."""
    exact_match: float | None = None
    """Exact match on the test split, 0..1."""
    rouge_l: float | None = Field(default=None, alias="rougeL")
    """ROUGE-L F1 on the test split, 0..1."""
    accuracy: float | None = None
    """Label accuracy on the test split, 0..1."""
    preference_accuracy: float | None = None
    """Preference data: share of test pairs whose chosen answer the model finds more
    likely than the rejected one, 0..1."""
    preference_margin: float | None = None
    """Preference data: mean log-likelihood of chosen minus rejected answers (nats)."""
    reward_accuracy: float | None = None
    """DPO during training: share of validation pairs whose implicit reward ranks the
    chosen answer first."""
    reward_margin: float | None = None
    """DPO during training: mean implicit reward of chosen minus rejected answers."""
    benchmarks: dict[str, float] | None = None
    """Benchmark accuracy by name, 0..1 (per-epoch entries, with forgetting.perEpoch)."""
    epoch: float | None = None
    """Epoch at which it was measured."""
    step: int | None = None
    """Optimizer step at which it was measured."""
    source: str | None = None
    """What was scored (baselines: the zero-shot base, k shots, which earlier model)."""


FIGURES = tuple(
    (f.alias or name)
    for name, f in EvalMetrics.model_fields.items()
    if f.annotation == (float | None) and name != "epoch"
)
"""EvalMetrics' figures in their wire names (loss, perplexity, exactMatch, ...), in order."""
COMPARED = ("baseline", "fewShot", "previous", "final")
"""EvaluationStatus entries scored on the same rows, shown side by side."""


class ForgettingStatus(ApiModel):
    """Perplexity on general data before and after."""

    baseline_perplexity: float
    """Base model's perplexity."""
    tuned_perplexity: float
    """Tuned model's perplexity."""
    increase_percent: float
    """Relative increase, percent."""
    limit_percent: float
    """The spec's limit."""
    passed: bool
    """increasePercent <= limitPercent."""


class BenchmarkResult(ApiModel):
    """One multiple-choice benchmark, before and after tuning."""

    name: str
    """The spec's benchmark name."""
    rows: int
    """Rows scored."""
    metric: str = "accuracy"
    """accuracy (the highest-likelihood choice is the answer) or accuracyNorm (per
    character)."""
    baseline: float
    """Base model's accuracy, 0..1."""
    tuned: float
    """Tuned model's accuracy, 0..1."""
    drop_points: float
    """(baseline - tuned) x 100: accuracy lost, in percentage points."""
    limit_points: float
    """forgetting.maxAccuracyDropPercent."""
    passed: bool
    """dropPoints <= limitPoints."""


class BestMetric(ApiModel):
    """The evaluation that picked the exported checkpoint."""

    metric: str
    """The watched metric (earlyStopping.metric, else eval_loss)."""
    value: float
    """Its value at the best evaluation."""
    step: int | None = None
    """Step of the best evaluation."""
    epoch: float | None = None
    """Epoch of the best evaluation."""
    checkpoint: str | None = None
    """The checkpoint saved there."""
    loaded: bool = False
    """True when the run ended elsewhere and this checkpoint's weights were loaded back
    before export and the final evaluation."""


GateResult = Literal["passed", "failed", "notChecked"]


class GateCheck(ApiModel):
    """One part of the evaluation gate."""

    name: Literal["taskMetric", "perplexity", "benchmarks"]
    """taskMetric (tuned vs the chosen baseline), perplexity or benchmarks (forgetting)."""
    result: GateResult
    """passed, failed, or notChecked when there was nothing to check it with."""
    message: str = ""
    """The figures, or why it was not checked."""


class GateStatus(ApiModel):
    """The evaluation gate, part by part."""

    passed: bool | None = None
    """True when every checked part passed, False when one failed, unset when no part
    could be checked."""
    baseline: str = "zeroShot"
    """The baseline of the taskMetric part."""
    metric: str = "loss"
    """The metric of the taskMetric part."""
    margin: float = 0.0
    """The margin the tuned model had to beat the baseline by."""
    checks: list[GateCheck] = Field(default_factory=list)
    """Each part and its result."""


class EvaluationStatus(ApiModel):
    """Baselines vs tuned, forgetting, the best checkpoint and the gate."""

    baseline: EvalMetrics | None = None
    """The base model, before training, zero-shot."""
    few_shot: EvalMetrics | None = None
    """The base model with k training examples in each prompt (task metrics only)."""
    previous: EvalMetrics | None = None
    """An earlier fine-tune (evaluation.previous), on the same rows."""
    final: EvalMetrics | None = None
    """The tuned model (the best checkpoint with training.loadBestAtEnd)."""
    per_epoch: list[EvalMetrics] = Field(default_factory=list)
    """Validation figures at each evaluation during training."""
    best_metric: BestMetric | None = None
    """The evaluation whose checkpoint was exported."""
    forgetting: ForgettingStatus | None = None
    """Perplexity forgetting check."""
    benchmarks: list[BenchmarkResult] = Field(default_factory=list)
    """Benchmark forgetting checks."""
    gate: GateStatus | None = None
    """The gate, part by part."""
    passed: bool | None = None
    """gate.passed: tuned beats the chosen baseline and forgetting is within the limits,
    for the parts that could be checked."""


class Advice(ApiModel):
    """A rule of thumb that applies to this job's data or scores, with its figure."""

    code: str
    """Stable identifier, e.g. fewExamples, evaluationSplitEmpty, tokenizerFertility."""
    level: Literal["warning", "info"] = "warning"
    """warning: worth acting on before spending GPUs; info: context."""
    message: str
    """The figure and what to do about it."""
    value: float | None = None
    """The measured figure (an example count, a share, a score)."""
    threshold: float | None = None
    """The rule's threshold."""


class OutputStatus(ApiModel):
    """Where the results are."""

    adapter: str | None = None
    """Adapter directory (parameter-efficient methods)."""
    model: str | None = None
    """Model directory (full fine-tuning)."""
    merged: str | None = None
    """Merged model directory (output.mergeAdapter)."""
    report: str | None = None
    """Training report JSON."""
    data_report: str | None = None
    """Data report JSON."""
    loss_curve: str | None = None
    """Loss curve PNG."""
    model_card: str | None = None
    """README.md model card."""
    object_store: str | None = None
    """The copy of the final outputs in S3 or GCS (its URI)."""
    hub: str | None = None
    """The Hugging Face Hub repository the model was pushed to (its URL)."""


class FineTuneJobStatus(ApiModel):
    """Observed state, written by the operator."""

    phase: Phase | None = None
    """Pending, Planning, Queued, Running, Evaluating, Succeeded, Failed or Suspended."""
    message: str | None = None
    """One line on the current state; while training: step, loss, speed and ETA."""
    conditions: list[Condition] = Field(default_factory=list)
    """Valid, Planned, Launched, Running, Succeeded, Failed, Suspended, EvaluationPassed,
    and the kstatus trio Ready/Reconciling/Stalled."""
    observed_generation: int | None = None
    """The spec generation last acted on."""
    plan: Plan | None = None
    """The plan, written before anything is launched."""
    progress: Progress | None = None
    """Training progress."""
    checkpoints: CheckpointStatus | None = None
    """Checkpoints."""
    evaluation: EvaluationStatus | None = None
    """Evaluation results."""
    output: OutputStatus | None = None
    """Output paths."""
    data: dict[str, int] | None = None
    """Digest of the data report: example counts at each stage."""
    advice: list[Advice] = Field(default_factory=list)
    """Rules of thumb the trainer found apply (data size, empty evaluation splits,
    tokenizer fertility, few-shot vs target); warnings also set the DataWarning condition."""
    restarts: int = 0
    """Attempts restarted after a retryable failure (counted against spec.maxRestarts)."""
    disruptions: int = 0
    """Attempts relaunched after a trainer pod was evicted, preempted or deleted: not
    failures of the trainer, so not counted in restarts."""
    paused_seconds: int = 0
    """Seconds since the first launch spent suspended, queued or waiting for capacity or
    quota: spec.activeDeadlineSeconds does not count them."""
    paused_since: str | None = None
    """When the current such wait began (unset while the job is not waiting)."""
    attempt: int = 0
    """Current attempt number (0 before launch)."""
    start_time: str | None = None
    """When the first trainer workload was created; the spec is frozen from then on."""
    completion_time: str | None = None
    """When the job succeeded or failed."""
