"""Start the training processes of this node: `python -m kubetune_trainer launch --config F`.

This is the pod's entry process. It first works out the launch (`plan_launch`, pure): the
process layout from the plan and the rendezvous env, the DeepSpeed config the plan's
ZeRO stage and offload call for, and whether the base loads in 4 bits. `--dry-run`
prints exactly that as JSON and exits (2, with the reason, when the config would be
refused). Otherwise: one process in total trains in this process (under DeepSpeed as a
world of one when the plan has ZeRO); several (GPUs per node, or nodes) run
`accelerate launch ... train`, after a worker has waited for the master's DNS name, with
SIGTERM forwarded, exiting with the code the trainer recorded in the termination log —
torchrun itself turns every failure into exit 1, which would hide OOM or bad input. A rank
killed by a signal records nothing; torchrun's failure report on stderr names it, and
that becomes the summary ("rank 1 (local rank 1) killed by signal 9 (SIGKILL)").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kubetune.api.spec import QLoRASpec
from kubetune.api.trainer_config import TrainerConfig
from kubetune.contract import ExitCode, TerminationSummary, killed_by

from .config import load_config
from .distributed import (
    World,
    accelerate_config,
    deepspeed_config,
    load_dtype,
    mixed_precision,
    plan_capability,
    wait_for_master,
    write_json,
)
from .failures import BadInput, classify
from .termination import read_termination_log, termination_log_path, write_termination_log

log = logging.getLogger("kubetune_trainer.launch")

ENV_WAIT_MASTER = "KUBETUNE_WAIT_MASTER_SECONDS"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="trainer config file (default $KUBETUNE_CONFIG)")
    parser.add_argument(
        "--wait-master-seconds",
        type=float,
        default=float(os.environ.get(ENV_WAIT_MASTER, 300)),
        help="how long a worker waits for the master's DNS name (default 300)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the launch (command, process layout, DeepSpeed config) as JSON and run"
        " nothing; exit 2 with the reason when the config would be refused",
    )


def hardware() -> tuple[bool, bool, int]:
    """(CUDA available, bf16 supported, GPUs visible) on this node."""
    try:
        import torch
    except ImportError:  # pragma: no cover - the image always has torch
        return False, False, 0
    cuda = bool(torch.cuda.is_available())
    return cuda, cuda and bool(torch.cuda.is_bf16_supported()), torch.cuda.device_count()


@dataclass(frozen=True)
class Launch:
    """How this node runs its part of the plan: what `--dry-run` prints, `run` executes."""

    world: World
    method: str
    zero_stage: int
    offload: str
    precision: str
    """accelerate's mixed precision: bf16, fp16 or no (fp32)."""
    load_dtype: str
    """The dtype the base model loads in."""
    quantisation: dict[str, Any] | None
    """The 4-bit base (bitsandbytes) settings, None for a 16/32-bit base."""
    deepspeed: dict[str, Any] | None
    accelerate: dict[str, Any] | None
    """accelerate's config for a multi-process launch; None in-process."""
    command: list[str]
    """What runs the training: `accelerate launch ... train`, or this process itself."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of the training processes."""

    @property
    def in_process(self) -> bool:
        return self.world.total == 1

    def describe(self) -> dict[str, Any]:
        """The dry run's JSON document."""
        w = self.world
        return {
            "method": self.method,
            "processes": {
                "nodes": w.nnodes,
                "perNode": w.nproc_per_node,
                "total": w.total,
                "nodeRank": w.node_rank,
                "masterAddr": w.master_addr,
                "masterPort": w.master_port,
                "mode": "in-process" if self.in_process else "accelerate",
            },
            "zeroStage": self.zero_stage,
            "offload": self.offload,
            "deepspeed": self.deepspeed is not None,
            "precision": self.precision,
            "loadDtype": self.load_dtype,
            "quantisation": self.quantisation,
            "command": self.command,
            "env": self.env,
            "deepspeedConfig": self.deepspeed,
            "accelerateConfig": self.accelerate,
        }


def plan_launch(
    config_path: str,
    config: TrainerConfig,
    world: World,
    cuda: bool,
    bf16: bool = True,
    gpus: int | None = None,
) -> Launch:
    """The launch for this node, or BadInput when the trainer would refuse the config.

    Pure: the same (config, world, hardware) always gives the same launch. `gpus` is the
    number of GPUs this node shows (None: not checked).
    """
    from .methods import get_method

    plan = config.plan
    method = get_method(plan.method)
    method.validate(config.spec, plan)
    if plan.micro_batch_size < 1 or plan.gradient_accumulation_steps < 1:
        raise BadInput("plan.microBatchSize and plan.gradientAccumulationSteps must be >= 1")
    if (world.nnodes, world.nproc_per_node) != (plan.nodes, plan.gpus_per_node):
        raise BadInput(
            f"this pod's world is {world.nnodes} node(s) x {world.nproc_per_node} process(es)"
            f" (NNODES, NPROC_PER_NODE) but the plan has {plan.nodes} x {plan.gpus_per_node};"
            " the Job and its config were not rendered from the same plan"
        )
    if cuda and gpus is not None and gpus < world.nproc_per_node:
        raise BadInput(
            f"the plan runs {world.nproc_per_node} processes per node but this node shows"
            f" {gpus} GPU(s); check the pod's nvidia.com/gpu request"
        )
    ds = deepspeed_config(plan, cuda)
    cap = plan_capability(plan)
    dtype = load_dtype(plan, cuda, bf16)
    quant = None
    if cap.quantised_base:
        q = config.spec.qlora or QLoRASpec()
        quant = {
            "bits": 4,
            "quantType": q.quant_type,
            "doubleQuant": q.double_quant,
            "computeDtype": q.compute_dtype,
            # ZeRO-3 shards the packed 4-bit weights, stored in the model's dtype.
            "storage": dtype if plan.zero_stage == 3 else "uint8",
        }
    precision = mixed_precision(plan, cuda, bf16)
    train = [sys.executable, "-m", "kubetune_trainer", "train", "--config", config_path]
    if world.total == 1:
        # DeepSpeed needs a process group even for a world of one.
        env = world.rendezvous_env() if ds is not None else {}
        return Launch(
            world,
            plan.method,
            plan.zero_stage,
            plan.offload,
            precision,
            dtype,
            quant,
            ds,
            None,
            train,
            env,
        )
    acc = accelerate_config(plan, world, cuda)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "accelerate.json",  # written next to the launch record (see `write_files`)
        "--num_processes",
        str(world.total),
        "--num_machines",
        str(world.nnodes),
        "--machine_rank",
        str(world.node_rank),
        "--main_process_ip",
        world.master_addr,
        "--main_process_port",
        str(world.master_port),
        "--mixed_precision",
        precision,
        "--dynamo_backend",
        "no",
        "--multi_gpu",
        *train[1:],
    ]
    return Launch(
        world, plan.method, plan.zero_stage, plan.offload, precision, dtype, quant, ds, acc, command
    )


def write_files(launch: Launch, workdir: Path) -> list[str]:
    """Write accelerate.json and deepspeed.json (a record of the run) under `workdir` and
    return the command with the accelerate config's real path."""
    if launch.deepspeed is not None:
        write_json(workdir / "deepspeed.json", launch.deepspeed)
    if launch.accelerate is None:
        return launch.command
    acc = write_json(workdir / "accelerate.json", launch.accelerate)
    return [str(acc) if part == "accelerate.json" else part for part in launch.command]


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = load_config(args.config)
        config_path = str(args.config or os.environ.get("KUBETUNE_CONFIG", ""))
        world = World.from_env(config.plan)
        cuda, bf16, gpus = hardware()
        launch = plan_launch(config_path, config, world, cuda, bf16, gpus)
    except Exception as err:
        code, reason, message = classify(err)
        if args.dry_run:
            print(f"kubetune_trainer launch: refused: {message}", file=sys.stderr)
            return int(code)
        write_termination_log(TerminationSummary(exit_code=code, reason=reason, message=message))
        print(f"kubetune_trainer launch: {message}", file=sys.stderr)
        return int(code)
    if args.dry_run:
        print(json.dumps(launch.describe(), indent=2))
        return 0
    try:
        command = write_files(launch, Path(config.paths.scratch_dir) / "launch")
        if launch.in_process:
            from .train import run_training

            os.environ.update(launch.env)
            return run_training(config)
        if world.node_rank > 0:
            waited = wait_for_master(world.master_addr, args.wait_master_seconds)
            log.info("master %s resolved after %.1fs", world.master_addr, waited)
    except Exception as err:
        code, reason, message = classify(err)
        write_termination_log(TerminationSummary(exit_code=code, reason=reason, message=message))
        print(f"kubetune_trainer launch: {message}", file=sys.stderr)
        return int(code)
    return supervise(command, launch.env)


ROOT_CAUSE = re.compile(
    r"Root Cause \(first observed failure\):\s*\[\d+\]:.*?"
    r"rank\s*:\s*(?P<rank>\d+) \(local_rank: (?P<local>\d+)\)\s*"
    r"exitcode\s*:\s*(?P<code>-?\d+)",
    re.S,
)
"""The first failed process in torchrun's failure report (torch.distributed.elastic's
ChildFailedError, which `accelerate launch` prints on stderr as it exits)."""


def killed_rank(launcher_stderr: str) -> str | None:
    """ "rank 1 (local rank 1) killed by signal 9 (SIGKILL)" when the first process to fail
    died of a signal; None otherwise. A killed process writes no summary, and the rank 0
    summary that follows (torchrun's SIGTERM to the others reads as a preemption) would
    blame the wrong cause."""
    found = ROOT_CAUSE.search(launcher_stderr)
    killed = killed_by(int(found["code"])) if found else None
    if found is None or killed is None:
        return None
    return f"rank {found['rank']} (local rank {found['local']}) {killed}"


def supervise(command: list[str], extra_env: dict[str, str]) -> int:
    """Run the launch in its own process group, forward SIGTERM/SIGINT, map the result."""
    log_path = termination_log_path()
    # A stale summary from an earlier run in this container must not be read back.
    with contextlib.suppress(OSError):
        log_path.unlink(missing_ok=True)
    log.info("launching: %s", " ".join(command))
    child = subprocess.Popen(
        command, env=os.environ | extra_env, start_new_session=True, stderr=subprocess.PIPE
    )
    assert child.stderr is not None
    tail: deque[bytes] = deque(maxlen=TAIL_LINES)
    tee = threading.Thread(target=_tee, args=(child.stderr, tail), daemon=True)
    tee.start()
    forwarded: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    returncode = child.wait()
    tee.join(timeout=10)  # a grandchild may still hold the pipe; the report came before
    summary = read_termination_log(log_path)
    cause = None if forwarded else killed_rank(b"".join(tail).decode(errors="replace"))
    if cause is not None:
        base = summary or TerminationSummary()
        summary = base.model_copy(
            update={"exit_code": ExitCode.RETRYABLE, "reason": "Killed", "message": cause}
        )
        write_termination_log(summary, log_path)
        return int(ExitCode.RETRYABLE)
    if summary is not None:
        return summary.exit_code
    code = ExitCode.OK if returncode == 0 else ExitCode.ERROR
    killed = killed_by(returncode)
    write_termination_log(
        TerminationSummary(
            exit_code=code,
            reason="Completed" if code == ExitCode.OK else "Error",
            message=""
            if code == ExitCode.OK
            else f"the launcher was {killed}"
            if killed
            else f"trainer processes exited with {returncode} without a summary; see the pod log",
        ),
        log_path,
    )
    return int(code)


TAIL_LINES = 400
"""Launcher stderr lines kept for the failure report (the pod log has all of them)."""


def _tee(pipe: IO[bytes], tail: deque[bytes]) -> None:
    """Copy the launcher's stderr to ours (the pod log), keeping the last lines."""
    out = sys.stderr.buffer
    for line in iter(pipe.readline, b""):
        tail.append(line)
        with contextlib.suppress(OSError, ValueError):
            out.write(line)
            out.flush()
