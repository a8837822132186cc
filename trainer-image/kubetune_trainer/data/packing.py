"""Packing several examples into one sequence without attention crossing between them.

Packed rows carry `position_ids` that restart at 0 for every example and no padding
(padding-free). Attention kernels read the example boundaries from those restarts:
flash-attention's varlen path and transformers' packed-sequence detection for SDPA/eager
(when no 2-D attention mask is passed) both do; `block_diagonal_mask` builds the explicit
4-D mask for anything else. Bins are filled best-fit-decreasing over the whole split, which
wastes less room than greedy packing in arrival order.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, Features, List, Value

from .masking import IGNORE_INDEX

PACKED = Features({name: List(Value("int32")) for name in ("input_ids", "labels", "position_ids")})


def column(ds: Dataset, name: str) -> list[Any]:
    """A whole column as a list, read in one batch. (`ds[name]` is a lazy Column in
    datasets 4+, which formats one row at a time when iterated: ~20 us a row.)"""
    return list(ds[name][:]) if len(ds) else []


def plan_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indices grouped into bins whose lengths sum to <= capacity.

    Deterministic (ties broken by index), so the same data packs the same way every run.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining room, bin number), kept sorted
    for i in order:
        size = lengths[i]
        if size > capacity:
            raise ValueError(f"example {i} has {size} tokens, more than the capacity {capacity}")
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            room, number = free.pop(at)
        else:
            room, number = capacity, len(bins)
            bins.append([])
        bins[number].append(i)
        if room - size > 0:
            bisect.insort(free, (room - size, number))
    return bins


@dataclass(frozen=True)
class PackingStats:
    """How well the examples filled the fixed-length sequences."""

    examples: int
    sequences: int
    tokens: int
    max_seq_length: int

    @property
    def efficiency(self) -> float:
        """Non-padding fraction were every sequence padded to max_seq_length."""
        return self.tokens / (self.sequences * self.max_seq_length) if self.sequences else 0.0

    def to_report(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "examples": self.examples,
            "sequences": self.sequences,
            "tokens": self.tokens,
            "maxSeqLength": self.max_seq_length,
            "efficiency": round(self.efficiency, 4),
            "examplesPerSequence": round(self.examples / max(self.sequences, 1), 2),
        }


def pack(ds: Dataset, max_seq_length: int, batch_bins: int = 1000) -> tuple[Dataset, PackingStats]:
    """Pack a split with `input_ids`/`labels` into padding-free rows with `position_ids`."""
    lengths = (
        [int(x) for x in column(ds, "length")]
        if "length" in ds.column_names
        else [len(x) for x in column(ds, "input_ids")]
    )
    bins = plan_bins(lengths, max_seq_length)
    if not bins:
        empty = Dataset.from_dict({k: [] for k in PACKED}, features=PACKED)
        return empty, PackingStats(0, 0, 0, max_seq_length)
    source = ds.select_columns(["input_ids", "labels"]).flatten_indices().with_format("arrow")

    def gather(batch: pa.Table) -> pa.Table:
        bins_here = batch.column("bin").to_pylist()
        ids = [i for b in bins_here for i in b]
        table = source[ids]
        assert isinstance(table, pa.Table)
        lens = np.fromiter((lengths[i] for i in ids), dtype=np.int64, count=len(ids))
        bin_sizes = [len(b) for b in bins_here]
        bin_lens = np.add.reduceat(lens, np.cumsum([0, *bin_sizes[:-1]])) if ids else lens
        offsets = pa.array(np.concatenate([[0], np.cumsum(bin_lens)]), pa.int32())
        out = {}
        for name in ("input_ids", "labels"):
            values = table.column(name).combine_chunks().flatten()
            out[name] = pa.ListArray.from_arrays(offsets, values)
        positions = np.concatenate([np.arange(n) for n in lens]) if ids else np.zeros(0)
        out["position_ids"] = pa.ListArray.from_arrays(offsets, pa.array(positions, pa.int32()))
        return pa.table(out)

    plan = Dataset.from_dict({"bin": bins}).with_format("arrow")
    packed = plan.map(
        gather,
        batched=True,
        batch_size=batch_bins,
        remove_columns=["bin"],
        features=PACKED,
        new_fingerprint=f"{ds._fingerprint}-packed-{max_seq_length}",
    )
    packed = packed.with_format(None)
    stats = PackingStats(len(lengths), len(bins), int(sum(lengths)), max_seq_length)
    return packed, stats


def block_diagonal_mask(position_ids: Any) -> Any:
    """A boolean [batch, 1, L, L] mask: causal, and only within one packed example.

    For attention implementations that neither run varlen kernels nor detect packing
    from `position_ids`. True means "may attend".
    """
    import torch

    starts = (position_ids == 0).long()
    segment = torch.cumsum(starts, dim=-1)
    same = segment.unsqueeze(-1) == segment.unsqueeze(-2)
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    return (same & causal).unsqueeze(1)


class PackedCollator:
    """Batches packed rows: pads to the longest row (pad labels -100, positions 0..).

    Padding continues as its own "example" (positions restart), so it never attends into
    real tokens; with `block_mask=True` the explicit 4-D mask is added as `attention_mask`.
    Without it the batch carries `use_cache=False`: transformers only derives the
    per-example mask from `position_ids` when no KV cache is passed, and models default to
    creating one (`config.use_cache`), which would silently let examples attend each other.
    """

    def __init__(self, pad_token_id: int, block_mask: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.block_mask = block_mask

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        batch: dict[str, Any] = {"input_ids": [], "labels": [], "position_ids": []}
        for f in features:
            n = len(f["input_ids"])
            pad = width - n
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            batch["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            batch["position_ids"].append(list(f["position_ids"]) + list(range(pad)))
        out: dict[str, Any] = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        if self.block_mask:
            out["attention_mask"] = block_diagonal_mask(out["position_ids"])
        else:
            out["use_cache"] = False
        return out
