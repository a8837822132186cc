"""Training throughput: a plain Hugging Face SFT script against kubetune's trainer path.

Side by side in one run, on the same randomly initialised Llama-architecture model and
the same synthetic instruction data (nothing is downloaded):

- baseline: what a user writes from the docs — `AutoModelForCausalLM.from_pretrained`,
  `peft.LoraConfig(r=16, target_modules="all-linear")`, `trl.SFTTrainer` with
  `SFTConfig` defaults (padding to the longest in the batch, no packing, TRL's default
  gradient checkpointing and optimizer); only `max_length`, the batch size, the step
  count and measurement switches are set;
- kubetune: `kubetune_trainer.train.FineTuneRecipe` (the code a trainer pod runs) on a
  `TrainerConfig` built by `kubetune_trainer.testing`: the data pipeline's padding-free
  packing with position-id resets, the method's optimizer (fused AdamW on GPU),
  gradient checkpointing only when the planner's memory model says it is needed.

Each optimisation is behind a flag and measured as its own row with `--ablate`
(`no-packing`, `unfused`, `ckpt-on`).

Reported per run: real (non-padding) tokens/s over the timed steps (after `--warmup`
steps), MFU, peak memory, and the kubetune/baseline ratio.

MFU = tokens/s x FLOPs per token / peak, with FLOPs per token
    full:          6 N + 12 L h s
    LoRA / QLoRA:  4 N_frozen + 6 N_trainable + 12 L h s
N counts every weight that does a matmul (the input embedding excluded, the LM head
included), L layers, h hidden size, s the token-weighted mean example length (the
attention context of a real token); recomputation under gradient checkpointing and
QLoRA's dequantisation are not counted (model FLOPs, not hardware FLOPs). The peak is the
dense bf16 figure of `kubetune.planner.calibration.GPU_CATALOG`; on CPU MFU is n/a.

Run on a GPU machine (see benchmarks/gpu/README.md):
    PYTHONPATH=operator:trainer-image:. python benchmarks/gpu/bench.py --sizes 1b,3b,8b
Smoke (CPU, seconds, not a performance figure):
    PYTHONPATH=operator:trainer-image:. python benchmarks/gpu/bench.py --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
SECTION = "## GPU throughput"
GiB = 1024**3

LLAMA3_VOCAB = 128_256
# Llama 3.2 1B / 3B and Llama 3.1 8B shapes (config.json of the published models).
SIZES: dict[str, dict[str, Any]] = {
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": LLAMA3_VOCAB,
        "tie_word_embeddings": True,
    },
    "3b": {
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": LLAMA3_VOCAB,
        "tie_word_embeddings": True,
    },
    "8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": LLAMA3_VOCAB,
        "tie_word_embeddings": False,
    },
    "smoke": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 512,
        "tie_word_embeddings": True,
    },
}
METHODS = ("lora", "qlora", "full")
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["all-linear"]}

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
SPECIAL = [
    "<|pad|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]


# ----------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """One benchmark invocation: shared by every run in it."""

    smoke: bool
    sizes: list[str]
    methods: list[str]
    steps: int
    warmup: int
    seq_len: int
    micro_batch: int
    median_len: int
    sigma: float
    seed: int = 0
    ablate: bool = False
    isolate: bool = False
    workdir: str = ""

    @staticmethod
    def from_args(a: argparse.Namespace) -> Settings:
        smoke = bool(a.smoke)
        return Settings(
            smoke=smoke,
            sizes=["smoke"] if smoke else a.sizes.split(","),
            methods=a.methods.split(","),
            steps=a.steps or (3 if smoke else 20),
            warmup=a.warmup if a.warmup is not None else (1 if smoke else 5),
            seq_len=a.seq_len or (128 if smoke else 2048),
            micro_batch=a.micro_batch or (4 if smoke else 8),
            median_len=a.median_len or (40 if smoke else 350),
            sigma=a.sigma,
            seed=a.seed,
            ablate=a.ablate,
            isolate=a.isolate if a.isolate is not None else not smoke,
        )


@dataclass
class RunSpec:
    """One training run: which side, method, model and optimisation flags."""

    size: str
    method: str
    side: str  # baseline | kubetune
    variant: str = "default"  # default | no-packing | unfused | ckpt-on
    packing: bool = True
    fused: bool = True
    checkpointing: str = "auto"  # auto (planner decides) | on | off
    micro_batch: int = 0


@dataclass
class RunResult:
    size: str
    method: str
    side: str
    variant: str
    status: str = "ok"  # ok | oom | skipped | error
    reason: str = ""
    timed_steps: int = 0
    real_tokens: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    padding_fraction: float | None = None
    mfu: float | None = None
    flops_per_token: float = 0.0
    peak_allocated_gib: float | None = None
    peak_reserved_gib: float | None = None
    device_peak_gib: float | None = None  # reserved + what the process holds outside torch
    rss_delta_gib: float | None = None
    predicted_peak_gib: float | None = None
    setup_seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- device
def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cuda": torch.cuda.is_available(),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": torch.cuda.get_device_name(0),
            "gpu_memory_gib": round(props.total_memory / GiB, 2),
            "cuda_runtime": torch.version.cuda,
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "bf16_peak_tflops": peak_tflops(torch.cuda.get_device_name(0)),
        }
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
            info["driver"] = out.splitlines()[0] if out else None
    return info


def peak_tflops(gpu_name: str) -> float:
    """Dense bf16 TFLOPS from the planner's GPU table (vendors' datasheets)."""
    from kubetune.planner.calibration import gpu_spec

    return float(gpu_spec(gpu_name).dense_tflops_16bit)


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "peft",
        "trl",
        "accelerate",
        "bitsandbytes",
        "datasets",
        "tokenizers",
        "liger-kernel",
        "flash-attn",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def device_label(info: dict[str, Any], smoke: bool) -> str:
    if not info["cuda"]:
        return "cpu-smoke" if smoke else "cpu"
    name = str(info["gpu"]).lower().replace("nvidia", "").strip()
    return "-".join(part for part in name.replace("_", " ").split() if part) + (
        "-smoke" if smoke else ""
    )


# ----------------------------------------------------------------------------- data
def _words(n: int, rng: random.Random) -> list[str]:
    syll = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(syll) for _ in range(rng.randint(1, 3))))
    return sorted(out)


def synthetic_rows(n: int, s: Settings) -> list[dict[str, Any]]:
    """Instruction chats whose token lengths follow a lognormal (median, sigma), clipped
    to the sequence length: about a third prompt, the rest the answer."""
    rng = random.Random(s.seed)
    vocab = _words(300 if s.smoke else 3000, rng)
    rows = []
    system = "You are a helpful assistant."
    cap = s.seq_len - 24  # room for the template's header tokens
    for _ in range(n):
        total = int(min(cap, max(8, round(rng.lognormvariate(math.log(s.median_len), s.sigma)))))
        prompt = max(2, total // 3)
        answer = max(2, total - prompt - 6)

        def text(k: int) -> str:
            return " ".join(rng.choice(vocab) for _ in range(k))

        rows.append(
            {
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": text(prompt)},
                    {"role": "assistant", "content": text(answer)},
                ]
            }
        )
    return rows


def build_tokenizer(rows: list[dict[str, Any]], directory: Path, vocab_size: int) -> Any:
    """A byte-level BPE trained in-process on the synthetic corpus (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = (m["content"] for r in rows[:2000] for m in r["messages"])
    tok.train_from_iterator(
        [*corpus, "system user assistant You are a helpful assistant."], trainer=trainer
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|pad|>",
        unk_token=None,
        model_max_length=1 << 20,
    )
    fast.chat_template = LLAMA3_TEMPLATE
    fast.save_pretrained(str(directory))
    return fast


def token_lengths(rows: list[dict[str, Any]], tokenizer: Any) -> list[int]:
    return [
        len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=False))
        for r in rows
    ]


def build_model(size: str, directory: Path, tokenizer: Any, cuda: bool) -> dict[str, Any]:
    """A randomly initialised (seed 0) Llama of `size`, saved in bf16 (fp32 on CPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = SIZES[size]
    config = LlamaConfig(
        **shape,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config)
        model.to(dtype)  # type: ignore[arg-type]  # transformers types .to as a wrapper
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return config.to_dict()


@dataclass
class Workspace:
    """What every run of one size shares: data file, tokenizer, model directory."""

    root: Path
    size: str
    model_dir: Path
    data_file: Path
    model_config: dict[str, Any]
    mean_len: float
    attn_context: float  # token-weighted mean example length

    @staticmethod
    def build(root: Path, size: str, s: Settings, cuda: bool) -> Workspace:
        n = max(256, 3 * s.micro_batch * (s.steps + s.warmup) + 64)
        rows = synthetic_rows(n, s)
        model_dir = root / f"model-{size}"
        model_dir.mkdir(parents=True, exist_ok=True)
        tok = build_tokenizer(rows, model_dir, 500 if s.smoke else 8000)
        lengths = token_lengths(rows, tok)
        data = root / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = build_model(size, model_dir, tok, cuda)
        return Workspace(
            root=root,
            size=size,
            model_dir=model_dir,
            data_file=data,
            model_config=cfg,
            mean_len=sum(lengths) / len(lengths),
            attn_context=sum(x * x for x in lengths) / sum(lengths),
        )


# ----------------------------------------------------------------------------- FLOPs
def flops_per_token(model_config: dict[str, Any], method: str, trainable: int, s: float) -> float:
    """6N (full) or 4N_frozen + 6N_trainable (adapters), plus attention 12 L h s."""
    h, layers = int(model_config["hidden_size"]), int(model_config["num_hidden_layers"])
    n = matmul_parameters(model_config)
    attention = 12 * layers * h * s
    if method == "full":
        return 6 * n + attention
    return 4 * n + 6 * trainable + attention


def matmul_parameters(c: dict[str, Any]) -> int:
    """Weights that take part in a matmul: every linear of every layer and the LM head."""
    h, i, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    hd = c.get("head_dim") or h // c["num_attention_heads"]
    q = c["num_attention_heads"] * hd
    kv = c["num_key_value_heads"] * hd
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i
    return int(layers * per_layer + h * c["vocab_size"])


# ----------------------------------------------------------------------------- planner
def planner_estimate(
    model_config: dict[str, Any],
    method: str,
    seq_len: int,
    micro_batch: int,
    checkpointing: bool,
    precision: str,
) -> Any:
    """The planner's per-GPU memory estimate (`kubetune.planner.memory.estimate`) for one
    GPU, no ZeRO, as `plan()` would compute it for this job."""
    from kubetune.api.spec import FineTuneJobSpec
    from kubetune.planner.architecture import from_config
    from kubetune.planner.memory import Strategy, estimate
    from kubetune.planner.methods import policy
    from kubetune.planner.shape import Request

    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"path": "/model"},
            "dataset": {"train": {"path": "/data.jsonl"}},
            "method": method,
            **({"lora": LORA} if method in ("lora", "qlora") else {}),
            "training": {"maxSeqLength": seq_len},
        }
    )
    arch = from_config(model_config)
    pol = policy(method)
    req = Request(arch, pol, spec, pol.trainable(arch, spec))
    return estimate(req.workload(precision, checkpointing, micro_batch), Strategy(0), 1, 1)


def trainable_parameters(model_config: dict[str, Any], method: str) -> int:
    from kubetune.api.spec import FineTuneJobSpec
    from kubetune.planner.architecture import from_config
    from kubetune.planner.methods import policy

    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"path": "/model"},
            "dataset": {"train": {"path": "/data.jsonl"}},
            "method": method,
            **({"lora": LORA} if method in ("lora", "qlora") else {}),
        }
    )
    return int(policy(method).trainable(from_config(model_config), spec))


# ----------------------------------------------------------------------------- memory
class MemoryProbe:
    """Peak memory of one run: CUDA allocator peaks, or the process's peak RSS delta."""

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base_alloc = torch.cuda.memory_allocated()
        else:
            _reset_hwm()
            self.base_rss = _status_kib("VmRSS")

    def read(self) -> dict[str, float | None]:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            reserved_now = torch.cuda.memory_reserved()
            # what the process holds outside PyTorch's allocator (context, cuBLAS workspace)
            outside = max(0, (total - free) - reserved_now)
            return {
                "peak_allocated_gib": (torch.cuda.max_memory_allocated() - self.base_alloc) / GiB,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / GiB,
                "device_peak_gib": (torch.cuda.max_memory_reserved() + outside) / GiB,
            }
        hwm = _status_kib("VmHWM")
        return {"rss_delta_gib": (hwm - self.base_rss) * 1024 / GiB if hwm else None}


def _status_kib(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_hwm() -> None:
    """Reset the peak RSS (Linux: writing 5 to clear_refs); harmless where unsupported."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


# ----------------------------------------------------------------------------- timing
def _timer_class() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time and real tokens between the end of step `warmup` and the last step."""

        def __init__(self, warmup: int) -> None:
            self.warmup = warmup
            self.t0 = self.t1 = 0.0
            self.tok0 = self.tok1 = 0
            self.losses: list[float] = []

        def _mark(self, state: Any) -> tuple[float, int]:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter(), int(state.num_input_tokens_seen)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == self.warmup:
                self.t0, self.tok0 = self._mark(state)
            if state.global_step == state.max_steps:
                self.t1, self.tok1 = self._mark(state)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                self.losses.append(round(float(logs["loss"]), 4))

    return StepTimer


class CountingCollator:
    """Wraps a collator to count real and padded token positions it hands out."""

    def __init__(self, inner: Any, pad_token_id: int) -> None:
        self.inner, self.pad = inner, pad_token_id
        self.real = self.total = 0

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.inner(features)
        ids = batch["input_ids"]
        self.total += int(ids.numel())
        mask = batch.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            self.real += int(mask.sum())
        else:
            self.real += int((ids != self.pad).sum())
        return batch

    @property
    def padding_fraction(self) -> float | None:
        return round(1 - self.real / self.total, 4) if self.total else None


# ----------------------------------------------------------------------------- runs
def _max_steps(s: Settings) -> int:
    return s.warmup + s.steps


def run_baseline(ws: Workspace, spec: RunSpec, s: Settings, out: Path) -> tuple[Any, Any, Any]:
    """The plain script: from_pretrained, LoraConfig, SFTTrainer with SFTConfig defaults."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(str(ws.model_dir))
    kwargs: dict[str, Any] = {}
    if spec.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        if cuda:
            kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(str(ws.model_dir), **kwargs)
    peft_config = (
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        if spec.method != "full"
        else None
    )
    args = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=spec.micro_batch,
        max_steps=_max_steps(s),
        max_length=s.seq_len,
        # measurement and housekeeping only
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not cuda,
        bf16=cuda,  # the SFTConfig default is bf16 on; CPU smoke runs stay fp32
        seed=s.seed,
    )
    timer = _timer_class()(s.warmup)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=load_dataset("json", data_files=str(ws.data_file), split="train"),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[timer],
    )
    counter = CountingCollator(trainer.data_collator, tokenizer.pad_token_id)
    trainer.data_collator = counter
    _quiet(trainer)
    settings = {
        "optim": str(args.optim),
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "packing": bool(args.packing),
        "padding_free": bool(args.padding_free),
        "bf16": bool(args.bf16),
        "model_dtype": str(next(model.parameters()).dtype),
        "micro_batch": spec.micro_batch,
    }
    return trainer, timer, (counter, settings)


def run_kubetune(ws: Workspace, spec: RunSpec, s: Settings, out: Path) -> tuple[Any, Any, Any]:
    """kubetune's trainer path: FineTuneRecipe.setup() on a TrainerConfig, then its trainer."""
    import torch

    from kubetune_trainer.callbacks import Preemption
    from kubetune_trainer.testing import make_config, make_plan
    from kubetune_trainer.train import FineTuneRecipe

    cuda = torch.cuda.is_available()
    precision = "bf16" if cuda else "fp32"
    ckpt = spec.checkpointing == "on"
    if spec.checkpointing == "auto":
        ckpt = needs_checkpointing(ws, spec, s, precision)
    job = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"bench-{spec.method}", "namespace": "bench"},
        "spec": {
            "model": {"path": str(ws.model_dir)},
            "dataset": {
                "train": {"path": str(ws.data_file)},
                "split": {"validation": 0.0, "test": 0.0},
            },
            "method": spec.method,
            **({"lora": LORA} if spec.method != "full" else {}),
            "training": {
                "epochs": 1,
                "maxSeqLength": s.seq_len,
                "packing": spec.packing,
                "warmupRatio": 0.0,
                "seed": s.seed,
            },
            "evaluation": {"strategy": "no", "compareBaseline": False},
        },
    }
    plan = make_plan(
        spec.method,
        microBatchSize=spec.micro_batch,
        gradientCheckpointing=ckpt,
        precision=precision,
        maxSeqLength=s.seq_len,
    )
    config = make_config(job, plan, out / "out", scratch_dir=out / "scratch")
    timer = _timer_class()(s.warmup)
    fused = spec.fused

    class BenchRecipe(FineTuneRecipe):
        """The recipe, with a step budget and no checkpoints, evaluation or reports."""

        def _training_args(self) -> Any:
            args = super()._training_args()
            args.max_steps = _max_steps(s)
            args.save_strategy = "no"
            args.report_to = []
            if not fused and str(args.optim).endswith("fused"):
                args.optim = "adamw_torch"
            return args

        def _build_trainer(self) -> Any:
            trainer = super()._build_trainer()
            trainer.add_callback(timer)
            return trainer

    recipe = BenchRecipe(config, Preemption())
    recipe.setup()
    trainer = recipe.trainer
    counter = CountingCollator(trainer.data_collator, recipe.tokenizer.pad_token_id)
    trainer.data_collator = counter
    _quiet(trainer)
    settings = {
        "optim": str(trainer.args.optim),
        "gradient_checkpointing": bool(recipe.gradient_checkpointing),
        "packing": spec.packing,
        "precision": recipe.precision,
        "model_dtype": str(next(recipe.model.parameters()).dtype),
        "micro_batch": spec.micro_batch,
        "checkpointing_choice": spec.checkpointing,
    }
    return trainer, timer, (counter, settings)


def _quiet(trainer: Any) -> None:
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def needs_checkpointing(ws: Workspace, spec: RunSpec, s: Settings, precision: str) -> bool:
    """The planner's rule: recompute only when the run does not fit without it."""
    import torch

    if not torch.cuda.is_available():
        return False
    budget = torch.cuda.get_device_properties(0).total_memory
    est = planner_estimate(
        ws.model_config, spec.method, s.seq_len, spec.micro_batch, False, precision
    )
    return bool(est.total > 0.92 * budget)


def run_one(ws: Workspace, spec: RunSpec, s: Settings) -> RunResult:
    """One training run in this process; never raises for OOM or bad combinations."""
    import torch

    res = RunResult(spec.size, spec.method, spec.side, spec.variant)
    if spec.method == "qlora" and not _bnb_ok():
        res.status, res.reason = "skipped", "bitsandbytes cannot run here"
        return res
    cuda = torch.cuda.is_available()
    precision = "bf16" if cuda else "fp32"
    if cuda:
        budget = torch.cuda.get_device_properties(0).total_memory
        best = planner_estimate(ws.model_config, spec.method, s.seq_len, 1, True, precision)
        if best.total > budget:
            res.status = "skipped"
            res.reason = (
                f"does not fit one GPU: planner predicts {best.total / GiB:.1f} GiB"
                f" > {budget / GiB:.1f} GiB even with checkpointing at micro-batch 1"
            )
            return res
    probe = MemoryProbe()
    started = time.perf_counter()
    trainer = None
    with tempfile.TemporaryDirectory(dir=ws.root) as tmp:
        try:
            build = run_baseline if spec.side == "baseline" else run_kubetune
            trainer, timer, (counter, settings) = build(ws, spec, s, Path(tmp))
            res.settings = settings
            res.setup_seconds = round(time.perf_counter() - started, 2)
            trainer.train()
            res.timed_steps = s.steps
            res.real_tokens = timer.tok1 - timer.tok0
            res.seconds = round(timer.t1 - timer.t0, 4)
            res.tokens_per_s = round(res.real_tokens / res.seconds, 2) if res.seconds else 0.0
            res.padding_fraction = counter.padding_fraction
            res.losses = timer.losses
            mem = probe.read()
            res.peak_allocated_gib = _r(mem.get("peak_allocated_gib"))
            res.peak_reserved_gib = _r(mem.get("peak_reserved_gib"))
            res.device_peak_gib = _r(mem.get("device_peak_gib"))
            res.rss_delta_gib = _r(mem.get("rss_delta_gib"))
            trainable = trainable_parameters(ws.model_config, spec.method)
            res.flops_per_token = flops_per_token(
                ws.model_config, spec.method, trainable, ws.attn_context
            )
            if cuda:
                peak = peak_tflops(torch.cuda.get_device_name(0)) * 1e12
                res.mfu = round(res.tokens_per_s * res.flops_per_token / peak, 4)
            if spec.side == "kubetune":
                est = planner_estimate(
                    ws.model_config,
                    spec.method,
                    s.seq_len,
                    spec.micro_batch,
                    bool(settings["gradient_checkpointing"]),
                    precision,
                )
                res.predicted_peak_gib = _r(est.total / GiB)
        except torch.OutOfMemoryError as err:
            res.status, res.reason = "oom", str(err).splitlines()[0][:200]
        except Exception as err:  # a broken combination is a row, not a crash
            res.status, res.reason = "error", f"{type(err).__name__}: {err}"[:300]
        finally:
            del trainer
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    return res


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _bnb_ok() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return True


def run_specs(s: Settings, size: str, ws: Workspace) -> list[RunSpec]:
    # kubetune's packed rows are seq_len tokens each; as many rows as the baseline's
    # micro-batch holds real tokens on average, so both steps see about the same tokens.
    packed_micro = max(1, round(s.micro_batch * ws.mean_len / s.seq_len))
    specs: list[RunSpec] = []
    for m in s.methods:
        specs.append(RunSpec(size, m, "baseline", micro_batch=s.micro_batch))
        specs.append(RunSpec(size, m, "kubetune", micro_batch=packed_micro))
        if s.ablate:
            specs += [
                RunSpec(size, m, "kubetune", "no-packing", False, micro_batch=s.micro_batch),
                RunSpec(size, m, "kubetune", "unfused", fused=False, micro_batch=packed_micro),
                RunSpec(
                    size, m, "kubetune", "ckpt-on", checkpointing="on", micro_batch=packed_micro
                ),
            ]
    return specs


def run_isolated(ws: Workspace, spec: RunSpec, s: Settings) -> RunResult:
    """The same run in a fresh interpreter, so allocator state never carries over."""
    payload = json.dumps({"workspace": _ws_dict(ws), "spec": asdict(spec), "settings": asdict(s)})
    env = os.environ | {"PYTHONPATH": _pythonpath()}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker"],
        input=payload,
        capture_output=True,
        text=True,
        env=env,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return RunResult(**json.loads(line[7:]))
    res = RunResult(spec.size, spec.method, spec.side, spec.variant, status="error")
    res.reason = f"worker exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
    return res


def _ws_dict(ws: Workspace) -> dict[str, Any]:
    d = asdict(ws)
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def _pythonpath() -> str:
    root = HERE.parent.parent
    parts = [str(root / "operator"), str(root / "trainer-image"), str(root)]
    return os.pathsep.join(
        parts + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    )


def worker() -> int:
    doc = json.loads(sys.stdin.read())
    w = doc["workspace"]
    ws = Workspace(
        **{
            **w,
            "root": Path(w["root"]),
            "model_dir": Path(w["model_dir"]),
            "data_file": Path(w["data_file"]),
        }
    )
    res = run_one(ws, RunSpec(**doc["spec"]), Settings(**doc["settings"]))
    print("RESULT " + json.dumps(asdict(res)), flush=True)
    return 0


# ----------------------------------------------------------------------------- report
def ratios(results: list[RunResult]) -> list[dict[str, Any]]:
    out = []
    by = {(r.size, r.method, r.side, r.variant): r for r in results}
    for r in results:
        if r.side != "kubetune":
            continue
        base = by.get((r.size, r.method, "baseline", "default"))
        if base is None or base.status != "ok" or r.status != "ok" or not base.tokens_per_s:
            continue
        mem_k = r.peak_reserved_gib if r.peak_reserved_gib is not None else r.rss_delta_gib
        mem_b = base.peak_reserved_gib if base.peak_reserved_gib is not None else base.rss_delta_gib
        out.append(
            {
                "size": r.size,
                "method": r.method,
                "variant": r.variant,
                "tokens_per_s_ratio": round(r.tokens_per_s / base.tokens_per_s, 3),
                "peak_memory_ratio": round(mem_k / mem_b, 3) if mem_k and mem_b else None,
            }
        )
    return out


def table(doc: dict[str, Any]) -> str:
    cuda = doc["device"]["cuda"]
    mem = "peak reserved GiB" if cuda else "RSS delta GiB"
    lines = [
        f"| size | method | side | variant | real tokens/s | MFU | {mem} | padding | ckpt | optim |"
        " ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rat = {(x["size"], x["method"], x["variant"]): x for x in doc["ratios"]}
    for r in doc["runs"]:
        if r["status"] != "ok":
            lines.append(
                f"| {r['size']} | {r['method']} | {r['side']} | {r['variant']} |"
                f" {r['status']}: {r['reason'][:80]} | | | | | | |"
            )
            continue
        m = r["peak_reserved_gib"] if cuda else r["rss_delta_gib"]
        ratio = rat.get((r["size"], r["method"], r["variant"])) if r["side"] == "kubetune" else None
        st = r["settings"]
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
        mem_s = "n/a" if m is None else f"{m:.2f}"
        pad = "" if r["padding_fraction"] is None else f"{r['padding_fraction']:.0%}"
        ckpt = "on" if st.get("gradient_checkpointing") else "off"
        optim = str(st.get("optim", "")).split(".")[-1].lower()
        rs = "" if ratio is None else f"**{ratio['tokens_per_s_ratio']:.2f}x**"
        lines.append(
            f"| {r['size']} | {r['method']} | {r['side']} | {r['variant']} |"
            f" {r['tokens_per_s']:,.0f} | {mfu} | {mem_s} | {pad} | {ckpt} | {optim} | {rs} |"
        )
    return "\n".join(lines)


def update_readme(doc: dict[str, Any], path: Path = README) -> None:
    """Replace this result's block inside the "GPU throughput" section (others untouched)."""
    label = doc["label"]
    begin, end = f"<!-- gpu-bench:{label}:begin -->", f"<!-- gpu-bench:{label}:end -->"
    smoke = " — **smoke run on CPU: checks the machinery, not a performance figure**"
    heading = (
        f"### {label}{smoke if doc['kind'] == 'smoke' else ''}\n\n"
        f"{doc['date']}, {doc['device'].get('gpu') or 'CPU'}"
        f"{', driver ' + str(doc['device'].get('driver')) if doc['device'].get('driver') else ''};"
        f" torch {doc['versions']['torch']}, transformers {doc['versions']['transformers']},"
        f" peft {doc['versions']['peft']}, trl {doc['versions']['trl']}."
        f" {doc['settings']['steps']} timed steps after {doc['settings']['warmup']} warm-up,"
        f" maxSeqLength {doc['settings']['seq_len']}, baseline micro-batch"
        f" {doc['settings']['micro_batch']}, lengths lognormal(median"
        f" {doc['settings']['median_len']}, sigma {doc['settings']['sigma']}).\n"
        f" Raw: `benchmarks/gpu/results/{label}.json`.\n\n"
    )
    block = f"{begin}\n{heading}{table(doc)}\n{end}"
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if SECTION not in text:
        intro = (
            f"\n{SECTION}\n\n`benchmarks/gpu/bench.py` (how to run, formulas and what is and is"
            " not measured: `benchmarks/gpu/README.md`).\n\n"
        )
        text = text.rstrip("\n") + "\n" + intro
    head, _, rest = text.partition(SECTION)
    # this section runs until the next "## " heading
    nxt = rest.find("\n## ")
    body, tail = (rest, "") if nxt < 0 else (rest[:nxt], rest[nxt:])
    if begin in body:
        pre, _, after = body.partition(begin)
        _, _, post = after.partition(end)
        body = pre + block + post
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(head + SECTION + body.rstrip("\n") + "\n" + tail)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU, seconds")
    p.add_argument("--sizes", default="1b,3b,8b")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=0, help="timed optimizer steps (20; smoke 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (5; smoke 1)")
    p.add_argument("--seq-len", type=int, default=0, help="maxSeqLength (2048; smoke 128)")
    p.add_argument("--micro-batch", type=int, default=0, help="baseline micro-batch (8; smoke 4)")
    p.add_argument("--median-len", type=int, default=0, help="median example tokens (350)")
    p.add_argument("--sigma", type=float, default=0.8, help="lognormal sigma of lengths")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ablate", action="store_true", help="also kubetune minus each optimisation")
    iso = p.add_mutually_exclusive_group()
    iso.add_argument(
        "--isolate",
        dest="isolate",
        action="store_true",
        default=None,
        help="each run in a fresh process (default on GPU)",
    )
    iso.add_argument("--in-process", dest="isolate", action="store_false")
    p.add_argument("--workdir", default="", help="models and data (default: a temp dir)")
    p.add_argument("--out", default="", help="results JSON (default results/<device>.json)")
    p.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        sys.exit(worker())
    s = Settings.from_args(a)
    import datasets
    import torch

    datasets.disable_progress_bars()

    if not torch.cuda.is_available() and not s.smoke:
        p.error("no CUDA device: run with --smoke on a CPU")
    if torch.cuda.is_available() and s.smoke:
        s.isolate = a.isolate if a.isolate is not None else False
    info = device_info()
    label = device_label(info, s.smoke)
    results: list[RunResult] = []
    with contextlib.ExitStack() as stack:
        root = (
            Path(a.workdir)
            if a.workdir
            else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        )
        for size in s.sizes:
            ws = Workspace.build(root / size, size, s, info["cuda"])
            for spec in run_specs(s, size, ws):
                r = run_isolated(ws, spec, s) if s.isolate else run_one(ws, spec, s)
                print(
                    f"{size} {spec.method} {spec.side}/{spec.variant}: {r.status}"
                    f" {r.tokens_per_s:,.0f} tok/s {r.reason}",
                    flush=True,
                )
                results.append(r)
    doc = {
        "kind": "smoke" if s.smoke else "benchmark",
        "note": (
            "smoke run: tiny model on a shared CPU; checks the machinery, not a performance claim"
            if s.smoke
            else ""
        ),
        "label": label,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": info,
        "versions": versions(),
        "settings": {k: v for k, v in asdict(s).items() if k != "workdir"},
        "formulas": {
            "mfu": "tokens_per_s * flops_per_token / bf16_peak",
            "flops_per_token_full": "6*N + 12*L*h*s",
            "flops_per_token_adapters": "4*N_frozen + 6*N_trainable + 12*L*h*s",
            "N": "matmul weights: all decoder linears + LM head (input embedding excluded)",
            "s": "token-weighted mean example length",
        },
        "runs": [asdict(r) for r in results],
    }
    doc["ratios"] = ratios(results)
    out = Path(a.out) if a.out else RESULTS / f"{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(table(doc))
    print(f"results: {out}")
    if not a.no_readme:
        update_readme(doc)
    return doc


if __name__ == "__main__":
    main()
