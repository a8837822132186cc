"""Real training on the CPU: a tiny locally built Llama learns a description → code task.

Every method must beat the base model's exact match on held-out rows; the launcher's
two-process (gloo) run must behave like one process; a SIGKILLed run must resume from
its last complete checkpoint; corrupted data must exit BAD_INPUT naming file and line.
Sizes are tuned to stay within about a minute per test on two shared cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune.contract import ExitCode, TerminationSummary
from kubetune_trainer import checkpoints
from kubetune_trainer.config import dump_config
from kubetune_trainer.testing import make_config, make_plan
from tests.fixtures.tiny_model import build_tiny_llama, build_tiny_tokenizer, make_instruction_rows

pytestmark = pytest.mark.trainer
REPO = Path(__file__).resolve().parents[2]


def task_rows() -> list[dict[str, Any]]:
    """128 distinct rows: 32 items (8 colours x 4 shapes, size large) x 4 phrasings.

    Test rows ask about items seen in training under another phrasing: learnable by a
    2-layer model in a few hundred steps, impossible for the untrained base.
    """
    shapes = ("circle", "square", "triangle", "star")
    return [
        r
        for r in make_instruction_rows(1024)
        if "large" in r["messages"][1]["content"]
        and any(s in r["messages"][1]["content"] for s in shapes)
    ]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("base")
    tok = build_tiny_tokenizer(root / "tok")
    model = build_tiny_llama(root / "model", tok)
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in task_rows()))
    return {"model": model, "data": data}


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


def run_trainer(
    config_path: Path,
    tmp: Path,
    command: str = "train",
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> tuple[int, Any]:
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
    proc = subprocess.run(
        [sys.executable, "-m", "kubetune_trainer", command, "--config", str(config_path)],
        env=environment,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    summary = TerminationSummary.model_validate_json(log.read_bytes()) if log.exists() else None
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:])
    return proc.returncode, summary


METHODS = [
    # method, learning rate, epochs, spec extras
    ("full", 1e-2, 30, {}),
    ("lora", 2e-2, 30, {"lora": {"r": 16, "alpha": 32, "dropout": 0.0}}),
    ("qlora", 2e-2, 30, {"lora": {"r": 16, "alpha": 32, "dropout": 0.0}}),
    ("prompt-tuning", 1e-1, 30, {"promptTuning": {"numVirtualTokens": 8}}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "lr", "epochs", "extra"), METHODS, ids=[m[0] for m in METHODS])
def test_method_beats_baseline(
    base: dict[str, Path],
    tmp_path: Path,
    method: str,
    lr: float,
    epochs: int,
    extra: dict[str, Any],
) -> None:
    cfg = make_config(
        job(base, method, epochs, extra), make_plan(method, learningRate=lr), tmp_path / "out"
    )
    code, summary = run_trainer(dump_config(cfg, tmp_path / "cfg.json"), tmp_path)
    assert code == 0, summary
    assert summary is not None and summary.reason == "Completed"
    baseline = summary.evaluation["baseline"]
    final = summary.evaluation["final"]
    assert isinstance(baseline, dict) and isinstance(final, dict)
    print(
        f"{method}: exactMatch {baseline['exactMatch']:.3f} -> {final['exactMatch']:.3f}, "
        f"loss {baseline['loss']:.3f} -> {final['loss']:.3f}, "
        f"tokens/s {summary.metrics.get('tokens_per_second', 0):.0f}"
    )
    assert final["loss"] < baseline["loss"]
    assert final["exactMatch"] >= baseline["exactMatch"] + 0.2
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


@pytest.mark.slow
def test_two_processes_through_the_launcher(base: dict[str, Path], tmp_path: Path) -> None:
    plan = make_plan("lora", learningRate=2e-2, gpusPerNode=2, microBatchSize=4)
    cfg = make_config(
        job(base, "lora", 30, {"lora": {"r": 16, "alpha": 32, "dropout": 0.0}}),
        plan,
        tmp_path / "out",
    )
    port = 29500 + os.getpid() % 1000
    code, summary = run_trainer(
        dump_config(cfg, tmp_path / "cfg.json"),
        tmp_path,
        "launch",
        env={"MASTER_PORT": str(port)},
        timeout=420,
    )
    assert code == 0, summary
    assert summary is not None and summary.reason == "Completed"
    final, baseline = summary.evaluation["final"], summary.evaluation["baseline"]
    assert isinstance(final, dict) and isinstance(baseline, dict)
    print(f"2 procs: exactMatch {baseline['exactMatch']:.3f} -> {final['exactMatch']:.3f}")
    assert final["exactMatch"] >= baseline["exactMatch"] + 0.2
    # two ranks split the batches: half the optimizer steps of one process
    assert summary.step is not None and summary.total_steps == summary.step


@pytest.mark.slow
def test_sigkill_then_resume(base: dict[str, Path], tmp_path: Path) -> None:
    spec = job(
        base,
        "lora",
        6,
        {"lora": {"r": 8, "alpha": 16}},
        training={"checkpoint": {"everySteps": 4, "keep": 2}},
    )
    spec["spec"]["evaluation"]["compareBaseline"] = False
    cfg = make_config(spec, make_plan("lora", learningRate=1e-2), tmp_path / "out")
    path = dump_config(cfg, tmp_path / "cfg.json")
    root = tmp_path / "out" / "checkpoints"
    env = os.environ | {"KUBETUNE_TERMINATION_LOG": str(tmp_path / "log1"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetune_trainer", "train", "--config", str(path)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        done = checkpoints.list_complete(root)
        if done and done[-1].step >= 8:
            break
        time.sleep(0.2)
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
