"""Hooks into the Trainer loop: progress, NaN guard, preemption, early stopping, epoch
checkpoints, a checkpoint at every evaluation, and the trainer subclasses (SFT, DPO,
ORPO) that publish checkpoints atomically and add task metrics to evaluations."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from trl import SFTTrainer

from kubetune.api.phases import TrainerPhase
from kubetune.contract import ProgressReport

from . import checkpoints
from .failures import NaNLoss
from .progress import ProgressReporter


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _any_rank(flag: bool) -> bool:
    """True on every rank when it is True on one (ranks must stop at the same step)."""
    if not _distributed():
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class Preemption:
    """SIGTERM sets a flag; the loop checkpoints at the next step and stops."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.handled = False

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.requested.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)


class PreemptionCallback(TrainerCallback):
    def __init__(self, preemption: Preemption) -> None:
        self.preemption = preemption

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if _any_rank(self.preemption.requested.is_set()):
            self.preemption.handled = True
            control.should_save = True
            control.should_training_stop = True


class NaNGuard(TrainerCallback):
    """Stops the run at the first NaN/Inf loss (all ranks see the same gathered loss)."""

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise NaNLoss(
                f"training loss became {loss} at step {state.global_step}; lower the learning"
                " rate (plan.learningRate), check the data for empty or extreme rows, or use"
                " bf16 instead of fp16"
            )


class BaselineCallback(TrainerCallback):
    """Scores the base model once the DeepSpeed engine exists, before the first step
    (ZeRO-3: the engine gathers each layer as it runs; nothing gathers the whole model)."""

    def __init__(self, score: Callable[[Any, bool], None]) -> None:
        self.score = score

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.score(kwargs["model"], state.global_step > 0)


class EpochCheckpoint(TrainerCallback):
    """Checkpoint at every epoch end in addition to every N steps."""

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        control.should_save = True


class SaveOnEvaluate(TrainerCallback):
    """A checkpoint at every evaluation, so the best evaluation always has one to load."""

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        control.should_save = True


class EarlyStopping(TrainerCallback):
    """Stop after `patience` evaluations without the metric improving by `threshold`."""

    def __init__(
        self, metric: str, greater_is_better: bool, patience: int, threshold: float
    ) -> None:
        self.metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.greater = greater_is_better
        self.patience = patience
        self.threshold = threshold
        self.best: float | None = None
        self.bad = 0
        self.stopped_at: int | None = None

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        value = (metrics or {}).get(self.metric)
        if value is None:
            return
        better = self.best is None or (
            value > self.best + self.threshold
            if self.greater
            else value < self.best - self.threshold
        )
        if better:
            self.best, self.bad = value, 0
            return
        self.bad += 1
        if self.bad >= self.patience:
            self.stopped_at = state.global_step
            control.should_training_stop = True


class ProgressCallback(TrainerCallback):
    """Feeds the reporter from rank 0's logs; reads nothing that costs a sync."""

    def __init__(
        self, reporter: ProgressReporter, namespace: str, name: str, attempt: int, uid: str = ""
    ) -> None:
        self.reporter = reporter
        # the UID: the operator ignores the reports of a deleted job of the same name
        self.ident = {"namespace": namespace, "name": name, "uid": uid, "attempt": attempt}
        self.started = time.monotonic()
        self.start_step = 0
        self.start_tokens = 0
        self.tokens_per_second: float | None = None
        self.checkpoint: tuple[str, int] | None = None
        self.last: ProgressReport | None = None
        """The newest report (the run's final progress goes into its summary)."""

    def evaluating(self) -> None:
        """Training is over and the tuned model is being scored: the operator shows the
        job as Evaluating, with the last training figures."""
        last = self.last or ProgressReport(**self.ident)
        self.reporter.submit(last.model_copy(update={"phase": TrainerPhase.EVALUATING}))

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.started = time.monotonic()
        self.start_step = state.global_step  # resumed runs: rate from this attempt only
        self.start_tokens = state.num_input_tokens_seen

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # on_save runs after KubetuneSFTTrainer has renamed the checkpoint into place: report
        # its full path, as the final summary does, so status.checkpoints.latest never
        # changes form between live progress and the end of the run.
        path = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        self.checkpoint = (str(path), state.global_step)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero:
            return
        logs = logs or {}
        elapsed = max(time.monotonic() - self.started, 1e-6)
        done = state.global_step - self.start_step
        tokens = state.num_input_tokens_seen - self.start_tokens
        self.tokens_per_second = tokens / elapsed if tokens else None
        eta = (state.max_steps - state.global_step) * elapsed / done if done else None
        peak = None
        import torch

        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / 2**30
        loss = logs.get("loss")
        if loss is None and self.last is not None:
            loss = self.last.loss  # evaluation and end-of-run logs carry no training loss
        self.last = ProgressReport(
            **self.ident,
            step=state.global_step,
            total_steps=state.max_steps or None,
            epoch=state.epoch,
            loss=loss if loss is not None and math.isfinite(loss) else None,
            learning_rate=logs.get("learning_rate"),
            grad_norm=logs.get("grad_norm"),
            tokens_per_second=self.tokens_per_second,
            eta_seconds=eta,
            percent=100.0 * state.global_step / state.max_steps if state.max_steps else None,
            peak_memory_gi_b=peak,
            checkpoint=self.checkpoint[0] if self.checkpoint else None,
            checkpoint_step=self.checkpoint[1] if self.checkpoint else None,
            phase=TrainerPhase.TRAINING,
        )
        self.reporter.submit(self.last)


class KubetuneMixin:
    """What every kubetune trainer adds to its TRL trainer: checkpoints that appear only
    once complete (see `checkpoints`), and extra validation figures (task metrics by
    generation, benchmark accuracy) merged into each evaluation's metrics before the
    callbacks and the best-checkpoint tracking see them."""

    keep_checkpoints: int = 2
    extra_metrics: Callable[[], dict[str, float]] | None = None
    """Called at each evaluation (every rank: scoring may be collective under ZeRO-3)."""

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        output = super().evaluation_loop(*args, **kwargs)  # type: ignore[misc]
        if self.extra_metrics is not None:
            prefix = kwargs.get("metric_key_prefix", "eval")
            for key, value in self.extra_metrics().items():
                output.metrics[f"{prefix}_{key}"] = value
        return output

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        me: Any = self
        root = Path(str(me.args.output_dir))
        staging = root / checkpoints.STAGING
        me.args.output_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        finally:
            me.args.output_dir = str(root)
        me.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if me.args.should_save:
            staged = staging / f"{checkpoints.PREFIX}-{me.state.global_step}"
            final = checkpoints.publish(staged, root)
            best = None
            if me.state.best_global_step:
                best = root / f"{checkpoints.PREFIX}-{me.state.best_global_step}"
                best = best if best.is_dir() else None
            me.state.best_model_checkpoint = str(best) if best else None
            me.state.save_to_json(os.fspath(final / checkpoints.STATE_FILE))
            checkpoints.rotate(root, self.keep_checkpoints, best)
        me.accelerator.wait_for_everyone()


class KubetuneSFTTrainer(KubetuneMixin, SFTTrainer):
    """Supervised fine-tuning."""


def preference_trainer(objective: str) -> type:
    """The kubetune trainer class for a preference objective (TRL's DPO or ORPO)."""
    if objective == "dpo":
        from trl import DPOTrainer

        return type("KubetuneDPOTrainer", (KubetuneMixin, DPOTrainer), {})
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.orpo import ORPOTrainer

    return type("KubetuneORPOTrainer", (KubetuneMixin, ORPOTrainer), {})
