"""Preference tuning (objectives dpo and orpo) with TRL's trainers.

The pipeline keeps each pair as TRL reads it (prompt/chosen/rejected: message lists, or
plain strings); TRL tokenises them with the tokenizer's chat template, which the recipe
sets to the template the data report records. The reference model of DPO is TRL's
choice: with an adapter (LoRA, QLoRA) the frozen base with the adapter disabled, for a
full fine-tune a second frozen copy loaded from the same directory (the planner counts
it). ORPO needs no reference model.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kubetune.api.spec import FineTuneJobSpec, PreferenceSpec

PAIR_COLUMNS = ("prompt", "chosen", "rejected")


def trl_rows(split: Any) -> Any:
    """A preference split in TRL's layout (the JSON columns decoded)."""
    from datasets import Dataset

    return Dataset.from_dict({k: [json.loads(x) for x in split[k]] for k in PAIR_COLUMNS})


def training_args(spec: FineTuneJobSpec, common: dict[str, Any]) -> Any:
    """DPOConfig or ORPOConfig with the run's common arguments and the spec's settings."""
    pref = spec.preference or PreferenceSpec()
    length = spec.training.max_seq_length
    if spec.objective == "dpo":
        from trl import DPOConfig

        return DPOConfig(
            **common,
            beta=pref.beta,
            loss_type=[pref.loss_type],
            label_smoothing=pref.label_smoothing,
            max_length=length,
            precompute_ref_log_probs=False,
        )
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.orpo import ORPOConfig

    return ORPOConfig(**common, beta=pref.beta, max_length=length)
