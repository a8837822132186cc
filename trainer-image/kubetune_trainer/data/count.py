"""A cheap count of the training data before planning: rows, and tokens estimated from text.

The operator's probe pod runs this (with `inspect-model --dataset`) so that `method: auto`
and the small-data warnings see the dataset's size. It reads the rows the pipeline would
read (the same file readers) but neither cleans nor tokenises them: tokens are the text's
characters / `CHARS_PER_TOKEN`, the usual rule of thumb for English with BPE vocabularies.
Counting stops after `budget_seconds`; the row count is then a lower bound (`complete`
false), which can still prove a dataset large, never small.
"""

from __future__ import annotations

import json
import time
from typing import Any

from kubetune.api.spec import DatasetSpec

from .sources import file_format, iter_file, list_files, source_url

CHARS_PER_TOKEN = 4.0
BUDGET_SECONDS = 60.0


def _text_chars(value: Any) -> int:
    """Characters of every string in a row (keys excluded)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    return 0


def count_dataset(data: DatasetSpec, budget_seconds: float = BUDGET_SECONDS) -> dict[str, Any]:
    """`{"rows", "tokens", "complete"}` of the training source (after `maxSamples`)."""
    source = data.train
    if source.hf is not None:
        return _count_hub(data)
    deadline = time.monotonic() + budget_seconds
    rows = chars = 0
    complete = True
    for url in list_files(source_url(source), source.file_format):
        for row in iter_file(url, file_format(url, source.file_format)):
            if row["error"]:
                continue
            rows += 1
            try:
                chars += _text_chars(json.loads(row["raw"]))
            except ValueError:
                chars += len(row["raw"])
            if time.monotonic() > deadline:
                complete = False
                break
        if not complete:
            break
    return _result(data, rows, chars, complete)


def _count_hub(data: DatasetSpec) -> dict[str, Any]:
    """A Hub dataset's row count from its metadata (nothing is downloaded)."""
    from datasets import load_dataset_builder

    hf = data.train.hf
    assert hf is not None
    info = load_dataset_builder(hf.repo, hf.config, revision=hf.revision).info
    split = (info.splits or {}).get(hf.split)
    if split is None or not split.num_examples:
        raise ValueError(f"the Hub metadata of {hf.repo} has no row count for split {hf.split}")
    rows = int(split.num_examples)
    capped = min(rows, data.max_samples) if data.max_samples else rows
    return {"rows": capped, "complete": True}


def _result(data: DatasetSpec, rows: int, chars: int, complete: bool) -> dict[str, Any]:
    tokens = chars / CHARS_PER_TOKEN
    if data.max_samples is not None and rows > data.max_samples:
        tokens *= data.max_samples / rows
        rows, complete = data.max_samples, True
    return {"rows": rows, "tokens": int(tokens), "complete": complete}
