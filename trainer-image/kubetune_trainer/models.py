"""Finding the base model's files, wherever the spec says they are."""

from __future__ import annotations

from pathlib import Path

from kubetune.api.spec import ModelSpec

from .failures import BadInput
from .model_source import resolve


def resolve_model_dir(model: ModelSpec, pvc_root: str, scratch: str) -> str:
    """A local directory with config.json, weights and tokenizer (downloaded if needed).

    The same resolver as the operator's config probe, so both read the model alike and
    fail alike: bad input for a missing or refused model, retryable for an unreachable
    store.
    """
    where = resolve(model, scratch, pvc_root_dir=pvc_root)
    if not Path(where, "config.json").is_file():
        raise BadInput(
            f"model directory {where} has no config.json; point spec.model at the"
            " directory that holds config.json and the weights"
        )
    return str(where)
