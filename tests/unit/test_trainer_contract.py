"""The trainer side of the operator contract: config loading, exit codes, the
termination summary, progress reports, DeepSpeed/accelerate configs, checkpoints."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.status import EvalMetrics, EvaluationStatus, OutputStatus, Progress
from kubetune.capabilities import CAPABILITIES
from kubetune.contract import ExitCode, ProgressReport, TerminationSummary
from kubetune_trainer import checkpoints, evaluation, termination
from kubetune_trainer.config import dump_config, load_config
from kubetune_trainer.distributed import World, accelerate_config, deepspeed_config
from kubetune_trainer.failures import BadInput, NaNLoss, classify
from kubetune_trainer.methods import METHODS, get_method
from kubetune_trainer.progress import ProgressReporter
from kubetune_trainer.testing import make_config, make_plan

JOB = """
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: demo, namespace: team}
spec:
  model: {path: /models/tiny}
  dataset: {train: {path: /data/train.jsonl}}
  method: lora
"""


# ------------------------------------------------------------------ config
def test_config_roundtrip(tmp_path: Path) -> None:
    cfg = make_config(JOB, make_plan("lora"), tmp_path / "out")
    path = dump_config(cfg, tmp_path / "cfg.yaml")
    loaded = load_config(path)
    assert loaded == cfg
    assert loaded.job.namespace == "team"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("version: 2\n", "version 2"),
        ("- a list\n", "must be a mapping"),
        ("{version: 1, job: {}}\n", "invalid at"),
        ("a: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_is_bad_input(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(content)
    with pytest.raises(BadInput, match=needle):
        load_config(path)


def test_missing_config_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="--config"):
        load_config(tmp_path / "nope.yaml")


# ------------------------------------------------------------------ exit codes
class _DataError(Exception):
    exit_code = 2


@pytest.mark.parametrize(
    ("err", "code", "reason"),
    [
        (BadInput("x"), ExitCode.BAD_INPUT, "BadInput"),
        (_DataError("train.jsonl:7: not JSON"), ExitCode.BAD_INPUT, "BadInput"),
        (NaNLoss("nan"), ExitCode.NAN_LOSS, "NaNLoss"),
        (RuntimeError("CUDA out of memory. Tried to allocate"), ExitCode.OOM, "OutOfMemory"),
        (MemoryError(), ExitCode.OOM, "OutOfMemory"),
        (ConnectionError("reset"), ExitCode.RETRYABLE, "Retryable"),
        (ValueError("boom"), ExitCode.ERROR, "Error"),
    ],
)
def test_classify(err: Exception, code: ExitCode, reason: str) -> None:
    got_code, got_reason, message = classify(err)
    assert (got_code, got_reason) == (code, reason)
    assert message


# ------------------------------------------------------------------ termination log
def test_termination_summary_fits_4k_and_parses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    huge = TerminationSummary(
        exit_code=2,
        reason="BadInput",
        message="train.jsonl:3: bad row " + "x" * 10000,
        progress=Progress(step=3, loss=float("nan")),
        evaluation=EvaluationStatus(
            baseline=EvalMetrics(loss=1.0, exact_match=0.5),
            final=EvalMetrics(loss=float("nan")),
            per_epoch=[EvalMetrics(loss=float(i), epoch=float(i)) for i in range(300)],
            passed=True,
        ),
        output=OutputStatus(adapter="/out/adapter", report="/very/long/path/" * 10),
        data={f"d{i}": i for i in range(200)},
    )
    target = tmp_path / "termination-log"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(target))
    assert termination.write_termination_log(huge) == target
    raw = target.read_bytes()
    assert len(raw) <= 4096
    parsed = TerminationSummary.model_validate_json(raw)
    assert parsed.exit_code == 2 and parsed.message.startswith("train.jsonl:3: bad row")
    assert termination.read_termination_log() == parsed
    # the least needed parts went first; the output paths and the verdict stayed
    assert not parsed.data and parsed.output == huge.output
    assert parsed.evaluation is not None and parsed.evaluation.passed is True
    assert parsed.evaluation.final is None or parsed.evaluation.final.loss is None


def test_small_summary_is_unchanged() -> None:
    s = TerminationSummary(
        exit_code=0, reason="Completed", progress=Progress(step=3, loss=1.5), data={"train": 3}
    )
    assert TerminationSummary.model_validate_json(termination.render(s)) == s


def test_unwritable_log_does_not_raise(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert termination.write_termination_log(TerminationSummary(), blocker / "x") is None


# ------------------------------------------------------------------ progress
class _Sink(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Sink.received.append((self.headers.get("Authorization", ""), json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_progress_posts_with_token_and_rate_limit(tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    _Sink.received = []
    reporter = ProgressReporter(
        f"http://127.0.0.1:{server.server_port}/progress", str(token), interval_seconds=0.5
    )
    for step in range(50):  # a burst: coalesced, not 50 posts
        reporter.submit(ProgressReport(namespace="ns", name="j", step=step, peak_memory_gi_b=1.5))
        time.sleep(0.01)
    reporter.close()
    server.shutdown()
    assert 1 <= len(_Sink.received) <= 4
    auth, body = _Sink.received[-1]
    assert auth == "Bearer secret-token"
    assert body["step"] == 49 and body["peakMemoryGiB"] == 1.5


def test_progress_never_blocks_on_a_dead_endpoint() -> None:
    reporter = ProgressReporter(
        "http://10.255.255.1:9/x", None, interval_seconds=0.2, timeout_seconds=0.2
    )
    started = time.monotonic()
    for step in range(100):
        reporter.submit(ProgressReport(namespace="ns", name="j", step=step))
    assert time.monotonic() - started < 0.5  # submit is non-blocking
    reporter.close()
    assert time.monotonic() - started < 3
    assert reporter.sent == 0


def test_progress_callback_reports_the_last_loss_and_evaluating() -> None:
    """The operator shows the report as status.message and turns `evaluating` into the
    Evaluating phase; logs without a training loss (evaluation, end of run) keep the last."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from kubetune.api.phases import TrainerPhase
    from kubetune_trainer.callbacks import ProgressCallback

    class Sink:
        reports: list[ProgressReport] = []

        def submit(self, report: ProgressReport) -> None:
            self.reports.append(report)

    sink = Sink()
    cb = ProgressCallback(sink, "ns", "j", attempt=2)  # type: ignore[arg-type]
    state = TrainerState(max_steps=10)
    args, control = TrainingArguments(output_dir="/tmp/unused"), TrainerControl()
    cb.on_train_begin(args, state, control)
    state.global_step = 5
    cb.on_log(args, state, control, logs={"loss": 1.5})
    state.global_step = 10
    cb.on_log(args, state, control, logs={"eval_loss": 1.2})
    cb.evaluating()
    first, second, third = sink.reports
    assert (first.loss, second.loss, third.loss) == (1.5, 1.5, 1.5)
    assert [r.phase for r in sink.reports] == [
        TrainerPhase.TRAINING,
        TrainerPhase.TRAINING,
        TrainerPhase.EVALUATING,
    ]
    assert third.step == 10 and third.attempt == 2


# ------------------------------------------------------------------ distributed configs
def test_world_from_env_and_plan() -> None:
    plan = make_plan("full", nodes=2, gpusPerNode=4)
    w = World.from_env(plan, {"NODE_RANK": "1", "MASTER_ADDR": "job-0.job", "MASTER_PORT": "1234"})
    assert (w.nnodes, w.node_rank, w.nproc_per_node, w.total) == (2, 1, 4, 8)
    acc = accelerate_config(plan, w, cuda=True)
    assert acc["machine_rank"] == 1 and acc["num_processes"] == 8
    assert acc["main_process_ip"] == "job-0.job" and acc["distributed_type"] == "MULTI_GPU"
    with pytest.raises(BadInput):
        World.from_env(plan, {"NODE_RANK": "5"})


@pytest.mark.parametrize(
    ("stage", "offload", "opt", "param"),
    [
        (2, "none", False, False),
        (2, "optimizer", True, False),
        (3, "none", False, False),
        (3, "optimizer+parameters", True, True),
    ],
)
def test_deepspeed_config(stage: int, offload: str, opt: bool, param: bool) -> None:
    plan = make_plan("full", zeroStage=stage, offload=offload, precision="bf16")
    ds = deepspeed_config(plan, cuda=True)
    assert ds is not None
    json.dumps(ds)  # serialisable
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == opt
    assert ("offload_param" in zero) == param
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["train_micro_batch_size_per_gpu"] == "auto"
    if stage == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True


def test_deepspeed_refuses_impossible_offload() -> None:
    assert deepspeed_config(make_plan("lora"), cuda=True) is None
    with pytest.raises(BadInput, match="ZeRO-3"):
        deepspeed_config(make_plan("full", zeroStage=2, offload="optimizer+parameters"), True)
    with pytest.raises(BadInput, match="needs DeepSpeed"):
        deepspeed_config(make_plan("full", offload="optimizer"), True)


# ------------------------------------------------------------------ methods
def test_registry_covers_every_planned_method() -> None:
    assert set(METHODS) == set(CAPABILITIES)
    assert get_method("lora").capability.default_learning_rate == 2e-4
    with pytest.raises(BadInput, match="auto"):
        get_method("auto")


@pytest.mark.parametrize(
    ("method", "plan", "needle"),
    [
        ("qlora", {"zeroStage": 2}, "ZeRO-2"),
        ("qlora", {"zeroStage": 3, "offload": "optimizer"}, "offload"),
        ("prompt-tuning", {"zeroStage": 2}, "ZeRO-2"),
        ("lora", {"zeroStage": 3, "offload": "optimizer+parameters"}, "offload"),
        ("full", {"zeroStage": 2, "offload": "optimizer+parameters"}, "needs ZeRO-3"),
        ("full", {"offload": "optimizer"}, "needs DeepSpeed"),
        ("prefix-tuning", {"gradientCheckpointing": True}, "recompute"),
    ],
)
def test_unsupported_combinations_are_bad_input(
    method: str, plan: dict[str, Any], needle: str
) -> None:
    cfg = make_config(
        JOB.replace("method: lora", f"method: {method}"), make_plan(method, **plan), "/tmp/x"
    )
    with pytest.raises(BadInput, match=needle):
        get_method(method).validate(cfg.spec, cfg.plan)


@pytest.mark.trainer
def test_peft_configs_build() -> None:
    cfg = make_config(
        JOB.replace(
            "method: lora",
            "method: lora\n  lora: {useDora: true, "
            "useRslora: true, targetModules: [q_proj, v_proj]}",
        ),
        make_plan("lora"),
        "/tmp/x",
    )
    lora = get_method("lora").peft_config(cfg.spec, "/tok")
    assert lora.use_dora and lora.use_rslora and set(lora.target_modules) == {"q_proj", "v_proj"}
    default = get_method("lora").peft_config(make_config(JOB, make_plan("lora"), "/x").spec, "/t")
    assert default.target_modules == "all-linear"
    assert get_method("ia3").peft_config(cfg.spec, "/t") is not None
    assert get_method("prefix-tuning").peft_config(cfg.spec, "/t").num_virtual_tokens == 20


# ------------------------------------------------------------------ checkpoints
def _ckpt(root: Path, step: int, complete: bool = True) -> Path:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    if complete:
        (d / "trainer_state.json").write_text("{}")
    return d


def test_latest_ignores_incomplete_and_staging(tmp_path: Path) -> None:
    _ckpt(tmp_path, 10)
    _ckpt(tmp_path, 30, complete=False)
    (tmp_path / checkpoints.STAGING / "checkpoint-40").mkdir(parents=True)
    latest = checkpoints.latest(tmp_path)
    assert latest is not None and latest.step == 10
    removed = checkpoints.clean_incomplete(tmp_path)
    assert {p.name for p in removed} == {"checkpoint-30", checkpoints.STAGING}


def test_rotate_keeps_last_k_and_best(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40, 50):
        _ckpt(tmp_path, step)
    checkpoints.rotate(tmp_path, keep=2, best=tmp_path / "checkpoint-20")
    assert sorted(c.step for c in checkpoints.list_complete(tmp_path)) == [20, 40, 50]


def test_publish_is_a_rename(tmp_path: Path) -> None:
    staged = _ckpt(tmp_path / checkpoints.STAGING, 5)
    final = checkpoints.publish(staged, tmp_path)
    assert final == tmp_path / "checkpoint-5" and not staged.exists()


# ------------------------------------------------------------------ evaluation maths
def test_task_metrics() -> None:
    m = evaluation.task_metrics(
        ["RC-4", " gs-1 ", "X"], ["RC-4", "GS-1", "Y"], ["exactMatch", "rougeL", "accuracy"]
    )
    assert m["exactMatch"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert 0.6 < m["rougeL"] <= 1


def test_forgetting_gate() -> None:
    assert evaluation.forgetting(10.0, 10.2, 3.0)["passed"]
    failed = evaluation.forgetting(10.0, 10.5, 3.0)
    assert not failed["passed"] and failed["increasePercent"] == pytest.approx(5.0)


def test_overfitting_signal() -> None:
    history: list[dict[str, Any]] = []
    train, val = 2.0, 1.5
    for step in range(1, 7):
        train -= 0.2
        val = val - 0.1 if step < 3 else val + 0.1
        history += [{"loss": train, "step": step}, {"eval_loss": val, "step": step}]
    found = evaluation.overfitting(history, window=2)
    assert found is not None and found["detected"] and found["sinceStep"] == 4
    assert evaluation.overfitting(history[:6], window=2) is None


def test_exitcodes_module_reexports_the_contract() -> None:
    """One source of truth: the data pipeline's exit codes are the operator's ExitCode."""
    from kubetune_trainer import exitcodes
    from kubetune_trainer.data.errors import EXIT_CODE

    assert exitcodes.ExitCode is ExitCode
    assert exitcodes.OK is ExitCode.OK and exitcodes.BAD_INPUT is ExitCode.BAD_INPUT
    assert exitcodes.FAILURE is ExitCode.ERROR and EXIT_CODE == ExitCode.BAD_INPUT
