"""The best checkpoint: which validation metric is watched, the figures of every
evaluation, and loading the best weights back before export (load-best-at-end).

The watched metric is `training.earlyStopping.metric` (also with `enabled: false`),
else validation loss. A checkpoint is saved at every evaluation, so the best evaluation
always has one; rotation keeps it besides the newest `keep`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.spec import FineTuneJobSpec

log = logging.getLogger(__name__)

TRAINER_KEY = {
    "eval_loss": "eval_loss",
    "exact_match": "eval_exact_match",
    "rouge_l": "eval_rouge_l",
    "accuracy": "eval_accuracy",
    "reward_accuracy": "eval_rewards/accuracies",
}
"""The spec's metric names -> the keys in the Trainer's evaluation metrics."""
TASK_KEY = {"exact_match": "exactMatch", "rouge_l": "rougeL", "accuracy": "accuracy"}
"""Watched task metrics -> the evaluation module's names (scored by generation)."""
STATUS_KEY = {
    "eval_loss": "loss",
    "eval_exact_match": "exactMatch",
    "eval_rouge_l": "rougeL",
    "eval_accuracy": "accuracy",
    "eval_rewards/accuracies": "rewardAccuracy",
    "eval_rewards/margins": "rewardMargin",
}
"""Trainer evaluation keys -> status.evaluation.perEpoch[] fields."""
BENCHMARK_PREFIX = "eval_benchmark_"


@dataclass(frozen=True)
class Watch:
    """The validation metric that picks the best checkpoint (and stops early)."""

    name: str
    """The spec's name (eval_loss, exact_match, ...)."""
    key: str
    """The Trainer's metrics key."""
    greater_is_better: bool

    @property
    def task_metric(self) -> str | None:
        """The generation metric to score at each evaluation, if the watch is one."""
        return TASK_KEY.get(self.name)


def watch(spec: FineTuneJobSpec) -> Watch:
    es = spec.training.early_stopping
    name = es.metric if es is not None else "eval_loss"
    return Watch(name, TRAINER_KEY[name], name != "eval_loss")


def per_epoch(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """status.evaluation.perEpoch: one entry per evaluation in the Trainer's log history."""
    out = []
    for entry in history:
        if "eval_loss" not in entry:
            continue
        point: dict[str, Any] = {}
        for key, name in STATUS_KEY.items():
            if isinstance(entry.get(key), int | float):
                point[name] = float(entry[key])
        if "loss" in point and entry.get("eval_rewards/accuracies") is None:
            point["perplexity"] = math.exp(min(point["loss"], 50.0))
        benchmarks = {
            k.removeprefix(BENCHMARK_PREFIX): float(v)
            for k, v in entry.items()
            if k.startswith(BENCHMARK_PREFIX)
        }
        if benchmarks:
            point["benchmarks"] = benchmarks
        if entry.get("epoch") is not None:
            point["epoch"] = round(float(entry["epoch"]), 4)
        if entry.get("step") is not None:
            point["step"] = int(entry["step"])
        out.append(point)
    return out


def best(state: Any, w: Watch, loaded: bool) -> dict[str, Any] | None:
    """status.evaluation.bestMetric from the Trainer's state (None before any evaluation)."""
    if state.best_metric is None or not math.isfinite(state.best_metric):
        return None
    step = state.best_global_step or None
    epoch = next(
        (e.get("epoch") for e in state.log_history if "eval_loss" in e and e.get("step") == step),
        None,
    )
    out: dict[str, Any] = {"metric": w.name, "value": float(state.best_metric), "loaded": loaded}
    if step is not None:
        out["step"] = int(step)
    if epoch is not None:
        out["epoch"] = round(float(epoch), 4)
    if state.best_model_checkpoint:
        out["checkpoint"] = str(state.best_model_checkpoint)
    return out


def restore_best(trainer: Any) -> bool:
    """Load the best checkpoint's weights into the trainer's model when training ended
    elsewhere; True when it did. PEFT adapters are loaded with PEFT's own state-dict
    setter (the Trainer's path refuses prompt-learning adapters); full models and
    DeepSpeed engines go through the Trainer's loader."""
    state = trainer.state
    best_dir = state.best_model_checkpoint
    if not best_dir or not Path(best_dir).is_dir():
        return False
    if state.best_global_step == state.global_step:
        return False
    log.info(
        "loading the best checkpoint %s (%s) instead of step %d",
        best_dir,
        state.best_metric,
        state.global_step,
    )
    model = trainer.accelerator.unwrap_model(trainer.model)
    adapter = Path(best_dir) / "adapter_model.safetensors"
    if hasattr(model, "peft_config") and adapter.is_file() and not trainer.is_deepspeed_enabled:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        device = next(model.parameters()).device
        result = set_peft_model_state_dict(model, load_file(str(adapter), device=str(device)))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise RuntimeError(f"best checkpoint {best_dir}: unexpected keys {unexpected}")
        return True
    trainer._load_best_model()  # full weights, and DeepSpeed's own checkpoint format
    return True
