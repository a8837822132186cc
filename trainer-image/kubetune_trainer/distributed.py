"""The process layout of a run and the accelerate / DeepSpeed configs written from the plan.

One pod per node (Job completion index = NODE_RANK), one process per GPU. DeepSpeed
is enabled through `TrainingArguments.deepspeed` with the config `deepspeed_config`
derives from the plan (the recipe derives it itself, so no process can run without the
ZeRO layout its plan names), and the launch is accelerate's torchrun path: the same
command with and without ZeRO, on GPUs (NCCL) and on CPUs (gloo).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune import contract
from kubetune.api.status import Plan
from kubetune.capabilities import Capability, UnknownMethod, capability

from .failures import BadInput, Retryable


@dataclass(frozen=True)
class World:
    """Where this node sits in the run."""

    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int

    @property
    def total(self) -> int:
        return self.nnodes * self.nproc_per_node

    def rendezvous_env(self) -> dict[str, str]:
        """What torchrun would set for a world of one process: DeepSpeed joins a process
        group even alone, and finds it through these."""
        return {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_WORLD_SIZE": "1",
            contract.ENV_MASTER_ADDR: "127.0.0.1",
            contract.ENV_MASTER_PORT: str(self.master_port),
        }

    @staticmethod
    def from_env(plan: Plan, env: dict[str, str] | None = None) -> World:
        """The env the operator sets, defaulting to the plan's shape (one node: localhost)."""
        e = os.environ if env is None else env

        def integer(name: str, default: int) -> int:
            value = e.get(name, "")
            try:
                return int(value) if value else default
            except ValueError:
                raise BadInput(f"env {name}={value!r} is not an integer") from None

        world = World(
            nnodes=integer(contract.ENV_NNODES, plan.nodes),
            node_rank=integer(contract.ENV_NODE_RANK, 0),
            nproc_per_node=integer(contract.ENV_NPROC_PER_NODE, plan.gpus_per_node),
            master_addr=e.get(contract.ENV_MASTER_ADDR, "127.0.0.1"),
            master_port=integer(contract.ENV_MASTER_PORT, contract.DEFAULT_MASTER_PORT),
        )
        if not 0 <= world.node_rank < world.nnodes:
            raise BadInput(f"NODE_RANK {world.node_rank} is outside 0..{world.nnodes - 1}")
        if world.nproc_per_node < 1:
            raise BadInput(f"NPROC_PER_NODE must be >= 1, got {world.nproc_per_node}")
        return world


@dataclass(frozen=True)
class Rank:
    """This process's ranks, as torchrun sets them (a lone process is rank 0 of 1)."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @staticmethod
    def from_env() -> Rank:
        return Rank(
            rank=int(os.environ.get("RANK", 0)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )


def wait_for_master(addr: str, timeout_s: float, poll_s: float = 2.0) -> float:
    """Block until `addr` resolves (the master pod's headless-service DNS record).

    Worker pods often start before the master's record exists; torch's rendezvous would
    fail at once. Returns the seconds waited; raises Retryable after `timeout_s`.
    """
    start = time.monotonic()
    while True:
        try:
            socket.getaddrinfo(addr, None)
            return time.monotonic() - start
        except OSError as err:
            waited = time.monotonic() - start
            if waited >= timeout_s:
                raise Retryable(
                    f"master address {addr} did not resolve within {timeout_s:.0f}s ({err});"
                    " is the master pod running and its headless Service created?"
                ) from err
            time.sleep(min(poll_s, max(0.0, timeout_s - waited)))


def plan_capability(plan: Plan) -> Capability:
    """The plan's method row; an unknown method is bad input (not this operator's config)."""
    try:
        return capability(plan.method)
    except UnknownMethod as err:
        raise BadInput(
            f"plan.method: {err}; the operator resolves `auto` before launch, so this config"
            " was not produced by a matching operator"
        ) from None


def training_precision(plan: Plan, cuda: bool, bf16: bool = True) -> str:
    """bf16/fp16 as planned where the hardware runs them (fp16 on a GPU without bf16);
    fp32 on CPU."""
    if not cuda:
        return "fp32"
    if plan.precision == "bf16" and not bf16:
        return "fp16"
    return plan.precision if plan.precision in ("bf16", "fp16") else "fp32"


def mixed_precision(plan: Plan, cuda: bool, bf16: bool = True) -> str:
    """accelerate's and DeepSpeed's name for the training precision."""
    return {"bf16": "bf16", "fp16": "fp16"}.get(training_precision(plan, cuda, bf16), "no")


def load_dtype(plan: Plan, cuda: bool, bf16: bool = True) -> str:
    """The dtype the base model loads in: fp32 master weights when every weight trains,
    else the training precision (a frozen base needs no fp32 copy)."""
    if plan_capability(plan).trains_base_weights:
        return "float32"
    return {"bf16": "bfloat16", "fp16": "float16"}.get(
        training_precision(plan, cuda, bf16), "float32"
    )


def accelerate_config(plan: Plan, world: World, cuda: bool) -> dict[str, Any]:
    """accelerate's config file for a torchrun-style launch of `world`."""
    return {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU" if world.total > 1 else "NO",
        "num_machines": world.nnodes,
        "num_processes": world.total,
        "machine_rank": world.node_rank,
        "main_process_ip": world.master_addr,
        "main_process_port": world.master_port,
        "rdzv_backend": "static",
        "same_network": True,
        "mixed_precision": mixed_precision(plan, cuda),
        "use_cpu": not cuda,
        "gpu_ids": "all",
        "main_training_function": "main",
        "debug": False,
    }


def deepspeed_config(plan: Plan, cuda: bool) -> dict[str, Any] | None:
    """The ZeRO config for the plan, or None when the plan is plain DDP (zeroStage 0).

    Batch sizes and learning-rate fields are "auto": the Trainer fills them from its
    arguments, so the two can never disagree.
    """
    problem = plan_capability(plan).layout_problem(plan.zero_stage, plan.offload)
    if problem is not None:
        raise BadInput(f"plan.zeroStage {plan.zero_stage} / plan.offload {plan.offload}: {problem}")
    if plan.zero_stage == 0:
        return None
    zero: dict[str, Any] = {
        "stage": plan.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if plan.offload in ("optimizer", "optimizer+parameters"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if plan.zero_stage == 3:
        zero |= {
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        }
        if plan.offload == "optimizer+parameters":
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    precision = mixed_precision(plan, cuda)
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "wall_clock_breakdown": False,
    }


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path
