"""Start the training processes of this node: `python -m kubetune_trainer launch --config F`.

This is the pod's entry process. One process: train in-process. Several (GPUs per node,
or nodes): write the accelerate (and DeepSpeed) config from the plan, wait until the
master's DNS name resolves (worker pods), run `accelerate launch ... train`, forward
SIGTERM to it, and exit with the code the trainer recorded in the termination log —
torchrun itself turns every failure into exit 1, which would hide OOM or bad input. A rank
killed by a signal records nothing; torchrun's failure report on stderr names it, and
that becomes the summary ("rank 1 (local rank 1) killed by signal 9 (SIGKILL)").
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import IO

from kubetune.api.trainer_config import TrainerConfig
from kubetune.contract import ExitCode, TerminationSummary, killed_by

from .config import load_config
from .distributed import World, accelerate_config, deepspeed_config, wait_for_master, write_json
from .failures import classify
from .termination import read_termination_log, termination_log_path, write_termination_log

log = logging.getLogger("kubetune_trainer.launch")

ENV_WAIT_MASTER = "KUBETUNE_WAIT_MASTER_SECONDS"
DEEPSPEED_CONFIG_ENV = "KUBETUNE_DEEPSPEED_CONFIG"
"""Set for the trainer processes when the plan uses ZeRO: the ds config file to use."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="trainer config file (default $KUBETUNE_CONFIG)")
    parser.add_argument(
        "--wait-master-seconds",
        type=float,
        default=float(os.environ.get(ENV_WAIT_MASTER, 300)),
        help="how long a worker waits for the master's DNS name (default 300)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the launch command and configs, run nothing"
    )


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - the image always has torch
        return False


def build_command(
    config_path: str, config: TrainerConfig, world: World, workdir: Path, cuda: bool
) -> tuple[list[str], dict[str, str]]:
    """The accelerate launch command for this node and the extra env of its processes."""
    acc = write_json(workdir / "accelerate.json", accelerate_config(config.plan, world, cuda))
    env: dict[str, str] = {}
    ds = deepspeed_config(config.plan, cuda)
    if ds is not None:
        env[DEEPSPEED_CONFIG_ENV] = str(write_json(workdir / "deepspeed.json", ds))
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(acc),
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
        accelerate_config(config.plan, world, cuda)["mixed_precision"],
        "--dynamo_backend",
        "no",
        "--multi_gpu",
        "-m",
        "kubetune_trainer",
        "train",
        "--config",
        config_path,
    ]
    return command, env


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = load_config(args.config)
        config_path = str(args.config or os.environ.get("KUBETUNE_CONFIG", ""))
        world = World.from_env(config.plan)
        if world.total == 1 and not args.dry_run:
            from .train import run_training

            return run_training(config)
        cuda = cuda_available()
        workdir = Path(config.paths.scratch_dir) / "launch"
        command, extra_env = build_command(config_path, config, world, workdir, cuda)
        if args.dry_run:
            print(" ".join(command))
            return 0
        if world.node_rank > 0:
            waited = wait_for_master(world.master_addr, args.wait_master_seconds)
            log.info("master %s resolved after %.1fs", world.master_addr, waited)
    except Exception as err:
        code, reason, message = classify(err)
        write_termination_log(TerminationSummary(exit_code=code, reason=reason, message=message))
        print(f"kubetune_trainer launch: {message}", file=sys.stderr)
        return int(code)
    return supervise(command, extra_env)


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
