"""What the tuned model is compared with, scored before training on the rows the tuned
model is scored on after it: the base model zero-shot, the base model few-shot (k
training examples in each prompt), and an earlier fine-tune (`previous`).
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

from kubetune.api.trainer_config import PreviousModel, TrainerConfig

from . import evaluation
from .data import fewshot
from .failures import BadInput
from .model_source import describe, resolve


def zero_shot_source() -> str:
    return "base model, zero-shot"


def few_shot_source(shots: list[dict[str, Any]], seed: int) -> str:
    return f"base model, {len(shots)} shots from the training split (seed {seed})"


def few_shot(
    model: Any,
    tokenizer: Any,
    shots: list[dict[str, Any]],
    test: Any,
    s: evaluation.Settings,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Task metrics of the base model with the shots before every test prompt."""
    if test is None or len(test) == 0 or not shots:
        return {}, []
    rows = test.select(range(min(len(test), s.max_samples)))
    prompts, refs = fewshot.prompts(tokenizer, shots, rows)
    return evaluation.generation_scores(model, tokenizer, prompts, refs, s)


def load_shots(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / fewshot.FEWSHOT_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def previous_model(config: TrainerConfig) -> tuple[PreviousModel | None, str | None]:
    """The earlier fine-tune to score, and why there is none when one was asked for."""
    if config.previous is not None:
        return config.previous, None
    prev = config.spec.evaluation.previous
    if prev is None:
        return None, None
    if prev.job is not None:
        return None, f"job {prev.job} was not resolved to a location (the operator does it)"
    assert prev.model is not None
    if prev.adapter:
        description = f"adapter {describe(prev.model)}"
        return PreviousModel(
            model=config.spec.model.location(), adapter=prev.model, description=description
        ), None
    return PreviousModel(model=prev.model, description=f"model {describe(prev.model)}"), None


def load_previous(
    prev: PreviousModel, pvc_root: str, scratch: str, dtype: Any, trust_remote_code: bool
) -> Any:
    """The earlier fine-tune, loaded for scoring (a base plus its adapter, or a model)."""
    from transformers import AutoModelForCausalLM

    where = Path(scratch, "previous")
    base_dir = resolve(prev.model, where / "model", pvc_root_dir=pvc_root)
    model: Any
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base_dir, dtype=dtype, trust_remote_code=trust_remote_code
        )
        if prev.adapter is not None:
            from peft import PeftModel

            adapter_dir = resolve(prev.adapter, where / "adapter", pvc_root_dir=pvc_root)
            model = PeftModel.from_pretrained(model, str(adapter_dir))
    except (OSError, ValueError) as err:
        raise BadInput(f"evaluation.previous ({prev.description}): cannot load it: {err}") from err
    return model


def release() -> None:
    """Free the memory of a scored model the caller has dropped, before training starts."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
