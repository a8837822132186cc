"""Real training on the CPU: a tiny pre-trained Llama learns a chat-format task.

The `prose` base (`tests.fixtures.tiny_model.cached_tiny_base`, built once and cached)
knows every item's code and can answer the questions in prose, but not in the chat
format: its exact match on the held-out test rows is 0. Full, LoRA and QLoRA must teach it
the task in chat. Prompt tuning, prefix tuning and IA3 only steer what a frozen base
already does (on a 2-layer model they learn the format but not the lookup), so they run
on the `chat` base, which answers in chat with a sentence ("GH-2 is the code.", exact
match 0) and must learn to give the bare code. Every method must beat its baseline by a
wide margin; the launcher's two-process (gloo) run must behave like one process; a
SIGKILLed run must resume from its last complete checkpoint; corrupted data must exit
BAD_INPUT naming file and line. Sizes keep each test within about 30 s on two shared
cores.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.contract import ExitCode, TerminationSummary
from kubetune_trainer import checkpoints
from kubetune_trainer.config import dump_config, load_config
from kubetune_trainer.testing import make_config, make_plan
from tests.fixtures.tiny_model import BaseVariant, cached_tiny_base, make_instruction_rows
from tests.waits import Stalled, tail, tree_state, wait_progress

pytestmark = pytest.mark.trainer
REPO = Path(__file__).resolve().parents[2]
GATHER_PROBE = REPO / "tests/fixtures/gather_probe"
MARGIN = 0.3
"""How far above the base model's exact match a tuned model must land."""
LORA = {"lora": {"r": 16, "alpha": 32, "dropout": 0.0}}
VIRTUAL = {"promptTuning": {"numVirtualTokens": 16}}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 task rows (of 512 item x phrasing pairs): the held-out test rows ask about items
    under phrasings the fine-tune never saw."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_instruction_rows(400, seed=1)))
    return path


@pytest.fixture(scope="module")
def base(data: Path) -> dict[str, Path]:
    """The cached `prose` base and the task rows."""
    return {"model": cached_tiny_base(), "data": data}


def base_for(variant: BaseVariant, data: Path) -> dict[str, Path]:
    return {"model": cached_tiny_base(variant=variant), "data": data}


def job(
    base: dict[str, Path],
    method: str,
    epochs: float,
    extra: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"t-{method}", "namespace": "test"},
        "spec": {
            "model": {"path": str(base["model"])},
            "dataset": {
                "train": {"path": str(base["data"])},
                "split": {"validation": 0.1, "test": 0.15},
            },
            "method": method,
            **(extra or {}),
            "training": {
                "epochs": epochs,
                "maxSeqLength": 128,
                "warmupRatio": 0.05,
                **(training or {}),
            },
            "evaluation": {"maxNewTokens": 8, "maxTestSamples": 40},
        },
    }


TORCH_EXTENSIONS = Path(
    os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions")
)
"""Where DeepSpeed compiles its CPU ops on a first run: minutes without a log line, but
object files appear as it goes."""
STALL = 240.0
"""Seconds a trainer may go without writing a log line or a file before a test gives up
(tests.waits: a slow machine only makes runs longer, not silent)."""


def run_trainer(
    config_path: Path,
    tmp: Path,
    command: str = "train",
    env: dict[str, str] | None = None,
    stall: float = STALL,
) -> tuple[int, TerminationSummary | None]:
    log = tmp / "termination-log"
    environment = (
        os.environ
        | {
            "KUBETUNE_TERMINATION_LOG": str(log),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        | (env or {})
    )
    out, err = tmp / f"{command}.stdout", tmp / f"{command}.stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune_trainer", command, "--config", str(config_path)],
            env=environment,
            cwd=REPO,
            stdout=stdout,
            stderr=stderr,
        )
        output_dir = Path(load_config(str(config_path)).paths.output_dir)
        follow(proc, f"kubetune_trainer {command}", [out, err], output_dir, stall)
    summary = TerminationSummary.model_validate_json(log.read_bytes()) if log.exists() else None
    if proc.returncode != 0:
        print(tail(out), tail(err, 6000))
    return proc.returncode, summary


def follow(
    proc: subprocess.Popen[bytes],
    what: str,
    logs: list[Path],
    output_dir: Path,
    stall: float = STALL,
    ready: Callable[[], bool] = lambda: False,
) -> None:
    """Wait until the process exits (or `ready()`), failing only when neither its logs nor
    its output directory changed for `stall` seconds; a stalled process is killed."""

    def state() -> tuple[object, ...]:
        sizes = (p.stat().st_size if p.exists() else -1 for p in logs)
        return (*sizes, tree_state(output_dir, TORCH_EXTENSIONS))

    try:
        wait_progress(
            lambda: proc.poll() is not None or ready(),
            state,
            what,
            stall,
            describe=lambda seen: f"{seen}\n" + "\n".join(tail(p) for p in logs),
        )
    except Stalled:
        proc.kill()
        proc.wait()
        raise


def scores(summary: TerminationSummary | None) -> dict[str, Any]:
    """The summary's evaluation in its wire form (baseline/final metric maps, camelCase)."""
    assert summary is not None and summary.evaluation is not None, summary
    return summary.evaluation.to_k8s()


def start_trainer(
    spec: dict[str, Any], tmp_path: Path
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Start `train` for a LoRA job without the baseline (to be signalled mid-run): the
    process, its config path and its checkpoint root. Its summary goes to tmp_path/log1,
    its output to tmp_path/train1.log."""
    spec["spec"]["evaluation"]["compareBaseline"] = False
    cfg = make_config(spec, make_plan("lora", learningRate=3e-3), tmp_path / "out")
    path = dump_config(cfg, tmp_path / "cfg.json")
    env = os.environ | {"KUBETUNE_TERMINATION_LOG": str(tmp_path / "log1"), "OMP_NUM_THREADS": "1"}
    with (tmp_path / "train1.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune_trainer", "train", "--config", str(path)],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, path, tmp_path / "out" / "checkpoints"


def wait_while_running(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], tmp_path: Path
) -> None:
    """Until `ready()` or the process of `start_trainer` exits, following its progress."""
    follow(proc, "kubetune_trainer train", [tmp_path / "train1.log"], tmp_path / "out", ready=ready)


METHODS = [
    # base, method, learning rate, epochs, spec extras (plans: micro-batch 16, one process)
    pytest.param("prose", "full", 3e-3, 4, {}, id="full"),
    pytest.param("prose", "lora", 3e-3, 4, LORA, id="lora"),
    pytest.param("prose", "qlora", 3e-3, 4, LORA, id="qlora"),
    pytest.param(
        "prose",
        "lora",
        3e-3,
        4,
        {"lora": {"r": 16, "alpha": 32, "useDora": True, "useRslora": True}},
        id="dora-rslora",
    ),
    pytest.param("chat", "prompt-tuning", 3e-1, 6, VIRTUAL, id="prompt-tuning"),
    pytest.param("chat", "prefix-tuning", 3e-2, 4, VIRTUAL, id="prefix-tuning"),
    pytest.param("chat", "ia3", 3e-2, 4, {}, id="ia3"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "method", "lr", "epochs", "extra"), METHODS)
def test_method_beats_baseline(
    data: Path,
    tmp_path: Path,
    variant: BaseVariant,
    method: str,
    lr: float,
    epochs: int,
    extra: dict[str, Any],
) -> None:
    plan = make_plan(method, learningRate=lr, microBatchSize=16)
    cfg = make_config(job(base_for(variant, data), method, epochs, extra), plan, tmp_path / "out")
    code, summary = run_trainer(dump_config(cfg, tmp_path / "cfg.json"), tmp_path)
    assert code == 0, summary
    assert summary is not None and summary.reason == "Completed"
    baseline = scores(summary)["baseline"]
    final = scores(summary)["final"]
    assert isinstance(baseline, dict) and isinstance(final, dict)
    print(
        f"{method}: exactMatch {baseline['exactMatch']:.3f} -> {final['exactMatch']:.3f}, "
        f"loss {baseline['loss']:.3f} -> {final['loss']:.3f}, "
        f"tokens/s {(summary.progress and summary.progress.tokens_per_second) or 0:.0f}"
    )
    assert final["loss"] < baseline["loss"]
    assert final["exactMatch"] >= baseline["exactMatch"] + MARGIN
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["final"]["metrics"]["exactMatch"] == final["exactMatch"]
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert "| exactMatch |" in (out / "README.md").read_text()
    saved = out / ("model" if method == "full" else "adapter")
    assert (saved / "tokenizer_config.json").is_file()
    assert (saved / "chat_template.jinja").is_file() or "chat_template" in (
        saved / "tokenizer_config.json"
    ).read_text()
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))
    if "lora" in extra:  # the adapter is the one the spec asked for
        adapter = json.loads((saved / "adapter_config.json").read_text())
        asked = extra["lora"]
        assert adapter["r"] == asked["r"] and adapter["lora_alpha"] == asked["alpha"]
        assert adapter["use_dora"] == asked.get("useDora", False)
        assert adapter["use_rslora"] == asked.get("useRslora", False)


def test_corrupted_dataset_is_bad_input(base: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = base["data"].read_text().splitlines()
    lines[6] = '{"messages": [ broken'
    lines[9] = "not json at all"
    bad.write_text("\n".join(lines) + "\n")
    spec = job(base, "lora", 1)
    spec["spec"]["dataset"]["train"]["path"] = str(bad)
    spec["spec"]["dataset"]["maxBadFraction"] = 0.0
    cfg = make_config(spec, make_plan("lora"), tmp_path / "out")
    code, summary = run_trainer(dump_config(cfg, tmp_path / "cfg.json"), tmp_path)
    assert code == ExitCode.BAD_INPUT
    assert summary is not None and summary.reason == "BadInput"
    assert "bad.jsonl:7" in summary.message
    raw = (tmp_path / "termination-log").read_bytes()
    assert len(raw) <= 4096 and json.loads(raw)["exitCode"] == 2


UNREADABLE = [
    # Before: exit 1 and a retry (DatasetGenerationError), and "rows have keys [none]". The
    # other undecodable files take the parquet case's path (tests/unit/test_data_sources.py).
    pytest.param("train.parquet", r"train\.parquet: not a Parquet file", id="parquet-not-parquet"),
    pytest.param("lines.jsonl", r"lines\.jsonl:1: line 1 is not valid JSON", id="not-json-lines"),
]


@pytest.mark.parametrize(("name", "says"), UNREADABLE)
def test_unreadable_data_exits_bad_input_naming_the_file(
    base: dict[str, Path], tmp_path: Path, name: str, says: str
) -> None:
    """Data whose bytes are not what its name says stops the trainer with BAD_INPUT (never
    retried) and the file and line, through the whole trainer as a pod runs it."""
    bad = tmp_path / name
    text = base["data"].read_bytes()
    bad.write_bytes(b"question: what is GH-2?\nanswer: the code\n" if "lines" in name else text)
    spec = job({**base, "data": bad}, "lora", 1)
    cfg = make_config(spec, make_plan("lora"), tmp_path / "out")
    code, summary = run_trainer(dump_config(cfg, tmp_path / "cfg.json"), tmp_path)
    assert code == ExitCode.BAD_INPUT, summary
    assert summary is not None and summary.reason == "BadInput"
    assert re.search(says, summary.message), summary.message


@pytest.mark.slow
def test_two_processes_through_the_launcher(base: dict[str, Path], tmp_path: Path) -> None:
    # two ranks of micro-batch 8: the same global batch (16) as the one-process runs
    plan = make_plan("lora", learningRate=3e-3, gpusPerNode=2, microBatchSize=8)
    assert plan.global_batch_size == 16
    cfg = make_config(job(base, "lora", 4, LORA), plan, tmp_path / "out")
    port = 29500 + os.getpid() % 1000
    code, summary = run_trainer(
        dump_config(cfg, tmp_path / "cfg.json"),
        tmp_path,
        "launch",
        env={"MASTER_PORT": str(port)},
    )
    assert code == 0, summary
    assert summary is not None and summary.reason == "Completed"
    final, baseline = scores(summary)["final"], scores(summary)["baseline"]
    assert isinstance(final, dict) and isinstance(baseline, dict)
    print(f"2 procs: exactMatch {baseline['exactMatch']:.3f} -> {final['exactMatch']:.3f}")
    assert final["exactMatch"] >= baseline["exactMatch"] + MARGIN
    assert summary.step is not None and summary.total_steps == summary.step
    # one summary, from rank 0, and the report of a two-rank run
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["plan"]["gpusPerNode"] == 2 and report["steps"] == summary.step
    raw = (tmp_path / "termination-log").read_bytes()
    assert len(raw) <= 4096 and json.loads(raw)["exitCode"] == 0


RANK_KILLED = """
import json, os, signal, sys, time
rank = int(os.environ["RANK"])
if rank == 1:
    time.sleep(2)
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or `kill -9` would
def preempted(*_):  # what the trainer's rank 0 writes when torchrun stops it with SIGTERM
    summary = {"exitCode": 6, "reason": "Preempted", "message": "SIGTERM at step 3", "step": 3}
    open(os.environ["KUBETUNE_TERMINATION_LOG"], "w").write(json.dumps(summary))
    sys.exit(6)
signal.signal(signal.SIGTERM, preempted)
time.sleep(120)
"""


def test_the_launcher_names_a_rank_killed_by_a_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real `accelerate launch` (torchrun's report of the first failure): rank 1
    SIGKILLed is the cause, not rank 0's preemption that follows, nor a log line."""
    from kubetune_trainer.launch import supervise

    script = tmp_path / "worker.py"
    script.write_text(RANK_KILLED)
    log = tmp_path / "termination-log"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    port = str(29500 + (os.getpid() + 7) % 1000)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
    command += ["--num_machines", "1", "--main_process_ip", "127.0.0.1"]
    command += ["--main_process_port", port, "--multi_gpu", str(script)]
    code = supervise(command, {"OMP_NUM_THREADS": "1"})
    summary = TerminationSummary.model_validate_json(log.read_bytes())
    assert code == ExitCode.RETRYABLE == summary.exit_code
    assert summary.reason == "Killed"
    assert summary.message == "rank 1 (local rank 1) killed by signal 9 (SIGKILL)"
    assert summary.step == 3  # what rank 0 knew is kept


@pytest.mark.slow
def test_sigkill_then_resume(base: dict[str, Path], tmp_path: Path) -> None:
    spec = job(
        base,
        "lora",
        4,
        {"lora": {"r": 8, "alpha": 16}},
        training={"checkpoint": {"everySteps": 4, "keep": 2}},
    )
    proc, path, root = start_trainer(spec, tmp_path)

    def two_checkpoints() -> bool:
        done = checkpoints.list_complete(root)
        return bool(done) and done[-1].step >= 8

    wait_while_running(proc, two_checkpoints, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoints.latest(root)
    assert killed_at is not None and killed_at.step >= 8, "no checkpoint before the kill"
    # a half-written checkpoint left by the kill must be ignored
    (root / checkpoints.STAGING / "checkpoint-999").mkdir(parents=True, exist_ok=True)
    code, summary = run_trainer(path, tmp_path)
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["resumedFrom"] and report["resumedFrom"].endswith(f"-{killed_at.step}")
    # The history restored from the checkpoint plus this attempt's steps: each step once,
    # so the run continued at killed_at.step + 1 instead of restarting at 1.
    steps = [e["step"] for e in report["logHistory"] if "loss" in e]
    assert steps == list(range(1, steps[-1] + 1))
    assert summary is not None and summary.step == summary.total_steps
    assert not (root / checkpoints.STAGING).exists()
    assert len(checkpoints.list_complete(root)) <= 3  # last 2 + best


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_then_resumes(base: dict[str, Path], tmp_path: Path) -> None:
    """Preemption: SIGTERM mid-epoch, with no periodic checkpoint due, still leaves a
    complete checkpoint at the step reached, exits PREEMPTED, and the next run resumes
    there."""
    # 8 epochs (~150 steps, 15 s or more): long enough that the signal lands mid-training
    spec = job(base, "lora", 8, LORA, training={"checkpoint": {"everySteps": 1000, "keep": 2}})
    proc, path, root = start_trainer(spec, tmp_path)
    # Training has started once TensorBoard has an event file (on_train_begin); let it
    # take a few steps.
    wait_while_running(
        proc,
        lambda: any((tmp_path / "out" / "tensorboard").rglob("events.out.tfevents*")),
        tmp_path,
    )
    time.sleep(2)
    assert proc.poll() is None, "the run ended before it could be preempted"
    proc.send_signal(signal.SIGTERM)
    wait_while_running(proc, lambda: False, tmp_path)  # saving a checkpoint, then exiting
    assert proc.returncode == ExitCode.PREEMPTED
    summary = TerminationSummary.model_validate_json((tmp_path / "log1").read_bytes())
    assert summary.reason == "Preempted"
    saved = checkpoints.latest(root)
    assert saved is not None and saved.step > 0, "no checkpoint written on SIGTERM"
    code, final = run_trainer(path, tmp_path)
    assert code == 0 and final is not None and final.step == final.total_steps
    assert final.total_steps is not None and saved.step < final.total_steps
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["resumedFrom"].endswith(f"-{saved.step}")


ZERO = [
    # stage, offload, resume from a ZeRO checkpoint as well
    pytest.param(2, "none", False, id="zero2"),
    pytest.param(3, "none", True, id="zero3"),
    pytest.param(3, "optimizer+parameters", False, id="zero3-offload"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "offload", "resume"), ZERO)
def test_deepspeed_zero_on_cpu(
    base: dict[str, Path], tmp_path: Path, stage: int, offload: str, resume: bool
) -> None:
    """Real DeepSpeed engines (gloo, fp32) through the launcher, as the GPU path runs them.

    The first run on a machine JIT-compiles DeepSpeed's CPU ops (shm comm, and cpu_adam
    for offload) into ~/.cache/torch_extensions: 1-2 minutes each, once.
    """
    plan = make_plan(
        "full",
        learningRate=3e-3,
        gpusPerNode=2,
        microBatchSize=8,
        zeroStage=stage,
        offload=offload,
    )
    spec = job(base, "full", 4, training={"checkpoint": {"keep": 4}})
    out = tmp_path / "out"
    path = dump_config(make_config(spec, plan, out), tmp_path / "cfg.json")
    env = {"MASTER_PORT": str(29500 + (os.getpid() + stage) % 1000)}
    gathers = tmp_path / "gathers"
    gathers.mkdir()
    # Every rank records the most parameters it ever gathered whole at once.
    env |= {
        "PYTHONPATH": os.pathsep.join([str(GATHER_PROBE), os.environ.get("PYTHONPATH", "")]),
        "KUBETUNE_GATHER_PROBE": str(gathers),
    }
    code, summary = run_trainer(path, tmp_path, "launch", env=env)
    assert code == 0, summary
    assert summary is not None and summary.reason == "Completed"
    final, baseline = scores(summary)["final"], scores(summary)["baseline"]
    assert isinstance(final, dict) and isinstance(baseline, dict)
    print(
        f"ZeRO-{stage} offload {offload}: exactMatch {baseline['exactMatch']:.3f} ->"
        f" {final['exactMatch']:.3f}, loss {baseline['loss']:.3f} -> {final['loss']:.3f}"
    )
    assert final["loss"] < baseline["loss"]
    assert final["exactMatch"] >= baseline["exactMatch"] + MARGIN
    report = json.loads((out / "report.json").read_text())
    assert report["plan"]["zeroStage"] == stage and report["plan"]["offload"] == offload
    written = json.loads((out / ".scratch" / "launch" / "deepspeed.json").read_text())
    ds = written["zero_optimization"]
    assert ds["stage"] == stage
    assert ("offload_param" in ds) == (offload == "optimizer+parameters")
    # The DeepSpeed engine saved its own layout: one optimizer partition per rank, and
    # under ZeRO-3 one parameter partition per rank too.
    latest = checkpoints.latest(out / "checkpoints")
    assert latest is not None and latest.step == summary.step
    shards = {p.name for p in (latest.path / f"global_step{latest.step}").iterdir()}
    per_rank = ["optim_states"] + (["model_states"] if stage == 3 else [])
    assert {f"zero_pp_rank_{r}_mp_rank_00_{kind}.pt" for r in (0, 1) for kind in per_rank} <= shards
    assert (out / "model" / "model.safetensors").stat().st_size > 100_000  # gathered weights
    if stage == 3:
        # The baseline is scored through the engine, a layer at a time: no rank ever holds
        # the whole model (main gathered every parameter on every rank to score it).
        from safetensors import safe_open

        with safe_open(str(out / "model" / "model.safetensors"), "pt") as weights:
            total = sum(math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())  # noqa: SIM118
        most = [json.loads(p.read_text())["elements"] for p in gathers.glob("*.json")]
        print(f"ZeRO-3: at most {max(most):,} of {total:,} parameters gathered at once")
        assert most and 0 < max(most) < total / 2
    if not resume:
        return
    # Resume halfway: drop the later checkpoints; the engine must reload its shards and
    # land where the uninterrupted run did.
    done = checkpoints.list_complete(out / "checkpoints")
    middle = done[len(done) // 2 - 1]
    for c in done:
        if c.step > middle.step:
            shutil.rmtree(c.path)
    code, again = run_trainer(path, tmp_path, "launch", env=env)
    assert code == 0 and again is not None, again
    report = json.loads((out / "report.json").read_text())
    assert report["resumedFrom"].endswith(f"checkpoint-{middle.step}")
    steps = [e["step"] for e in report["logHistory"] if "loss" in e]
    assert steps == list(range(1, summary.step + 1))
    resumed = scores(again)["final"]
    assert isinstance(resumed, dict)
    print(f"resumed from step {middle.step}: loss {resumed['loss']:.4f} vs {final['loss']:.4f}")
    assert resumed["loss"] == pytest.approx(final["loss"], rel=0.02)


def test_diverging_run_stops_with_nan_loss(base: dict[str, Path], tmp_path: Path) -> None:
    """A learning rate so large the weights overflow fp32 after one step (1e6 is not enough:
    RMSNorm keeps the loss finite): the run stops at the first NaN/Inf loss with exit code
    NAN_LOSS (not retried: the same data and settings would do it again)."""
    spec = job(base, "full", 2)
    spec["spec"]["evaluation"]["compareBaseline"] = False
    cfg = make_config(spec, make_plan("full", learningRate=1e30), tmp_path / "out")
    code, summary = run_trainer(dump_config(cfg, tmp_path / "cfg.json"), tmp_path)
    assert code == ExitCode.NAN_LOSS
    assert summary is not None and summary.reason == "NaNLoss"
    assert "step" in summary.message
    assert summary.step is not None and summary.total_steps is not None
    assert summary.step < summary.total_steps  # stopped early, did not train on


GRID_LAYOUTS = [
    # method, ZeRO stage, offload, processes: layouts the seam grid plans, on the CPU
    pytest.param("full", 2, "optimizer", 1, id="full-zero2-offload-1-process"),
    pytest.param("qlora", 3, "none", 2, id="qlora-zero3-2-processes"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "stage", "offload", "processes"), GRID_LAYOUTS)
def test_grid_layouts_train_through_the_launcher(
    base: dict[str, Path], tmp_path: Path, method: str, stage: int, offload: str, processes: int
) -> None:
    """Layouts the planner produces in tests/unit/test_seam_grid.py, trained for real on
    the tiny model through `launch` with the layout's plan fields: the dry run says it
    will run them, and the DeepSpeed engine then did (its per-rank checkpoint files). A
    one-process plan with ZeRO ran without DeepSpeed on main; QLoRA under ZeRO-3 (4-bit
    weights stored in the model's dtype) was refused."""
    from kubetune.planner import PlanRefused, plan
    from tests.unit.test_planner_helpers import arch
    from tests.unit.test_seam_grid import ARCHS, POOLS, job_spec

    planned = None
    for model in ARCHS:
        for gpus in POOLS.values():
            for nodes in (1, 2):
                try:
                    p = plan(job_spec(method, nodes, gpus.gpus_per_node), arch(model), [gpus])
                except PlanRefused:
                    continue
                if (p.zero_stage, p.offload, p.total_gpus == 1) == (stage, offload, processes == 1):
                    planned = planned or p
    assert planned is not None, f"the grid plans no {method} ZeRO-{stage} {offload}"
    cpu = make_plan(
        method,
        zeroStage=planned.zero_stage,
        offload=planned.offload,
        gpusPerNode=processes,
        microBatchSize=16 // processes,
        learningRate=3e-3,
    )
    out = tmp_path / "out"
    extra = LORA if method == "qlora" else {}
    path = dump_config(make_config(job(base, method, 1, extra), cpu, out), tmp_path / "cfg.json")
    env = {"MASTER_PORT": str(29500 + (os.getpid() + 7 * stage) % 1000)}
    dry = subprocess.run(
        [sys.executable, "-m", "kubetune_trainer", "launch", "--config", str(path), "--dry-run"],
        env=os.environ | env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr
    said = json.loads(dry.stdout)
    assert (said["zeroStage"], said["offload"], said["processes"]["total"]) == (
        stage,
        offload,
        processes,
    )
    assert said["deepspeed"] and (said["quantisation"] is not None) == (method == "qlora")
    code, summary = run_trainer(path, tmp_path, "launch", env=env)
    assert code == 0, summary
    assert summary is not None and summary.reason == "Completed"
    ev = summary.evaluation
    assert ev is not None and ev.final is not None and ev.baseline is not None
    print(
        f"{method} ZeRO-{stage} {offload} x{processes}: loss {ev.baseline.loss} -> {ev.final.loss}"
    )
    assert ev.final.loss is not None and ev.baseline.loss is not None
    assert ev.final.loss < ev.baseline.loss
    # The DeepSpeed engine wrote the checkpoint: one optimizer partition per rank.
    latest = checkpoints.latest(out / "checkpoints")
    assert latest is not None
    shards = {p.name for p in (latest.path / f"global_step{latest.step}").iterdir()}
    assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(processes)} <= shards
    ds = json.loads((out / ".scratch" / "launch" / "deepspeed.json").read_text())
    assert ds["zero_optimization"]["stage"] == stage
    assert ("offload_optimizer" in ds["zero_optimization"]) == (offload != "none")
