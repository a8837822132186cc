"""The FineTuneJob spec: what the user asks for.

Only what users set lives here; what the trainer alone needs (resolved paths, the plan)
goes into the trainer config, not the CRD. Field docstrings become the CRD's
descriptions, so `kubectl explain finetunejob.spec.training` reads them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from ..capabilities import CAPABILITIES, UNMERGEABLE
from .base import ApiModel, with_cel
from .common import (
    URI_RULES,
    DataSource,
    HFSource,
    ModelSource,
    Name,
    ObjectStoreSource,
    PVCSource,
    Quantity,
    SecretKeyRef,
    check_sources,
)


def _default(schema: dict[str, Any], model: type[ApiModel]) -> None:
    """The whole default object in the CRD, so the API server stores complete values
    (and CEL rules on the object see every field)."""
    schema["default"] = model().to_k8s()


Method = Literal["auto", "full", "lora", "qlora", "prompt-tuning", "prefix-tuning", "ia3"]
LORA_FAMILY = ("auto", "lora", "qlora")
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


# --------------------------------------------------------------------------- model
class Architecture(ApiModel):
    """The model's shape, for planning when `config.json` cannot be read before launch.

    Either give `parameters` alone (a rough plan) or the shape fields (an exact one).
    """

    parameters: Annotated[int, Field(gt=0)] | None = None
    """Total parameter count, e.g. 8030261248."""
    num_layers: Annotated[int, Field(gt=0, le=1024)] | None = None
    """Transformer layers (`num_hidden_layers`)."""
    hidden_size: Annotated[int, Field(gt=0)] | None = None
    """Model width (`hidden_size`)."""
    intermediate_size: Annotated[int, Field(gt=0)] | None = None
    """MLP width (`intermediate_size`)."""
    num_attention_heads: Annotated[int, Field(gt=0)] | None = None
    """Attention heads."""
    num_key_value_heads: Annotated[int, Field(gt=0)] | None = None
    """Key/value heads (grouped-query attention); defaults to the attention heads."""
    head_dim: Annotated[int, Field(gt=0)] | None = None
    """Per-head dimension; defaults to hiddenSize / numAttentionHeads."""
    vocab_size: Annotated[int, Field(gt=0)] | None = None
    """Vocabulary size."""
    tie_word_embeddings: bool | None = None
    """Whether the LM head shares the embedding matrix."""
    num_experts: Annotated[int, Field(gt=0)] | None = None
    """Mixture-of-experts: experts per layer."""
    num_experts_per_token: Annotated[int, Field(gt=0)] | None = None
    """Mixture-of-experts: experts routed per token."""
    moe_intermediate_size: Annotated[int, Field(gt=0)] | None = None
    """Mixture-of-experts: each expert's MLP width, when it differs from intermediateSize."""
    shared_expert_intermediate_size: Annotated[int, Field(gt=0)] | None = None
    """Mixture-of-experts: the always-active shared expert's MLP width (Qwen-MoE)."""
    model_type: Annotated[str, StringConstraints(max_length=64)] | None = None
    """`model_type` from config.json (e.g. `llama`), used to resolve `all-linear` targets."""

    model_config = with_cel(
        {
            "rule": "has(self.parameters) || (has(self.numLayers) && has(self.hiddenSize)"
            " && has(self.vocabSize))",
            "message": "give parameters, or numLayers, hiddenSize and vocabSize",
        }
    )

    @model_validator(mode="after")
    def _enough(self) -> Architecture:
        if self.parameters is None and None in (self.num_layers, self.hidden_size, self.vocab_size):
            raise ValueError("give parameters, or numLayers, hiddenSize and vocabSize")
        return self


class ModelSpec(ModelSource):
    """The base model to fine-tune."""

    architecture: Architecture | None = None
    """Shape override for planning when config.json is not reachable before launch."""
    trust_remote_code: bool = False
    """Run the model repository's own Python code. Only for sources you trust."""

    def location(self) -> ModelSource:
        """Where the model is, without the planning and loading settings."""
        return ModelSource.model_validate(self.model_dump(include=set(ModelSource.model_fields)))


# --------------------------------------------------------------------------- dataset
DatasetFormat = Literal[
    "auto", "alpaca", "sharegpt", "messages", "text", "completion", "preference"
]


class FieldMapping(ApiModel):
    """Column names in your data, when they differ from the format's usual ones."""

    instruction: str | None = None
    """Alpaca instruction column (default `instruction`)."""
    input: str | None = None
    """Alpaca input column (default `input`)."""
    output: str | None = None
    """Alpaca output column (default `output`)."""
    conversations: str | None = None
    """ShareGPT conversation list column (default `conversations`)."""
    messages: str | None = None
    """Messages list column (default `messages`)."""
    role: str | None = None
    """Role key inside a message (default `role`, or `from` for ShareGPT)."""
    content: str | None = None
    """Content key inside a message (default `content`, or `value` for ShareGPT)."""
    text: str | None = None
    """Plain-text column (default `text`)."""
    prompt: str | None = None
    """Prompt column (default `prompt`)."""
    completion: str | None = None
    """Completion column (default `completion`)."""
    system: str | None = None
    """Per-row system prompt column (default `system`)."""
    chosen: str | None = None
    """Preference data: the preferred answer column (default `chosen`)."""
    rejected: str | None = None
    """Preference data: the dispreferred answer column (default `rejected`)."""


class SplitSpec(ApiModel):
    """How to carve validation and test sets out of the training data."""

    validation: Fraction = 0.1
    """Fraction held out for validation when no validation source is given."""
    test: Fraction = 0.1
    """Fraction held out for the test set when no test source is given."""
    seed: int = 42
    """Seed of the deterministic split."""

    model_config = with_cel(
        {"rule": "self.validation + self.test < 1.0", "message": "validation + test must be < 1"}
    )

    @model_validator(mode="after")
    def _sum(self) -> SplitSpec:
        if self.validation + self.test >= 1.0:
            raise ValueError(f"validation + test must be < 1, got {self.validation} + {self.test}")
        return self


class DedupSpec(ApiModel):
    """Duplicate removal before splitting (duplicates across splits inflate eval scores)."""

    exact: bool = True
    """Drop rows whose normalised text is identical."""
    near_duplicate: bool = False
    """Drop near-duplicates found with MinHash LSH."""
    threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    """Jaccard similarity above which two rows count as near-duplicates."""


class ReplaySpec(ApiModel):
    """General-domain data mixed into training to limit catastrophic forgetting."""

    source: DataSource
    """The general data (plain `text` or chat format)."""
    ratio: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    """Fraction of training examples drawn from this source."""


class DatasetSpec(ApiModel):
    """The training data and how to prepare it."""

    train: DataSource
    """The training data."""
    validation: DataSource | None = None
    """A separate validation set; otherwise one is split from `train`."""
    test: DataSource | None = None
    """A separate test set for task metrics; otherwise one is split from `train`."""
    format: DatasetFormat = "auto"
    """Row format; `auto` detects alpaca, sharegpt, messages, completion or text."""
    field_mapping: FieldMapping | None = None
    """Column names, when yours differ from the format's usual ones."""
    system_prompt: Annotated[str, StringConstraints(max_length=8192)] | None = None
    """System prompt added to every conversation that has none."""
    split: SplitSpec = Field(
        default_factory=SplitSpec, json_schema_extra=lambda s: _default(s, SplitSpec)
    )
    """Validation/test fractions and seed, used for what is not given separately."""
    dedup: DedupSpec = Field(
        default_factory=DedupSpec, json_schema_extra=lambda s: _default(s, DedupSpec)
    )
    """Duplicate removal."""
    max_samples: Annotated[int, Field(gt=0)] | None = None
    """Use at most this many training rows (after shuffling with the split seed)."""
    max_bad_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    """Fail when more than this fraction of rows is malformed; below it they are dropped."""
    pii: Literal["off", "warn", "redact", "fail"] = "warn"
    """What to do with e-mail addresses, phone and card numbers, IBANs and keys in the data."""
    replay: ReplaySpec | None = None
    """General data mixed in against forgetting."""


# --------------------------------------------------------------------------- method
class LoRASpec(ApiModel):
    """LoRA adapter settings (also used by QLoRA)."""

    r: Annotated[int, Field(gt=0, le=1024)] = 16
    """Adapter rank."""
    alpha: Annotated[float, Field(gt=0)] = 32
    """Scaling numerator; the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA)."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    """Dropout on the adapter input."""
    target_modules: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=128)]],
        Field(min_length=1, max_length=64),
    ] = Field(default_factory=lambda: ["all-linear"], json_schema_extra={"default": ["all-linear"]})
    """Module names to adapt (e.g. q_proj, v_proj), or `all-linear` for every linear
    layer except the LM head."""
    use_rslora: bool = False
    """Rank-stabilised LoRA scaling (alpha/sqrt(r))."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""


class QLoRASpec(ApiModel):
    """4-bit quantisation of the frozen base model (bitsandbytes)."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type; NF4 is what the QLoRA paper recommends."""
    double_quant: bool = True
    """Quantise the quantisation constants too (saves ~0.37 bit per parameter)."""
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Dtype of the matmuls on dequantised weights."""


class PromptTuningSpec(ApiModel):
    """Prompt- and prefix-tuning settings."""

    num_virtual_tokens: Annotated[int, Field(gt=0, le=1024)] = 20
    """Learned virtual tokens."""
    init_text: Annotated[str, StringConstraints(max_length=2048)] | None = None
    """Initialise prompt tuning from this text instead of random vectors."""


# --------------------------------------------------------------------------- objective
Objective = Literal["sft", "dpo", "orpo"]
PREFERENCE_OBJECTIVES = ("dpo", "orpo")


class PreferenceSpec(ApiModel):
    """Preference tuning settings (objectives dpo and orpo), passed to TRL's trainers."""

    beta: Annotated[float, Field(gt=0.0, le=100.0)] = 0.1
    """DPO: how far the policy may move from the reference (higher = closer); ORPO: the
    weight of the odds-ratio term (the paper's lambda)."""
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    """DPO loss: `sigmoid` (the DPO paper), `ipo`, `hinge` (SLiC) or `robust`
    (label-noise-robust DPO, with labelSmoothing)."""
    # le=0.49, not lt=0.5: the API server checks the default 0 (an integer in JSON)
    # against a fractional exclusive maximum in integers, and refuses the CRD
    label_smoothing: Annotated[float, Field(ge=0.0, le=0.49)] = 0.0
    """Robust DPO: the assumed share of flipped preference labels (below 0.5)."""


# --------------------------------------------------------------------------- training
WatchedMetric = Literal["eval_loss", "exact_match", "rouge_l", "accuracy", "reward_accuracy"]
"""Validation metrics a run can watch: loss, the task metrics (scored by generation on
the validation split at each evaluation) and, for preference objectives, DPO's reward
accuracy."""


class EarlyStoppingSpec(ApiModel):
    """Stop when the validation metric stops improving; the same metric picks the best
    checkpoint (`training.loadBestAtEnd`)."""

    enabled: bool = True
    """Turn early stopping on; `false` keeps `metric` for picking the best checkpoint only."""
    patience: Annotated[int, Field(gt=0, le=1000)] = 3
    """Evaluations without improvement before stopping."""
    metric: WatchedMetric = "eval_loss"
    """Metric watched on the validation split; loss is minimised, the others maximised."""
    threshold: Annotated[float, Field(ge=0.0)] = 0.0
    """Minimum change that counts as improvement."""


class CheckpointSpec(ApiModel):
    """When to checkpoint and how many to keep."""

    every_steps: Annotated[int, Field(gt=0)] | None = None
    """Also checkpoint every N optimizer steps (always at each epoch end)."""
    keep: Annotated[int, Field(gt=0, le=100)] = 2
    """Checkpoints kept besides the best one."""


class TrainingSpec(ApiModel):
    """Hyperparameters. Unset values are chosen by the planner from the method."""

    epochs: Annotated[float, Field(gt=0, le=100)] = 3
    """Passes over the training data."""
    learning_rate: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Peak learning rate; unset takes the method's default (docs/planner.md, Methods)."""
    lr_scheduler: Literal[
        "cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts"
    ] = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.03
    """Fraction of steps spent warming up."""
    weight_decay: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """AdamW weight decay."""
    global_batch_size: Annotated[int, Field(gt=0, le=65536)] = 16
    """Sequences per optimizer step across all GPUs (micro-batch × accumulation × ranks)."""
    max_seq_length: Annotated[int, Field(ge=16, le=1048576)] = 2048
    """Tokens per sequence; longer examples are truncated."""
    packing: bool = True
    """Pack several short examples into one sequence (attention does not cross them)."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in the backward pass; unset lets the planner decide."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Training precision; `auto` takes bf16 where the GPU supports it."""
    early_stopping: EarlyStoppingSpec | None = None
    """Early stopping on the validation metric."""
    seed: int = 42
    """Seed for initialisation, shuffling and dropout."""
    checkpoint: CheckpointSpec = Field(
        default_factory=CheckpointSpec, json_schema_extra=lambda s: _default(s, CheckpointSpec)
    )
    """Checkpoint interval and retention."""
    neftune_noise_alpha: Annotated[float, Field(gt=0, le=100)] | None = None
    """NEFTune embedding noise (5 is common); unset disables it."""
    load_best_at_end: bool = True
    """Export and evaluate the best checkpoint by the watched metric (earlyStopping.metric,
    else validation loss) instead of the last one."""
    resume_from: ModelSource | None = None
    """A checkpoint (a `checkpoint-N` directory with `trainer_state.json`) to continue from,
    e.g. one an earlier, deleted job left behind. Without it a job resumes only its own
    checkpoints: those of another job (another UID or spec) in the output directory are
    moved aside, never used (docs/operator.md, Job identity)."""


# --------------------------------------------------------------------------- evaluation
Metric = Literal["loss", "perplexity", "exactMatch", "rougeL", "accuracy", "preferenceAccuracy"]
TaskMetric = Literal["exactMatch", "rougeL", "accuracy", "preferenceAccuracy"]


DEFAULT_METRICS: tuple[Metric, ...] = ("loss", "perplexity", "exactMatch")


class BenchmarkFields(ApiModel):
    """Column names of a multiple-choice benchmark, when they differ from the defaults."""

    question: Annotated[str, StringConstraints(min_length=1, max_length=128)] = "question"
    """The question, or the context to complete (HellaSwag: `ctx`)."""
    choices: Annotated[str, StringConstraints(min_length=1, max_length=128)] = "choices"
    """The answer options: a list of strings, or ARC's `{text: [...], label: [...]}`
    (HellaSwag: `endings`)."""
    answer: Annotated[str, StringConstraints(min_length=1, max_length=128)] = "answer"
    """The right option: its index (0-based, number or string), its letter or its label
    (ARC: `answerKey`, HellaSwag: `label`)."""


class BenchmarkSpec(ApiModel):
    """A multiple-choice benchmark you supply (the layout MMLU, ARC and HellaSwag use),
    scored by the log-likelihood of each choice, before and after tuning."""

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
    """Short name shown in status, e.g. `mmlu` or `arc-easy`."""
    source: DataSource
    """The rows: JSONL/JSON/Parquet/CSV with question, choices and answer."""
    fields: BenchmarkFields = Field(
        default_factory=BenchmarkFields, json_schema_extra=lambda s: _default(s, BenchmarkFields)
    )
    """Column names."""
    style: Literal["question", "completion", "letters"] = "question"
    """How a row becomes text, as lm-evaluation-harness does it: `question` scores
    "Question: {q}\nAnswer:" + " {choice}" (ARC); `completion` scores "{q}" + " {choice}"
    (HellaSwag); `letters` lists the choices as A., B., ... and scores " A", " B", ... (MMLU)."""
    metric: Literal["accuracy", "accuracyNorm"] = "accuracy"
    """What the verdict compares: `accuracy` (the choice with the highest log-likelihood)
    or `accuracyNorm` (log-likelihood per character, as reported for HellaSwag)."""
    max_samples: Annotated[int, Field(gt=0)] = 500
    """Rows scored (the first ones after a seeded shuffle)."""


class ForgettingSpec(ApiModel):
    """Catastrophic-forgetting checks: perplexity on general text and accuracy on
    multiple-choice benchmarks, before and after tuning."""

    source: DataSource | None = None
    """General held-out text (plain `text` rows, or chat) for the perplexity check."""
    max_perplexity_increase_percent: Annotated[float, Field(ge=0, le=1000)] = 3.0
    """Fail the evaluation gate (not the job) when perplexity rises more than this."""
    max_samples: Annotated[int, Field(gt=0)] = 500
    """Rows of the source to score."""
    benchmarks: Annotated[list[BenchmarkSpec], Field(max_length=8)] = Field(default_factory=list)
    """Multiple-choice benchmarks scored before and after."""
    max_accuracy_drop_percent: Annotated[float, Field(ge=0, le=100)] = 2.0
    """Fail the gate when a benchmark's accuracy drops by more than this many points."""
    per_epoch: bool = False
    """Also score the benchmarks at every evaluation during training."""

    model_config = with_cel(
        {
            "rule": "has(self.source) || (has(self.benchmarks) && size(self.benchmarks) > 0)",
            "message": "give a source (perplexity) or benchmarks (accuracy), or both",
        },
        {
            "rule": "!has(self.benchmarks) || self.benchmarks.all(b,"
            " self.benchmarks.filter(o, o.name == b.name).size() == 1)",
            "message": "benchmark names must be unique",
            "fieldPath": ".benchmarks",
        },
    )

    @model_validator(mode="after")
    def _something(self) -> ForgettingSpec:
        if self.source is None and not self.benchmarks:
            raise ValueError("give a source (perplexity) or benchmarks (accuracy), or both")
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark names must be unique, got {', '.join(names)}")
        return self


class FewShotSpec(ApiModel):
    """A few-shot baseline: the base model prompted with k solved training examples."""

    shots: Annotated[int, Field(ge=1, le=32)] = 3
    """Examples put before each test prompt, drawn from the training split (never the
    test split) and rendered in the model's chat template."""
    seed: int = 1234
    """Seed of the draw (the same shots precede every test row)."""


class PreviousSpec(ApiModel):
    """An earlier fine-tune scored on the same rows: a `job`, or a `model` location."""

    job: Name | None = None
    """A FineTuneJob in this namespace that succeeded; its output is scored."""
    model: ModelSource | None = None
    """A model directory (config.json and weights), or with `adapter` a PEFT adapter."""
    adapter: bool = False
    """`model` is a PEFT adapter for this job's base model."""

    model_config = with_cel(
        {
            "rule": "has(self.job) != has(self.model)",
            "message": "set exactly one of job, model",
        },
        {
            "rule": "!has(self.adapter) || !self.adapter || has(self.model)",
            "message": "adapter describes model; a job's output kind is known",
            "fieldPath": ".adapter",
        },
    )

    @model_validator(mode="after")
    def _one(self) -> PreviousSpec:
        if (self.job is None) == (self.model is None):
            raise ValueError("set exactly one of job, model")
        if self.adapter and self.model is None:
            raise ValueError("adapter describes model; a job's output kind is known")
        return self


class TargetSpec(ApiModel):
    """The score the fine-tune is for; the few-shot baseline is compared with it."""

    metric: TaskMetric = "exactMatch"
    """Task metric on the test split."""
    value: Annotated[float, Field(gt=0.0, le=1.0)]
    """The score wanted, 0..1."""


Baseline = Literal["zeroShot", "fewShot", "previous"]


class GateSpec(ApiModel):
    """What `status.evaluation.gate` checks: the task metric against a baseline, and
    forgetting within its limits."""

    baseline: Baseline = "zeroShot"
    """The baseline the tuned model must beat (fewShot and previous need their blocks)."""
    metric: Metric | None = None
    """The metric compared; default the first task metric in `metrics`, else loss."""
    margin: Annotated[float, Field(ge=0.0, le=1000.0)] = 0.0
    """By how much the tuned model must beat the baseline, in the metric's units (0..1
    for task metrics; loss and perplexity must be lower by this much)."""


class EvaluationSpec(ApiModel):
    """When and how the tuned model is evaluated."""

    strategy: Literal["epoch", "steps", "no"] = "epoch"
    """Evaluate at each epoch end, every `everySteps`, or only at the end."""
    every_steps: Annotated[int, Field(gt=0)] | None = None
    """Steps between evaluations with strategy `steps`."""
    metrics: Annotated[list[Metric], Field(max_length=6)] = Field(
        default_factory=lambda: list(DEFAULT_METRICS),
        json_schema_extra={"default": ["loss", "perplexity", "exactMatch"]},
    )
    """Metrics on the test split; task metrics (exactMatch, rougeL, accuracy) generate,
    preferenceAccuracy compares the chosen and rejected answers' log-likelihoods."""
    compare_baseline: bool = True
    """Also score the base model before training (the zero-shot baseline), so status
    shows baseline → tuned."""
    few_shot: FewShotSpec | None = None
    """Also score the base model with k training examples in the prompt."""
    previous: PreviousSpec | None = None
    """Also score an earlier fine-tune (another job, a model or an adapter)."""
    target: TargetSpec | None = None
    """The task score wanted; with a few-shot baseline, status says when prompting
    already comes close (fine-tuning may not be needed)."""
    gate: GateSpec = Field(
        default_factory=GateSpec, json_schema_extra=lambda s: _default(s, GateSpec)
    )
    """What the evaluation gate checks."""
    forgetting: ForgettingSpec | None = None
    """Forgetting checks on general data and benchmarks."""
    sample_generations: Annotated[int, Field(ge=0, le=100)] = 5
    """Test prompts whose generations are recorded in the report."""
    max_new_tokens: Annotated[int, Field(gt=0, le=8192)] = 128
    """Generation length limit for task metrics."""
    max_test_samples: Annotated[int, Field(gt=0)] = 200
    """Test rows scored by generation (and validation rows, when a task metric is watched)."""

    model_config = with_cel(
        {
            "rule": "self.strategy != 'steps' || has(self.everySteps)",
            "message": "strategy steps needs everySteps",
        },
        {
            "rule": "!has(self.gate) || self.gate.baseline != 'fewShot' || has(self.fewShot)",
            "message": "gate.baseline fewShot needs evaluation.fewShot",
            "fieldPath": ".gate.baseline",
        },
        {
            "rule": "!has(self.gate) || self.gate.baseline != 'previous' || has(self.previous)",
            "message": "gate.baseline previous needs evaluation.previous",
            "fieldPath": ".gate.baseline",
        },
    )

    @model_validator(mode="after")
    def _steps(self) -> EvaluationSpec:
        if self.strategy == "steps" and self.every_steps is None:
            raise ValueError("strategy steps needs everySteps")
        needs = {"fewShot": self.few_shot, "previous": self.previous}
        if self.gate.baseline in needs and needs[self.gate.baseline] is None:
            raise ValueError(
                f"gate.baseline {self.gate.baseline} needs evaluation.{self.gate.baseline}"
            )
        return self

    def gate_metric(self) -> str:
        """The metric the gate compares: the spec's, else the first task metric, else loss."""
        if self.gate.metric is not None:
            return self.gate.metric
        task = [m for m in self.metrics if m not in ("loss", "perplexity")]
        return task[0] if task else "loss"


# --------------------------------------------------------------------------- resources
class Toleration(ApiModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = None
    """Taint key; empty with operator Exists tolerates everything."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (default Equal)."""
    value: str | None = None
    """Taint value for Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; empty means all."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated."""


class ResourcesSpec(ApiModel):
    """Which GPUs may be used, and how many."""

    gpu_type: Annotated[str, StringConstraints(min_length=1, max_length=128)] = Field(
        default="auto", alias="gpuType"
    )
    """The GPU to use, or `auto` for the cheapest fit: a pool's GPU product name
    (`NVIDIA-L4`), a short form of it that starts with the model (`L4`, `H100-80GB`; case
    and `NVIDIA-` do not matter, and `L4` never means `L40S`), or a pool's name."""
    min_gpus: Annotated[int, Field(ge=1, le=4096)] = Field(default=1, alias="minGPUs")
    """Fewest GPUs to use in total."""
    max_gpus: Annotated[int, Field(ge=1, le=4096)] | None = Field(default=None, alias="maxGPUs")
    """Most GPUs to use in total; unset means what the pools offer."""
    max_nodes: Annotated[int, Field(ge=1, le=512)] | None = None
    """Most nodes to spread over; unset means what the pools offer."""
    node_selector: Annotated[dict[str, str], Field(max_length=32)] | None = None
    """Extra node labels the trainer pods must match (added to the pool's own)."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None
    """Extra tolerations for the trainer pods (added to the pool's own)."""
    affinity: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """A core/v1 Affinity for the trainer pods."""
    priority_class_name: Name | None = None
    """PriorityClass of the trainer pods."""
    max_gpu_memory_fraction: Annotated[float, Field(gt=0.1, le=1.0)] = Field(
        default=0.9, alias="maxGPUMemoryFraction"
    )
    """Share of each GPU's memory the plan may fill; the rest is headroom."""
    max_cost_per_hour: Annotated[float, Field(gt=0)] | None = None
    """Refuse shapes whose pool cost exceeds this (needs costPerGPUHour in the pools)."""
    cpu: Quantity | None = None
    """CPU request per trainer pod (e.g. `8`)."""
    memory: Quantity | None = None
    """Memory request per trainer pod (e.g. `64Gi`); sizes CPU offload."""
    shm_size: Quantity = "8Gi"
    """Size of /dev/shm for data loader workers and NCCL."""

    model_config = with_cel(
        {
            "rule": "!has(self.maxGPUs) || self.minGPUs <= self.maxGPUs",
            "message": "minGPUs must be <= maxGPUs",
        }
    )

    @model_validator(mode="after")
    def _min_max(self) -> ResourcesSpec:
        if self.max_gpus is not None and self.min_gpus > self.max_gpus:
            raise ValueError(f"minGPUs must be <= maxGPUs, got {self.min_gpus} > {self.max_gpus}")
        return self


# --------------------------------------------------------------------------- output
class OutputPVC(PVCSource):
    """A claim for the outputs; the operator creates it when `size` is given."""

    read_only: bool = False
    """Outputs are written, so the claim is mounted read-write."""
    size: Quantity | None = None
    """Create the claim with this size when it does not exist (it is kept after deletion)."""
    storage_class_name: Name | None = None
    """StorageClass for a created claim."""


class HFPushSpec(HFSource):
    """Push the result to a Hugging Face Hub repository."""

    private: bool = True
    """Create the repository as private."""


class OutputSpec(ApiModel):
    """Where checkpoints, the adapter and the merged model go."""

    pvc: OutputPVC | None = None
    """A PersistentVolumeClaim (checkpoints live here, so runs can resume)."""
    s3: ObjectStoreSource | None = None
    """Copy the final outputs to S3."""
    gcs: ObjectStoreSource | None = None
    """Copy the final outputs to GCS."""
    hf: HFPushSpec | None = None
    """Push the final model to the Hugging Face Hub."""
    merge_adapter: bool = False
    """Also save the adapter merged into the base weights (bf16 for QLoRA)."""

    model_config = with_cel(*URI_RULES)

    @model_validator(mode="after")
    def _uris(self) -> OutputSpec:
        check_sources(self, ("pvc", "s3", "gcs", "hf"), exactly_one=False)
        return self


VIRTUAL_TOKEN_METHODS = UNMERGEABLE
_MERGEABLE = [n for n, c in CAPABILITIES.items() if c.mergeable and not c.trains_base_weights]
MERGE_VIRTUAL_TOKENS = (
    f"output.mergeAdapter needs an adapter that merges into the weights ({', '.join(_MERGEABLE)}):"
    f" {' and '.join(UNMERGEABLE)} add virtual tokens, which have no merged form"
)
"""Refused up front: PEFT's merge_and_unload only exists for weight adapters, and finding
out after training would fail the job at its very end."""


class FineTuneJobSpec(ApiModel):
    """What to fine-tune, on what, how, and where the result goes."""

    model: ModelSpec
    """The base model."""
    dataset: DatasetSpec
    """The training data."""
    method: Method = "auto"
    """`auto` picks the least invasive method that fits: LoRA, else QLoRA; full only for
    large datasets where it fits."""
    lora: LoRASpec | None = None
    """LoRA settings (methods lora, qlora, auto)."""
    qlora: QLoRASpec | None = None
    """Quantisation settings (methods qlora, auto)."""
    prompt_tuning: PromptTuningSpec | None = None
    """Virtual-token settings (methods prompt-tuning, prefix-tuning)."""
    objective: Objective = "sft"
    """What the run optimises, whatever the method: `sft` (next-token loss on the
    answers), `dpo` (direct preference optimisation on prompt/chosen/rejected data; the
    reference is the frozen base: the base itself for adapters, a second copy for full)
    or `orpo` (odds-ratio preference optimisation, no reference model)."""
    preference: PreferenceSpec | None = None
    """Settings of the preference objectives (dpo, orpo)."""
    training: TrainingSpec = Field(
        default_factory=TrainingSpec, json_schema_extra=lambda s: _default(s, TrainingSpec)
    )
    """Hyperparameters."""
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, json_schema_extra=lambda s: _default(s, EvaluationSpec)
    )
    """Evaluation and the forgetting check."""
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, json_schema_extra=lambda s: _default(s, ResourcesSpec)
    )
    """GPU type, counts and placement."""
    output: OutputSpec | None = None
    """Where results go; without it they stay in the pod's scratch space only."""
    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    """Trainer image override (defaults to the operator's configured image)."""
    suspend: bool = False
    """Stop (after a checkpoint) or hold the job; compatible with Kueue."""
    max_restarts: Annotated[int, Field(ge=0, le=100)] = 3
    """Retries of retryable failures, each resuming from the latest checkpoint."""
    active_deadline_seconds: Annotated[int, Field(gt=0)] | None = None
    """Fail the job when it has run longer than this."""
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = None
    """Delete the job this long after it succeeds or fails (outputs are kept)."""
    ttl_deletes: Literal["job", "children"] = "job"
    """What ttlSecondsAfterFinished deletes: the FineTuneJob itself (and with it all it
    owns), or only its trainer Jobs and their pods, keeping the FineTuneJob and its status
    (for GitOps: Argo CD or Flux would re-create a deleted FineTuneJob from Git)."""

    model_config = with_cel(
        {
            "rule": "!has(self.lora) || self.method in ['auto', 'lora', 'qlora']",
            "message": "lora settings need method lora, qlora or auto",
            "fieldPath": ".lora",
        },
        {
            "rule": "!has(self.qlora) || self.method in ['auto', 'qlora']",
            "message": "qlora settings need method qlora or auto",
            "fieldPath": ".qlora",
        },
        {
            "rule": "!has(self.promptTuning) || self.method in ['prompt-tuning', 'prefix-tuning']",
            "message": "promptTuning settings need method prompt-tuning or prefix-tuning",
            "fieldPath": ".promptTuning",
        },
        {
            "rule": "!has(self.preference) || self.objective in ['dpo', 'orpo']",
            "message": "preference settings need objective dpo or orpo",
            "fieldPath": ".preference",
        },
        {
            "rule": "!(self.objective in ['dpo', 'orpo'])"
            " || self.method in ['auto', 'full', 'lora', 'qlora']",
            "message": "preference objectives (dpo, orpo) train with method full, lora or qlora",
            "fieldPath": ".objective",
        },
        {
            "rule": "!(self.objective in ['dpo', 'orpo']) || !has(self.dataset.replay)",
            "message": "dataset.replay mixes general text into supervised data; preference"
            " objectives (dpo, orpo) train on pairs only",
            "fieldPath": ".dataset.replay",
        },
        {
            "rule": "!has(self.training.earlyStopping)"
            " || self.training.earlyStopping.metric != 'reward_accuracy'"
            " || self.objective in ['dpo', 'orpo']",
            "message": "earlyStopping.metric reward_accuracy needs objective dpo or orpo",
            "fieldPath": ".training.earlyStopping.metric",
        },
        {
            "rule": "!has(self.output) || !has(self.output.mergeAdapter)"
            " || !self.output.mergeAdapter || !(self.method in"
            f" {list(UNMERGEABLE)})",
            "message": MERGE_VIRTUAL_TOKENS,
            "fieldPath": ".output.mergeAdapter",
        },
    )

    @model_validator(mode="after")
    def _method_blocks(self) -> FineTuneJobSpec:
        if self.lora is not None and self.method not in LORA_FAMILY:
            raise ValueError(f"lora settings need method lora, qlora or auto, got {self.method}")
        if self.qlora is not None and self.method not in ("auto", "qlora"):
            raise ValueError(f"qlora settings need method qlora or auto, got {self.method}")
        if self.prompt_tuning is not None and self.method not in (
            "prompt-tuning",
            "prefix-tuning",
        ):
            raise ValueError(
                "promptTuning settings need method prompt-tuning or prefix-tuning, "
                f"got {self.method}"
            )
        if self.output and self.output.merge_adapter and self.method in VIRTUAL_TOKEN_METHODS:
            raise ValueError(f"{MERGE_VIRTUAL_TOKENS}, got {self.method}")
        if self.preference is not None and self.objective not in PREFERENCE_OBJECTIVES:
            raise ValueError(
                f"preference settings need objective dpo or orpo, got {self.objective}"
            )
        preference = self.objective in PREFERENCE_OBJECTIVES
        if preference and self.dataset.replay is not None:
            raise ValueError(
                "dataset.replay mixes general text into supervised data; preference"
                " objectives (dpo, orpo) train on pairs only"
            )
        es = self.training.early_stopping
        if es is not None and es.metric == "reward_accuracy" and not preference:
            raise ValueError("earlyStopping.metric reward_accuracy needs objective dpo or orpo")
        if self.objective in PREFERENCE_OBJECTIVES and self.method not in (
            "auto",
            "full",
            "lora",
            "qlora",
        ):
            raise ValueError(
                "preference objectives (dpo, orpo) train with method full, lora or qlora,"
                f" got {self.method}"
            )
        return self

    @model_validator(mode="after")
    def _one_secret_per_store_kind(self) -> FineTuneJobSpec:
        """The trainer pod holds one set of S3 credentials (the Secret's keys become its
        environment) and one GCS key file, so two different Secrets for one kind of store
        cannot both apply; refused here instead of silently using one for every bucket."""
        secrets: dict[str, set[str]] = {"S3": set(), "GCS": set()}
        for store in self.object_stores():
            if store.credentials_secret_ref is not None:
                kind = "S3" if store.uri.startswith("s3://") else "GCS"
                secrets[kind].add(store.credentials_secret_ref.name)
        for kind, names in secrets.items():
            if len(names) > 1:
                raise ValueError(
                    f"the {kind} locations name different credentialsSecretRefs"
                    f" ({', '.join(sorted(names))}); a trainer pod holds one set of {kind}"
                    " credentials: use one Secret that can reach every bucket"
                )
        return self

    def sources(self) -> list[ModelSource | DataSource]:
        """Every location the job reads: the model, each dataset source, the benchmarks
        and a previous model or adapter given by location."""
        found: list[ModelSource | DataSource | None] = [
            self.model,
            self.dataset.train,
            self.dataset.validation,
            self.dataset.test,
            self.dataset.replay.source if self.dataset.replay else None,
        ]
        ev = self.evaluation
        if ev.forgetting is not None:
            found.append(ev.forgetting.source)
            found += [b.source for b in ev.forgetting.benchmarks]
        if ev.previous is not None:
            found.append(ev.previous.model)
        found.append(self.training.resume_from)
        return [src for src in found if src is not None]

    def object_stores(self) -> list[ObjectStoreSource]:
        """Every S3/GCS location the job reads or writes."""
        places: list[ModelSource | DataSource | OutputSpec] = [*self.sources()]
        if self.output is not None:
            places.append(self.output)
        return [store for p in places for store in (p.s3, p.gcs) if store is not None]


__all__ = [
    "Architecture",
    "DataSource",
    "DatasetSpec",
    "EvaluationSpec",
    "FineTuneJobSpec",
    "HFSource",
    "LoRASpec",
    "ModelSpec",
    "ObjectStoreSource",
    "OutputSpec",
    "PVCSource",
    "QLoRASpec",
    "ResourcesSpec",
    "SecretKeyRef",
    "TrainingSpec",
]
