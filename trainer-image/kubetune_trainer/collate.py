"""Batching the pipeline's pre-tokenised rows (TRL's own preparation is skipped).

Packed rows carry `position_ids` and go through the pipeline's PackedCollator (no 2-D
mask: attention finds the example boundaries from the position restarts). Unpacked
rows are right-padded with an attention mask.
"""

from __future__ import annotations

from typing import Any

from .data.masking import IGNORE_INDEX
from .data.packing import PackedCollator

TRAIN_COLUMNS = ("input_ids", "labels", "position_ids")


class Collator:
    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id
        self.packed = PackedCollator(pad_token_id)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if "position_ids" in features[0]:
            return self.packed(features)
        width = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }


def training_view(ds: Any) -> Any:
    """Only the columns the model takes (the test split also carries prompts)."""
    return ds.select_columns([c for c in TRAIN_COLUMNS if c in ds.column_names])
