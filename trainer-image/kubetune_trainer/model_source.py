"""Where the base model lives → a local directory the libraries can load.

One resolver for every source the API allows, used by the trainer and by the operator's
config probe (`inspect-model`), so the probe reads config.json exactly as training will.
"""

from __future__ import annotations

import os
from pathlib import Path

from kubetune import contract as c
from kubetune.api.common import ModelSource


class ModelSourceError(Exception):
    """The model cannot be found or read; the message says where and why."""


def pvc_root() -> str:
    return os.environ.get(c.ENV_PVC_ROOT, c.PVC_ROOT)


def describe(model: ModelSource) -> str:
    """Where the model is, in the words of the spec (for messages)."""
    if model.hf:
        return f"hf://{model.hf.repo}@{model.hf.revision}"
    if model.pvc:
        return f"pvc {model.pvc.claim_name}:/{model.pvc.path.lstrip('/')}"
    if model.s3:
        return model.s3.uri
    if model.gcs:
        return model.gcs.uri
    return str(model.path)


def resolve(model: ModelSource, scratch: str | Path, files: list[str] | None = None) -> Path:
    """A local directory holding the model (or just `files` of it, e.g. config.json).

    PVC and image paths are used in place; the Hub and object stores are downloaded
    into `scratch` (the Hub through huggingface_hub's cache, with HF_TOKEN).
    """
    if model.path is not None:
        local = Path(model.path)
    elif model.pvc is not None:
        local = Path(pvc_root()) / model.pvc.claim_name / model.pvc.path.lstrip("/")
    elif model.hf is not None:
        local = _from_hub(model, files)
    else:
        local = _from_store(model, Path(scratch) / "model", files)
    if not local.is_dir():
        raise ModelSourceError(f"{describe(model)}: no such directory ({local})")
    return local


def _from_hub(model: ModelSource, files: list[str] | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    assert model.hf is not None
    try:
        path = snapshot_download(
            model.hf.repo,
            revision=model.hf.revision,
            token=os.environ.get("HF_TOKEN") or None,
            allow_patterns=files,
        )
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelSourceError(f"{describe(model)}: {exc}") from exc
    return Path(path)


def _from_store(model: ModelSource, target: Path, files: list[str] | None) -> Path:
    """Download the prefix (sub-folders included) with the source's credentials/endpoint."""
    from . import storage
    from .failures import BadInput, Retryable

    store = model.s3 or model.gcs
    assert store is not None
    try:
        fs, root = storage.filesystem(store.uri)
        with storage.errors(describe(model)):
            return storage.download_dir(fs, root, target, files)
    except (BadInput, Retryable) as exc:  # the probe reports any failure as unreadable
        raise ModelSourceError(str(exc)) from exc
