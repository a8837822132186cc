"""Where the base model lives → a local directory the libraries can load.

One resolver for every source the API allows, used by the trainer and by the operator's
config probe (`inspect-model`), so the probe reads config.json exactly as training will.
"""

from __future__ import annotations

import os
from pathlib import Path

from kubetune import contract as c
from kubetune.api.common import ModelSource

from .failures import BadInput, Retryable


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


def resolve(
    model: ModelSource,
    scratch: str | Path,
    files: list[str] | None = None,
    pvc_root_dir: str | None = None,
) -> Path:
    """A local directory holding the model (or just `files` of it, e.g. config.json).

    PVC and image paths are used in place; the Hub and object stores are downloaded
    into `scratch` (the Hub with HF_TOKEN). Raises `BadInput` when the model is missing,
    misnamed or refused (retrying will not help) and `Retryable` when its store cannot be
    reached, so that the trainer and the operator's probe both retry only what may pass.
    """
    if model.path is not None:
        local = Path(model.path)
    elif model.pvc is not None:
        root = pvc_root_dir or pvc_root()
        local = Path(root) / model.pvc.claim_name / model.pvc.path.lstrip("/")
    elif model.hf is not None:
        local = _from_hub(model, Path(scratch) / "hf", files)
    else:
        local = _from_store(model, Path(scratch) / "model", files)
    if not local.is_dir():
        where = describe(model)
        raise BadInput(
            f"{where}: no such directory" + (f" ({local})" if str(local) != where else "")
        )
    return local


# The Hub's answers that retrying cannot change: no such repo/revision/file, a gated repo
# without access (GatedRepoError is a RepositoryNotFoundError), an invalid repo id.
_HUB_NOT_FOUND = (
    "RepositoryNotFoundError",
    "RevisionNotFoundError",
    "EntryNotFoundError",
    "RemoteEntryNotFoundError",
    "HFValidationError",
)


def _from_hub(model: ModelSource, cache: Path, files: list[str] | None) -> Path:
    from huggingface_hub import snapshot_download

    assert model.hf is not None
    try:
        path = snapshot_download(
            model.hf.repo,
            revision=model.hf.revision,
            token=os.environ.get(c.ENV_HF_TOKEN) or None,
            allow_patterns=files,
            cache_dir=str(cache),
        )
    except Exception as exc:
        raise hub_failure(exc, describe(model)) from exc
    return Path(path)


def hub_failure(exc: BaseException, where: str) -> BadInput | Retryable:
    """A Hub failure (download or push): missing or refused is bad input, the rest is transient
    (no connection, 429, 5xx)."""
    text = " ".join(str(exc).split())[:400]
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    names = {k.__name__ for k in type(exc).__mro__}
    # LocalEntryNotFoundError subclasses EntryNotFoundError but means "the Hub could not be
    # reached and nothing is cached" (connection refused, 5xx): transient.
    unreachable = "LocalEntryNotFoundError" in names
    if not unreachable and (names.intersection(_HUB_NOT_FOUND) or status in (401, 403, 404)):
        return BadInput(
            f"{where}: {text}; check the repo name, the revision and tokenSecretRef"
            " (gated repos need a token with access)"
        )
    return Retryable(f"{where}: cannot reach the Hub: {type(exc).__name__}: {text}")


def _from_store(model: ModelSource, target: Path, files: list[str] | None) -> Path:
    """Download the prefix (sub-folders included) with the source's credentials/endpoint."""
    from . import storage

    store = model.s3 or model.gcs
    assert store is not None
    fs, root = storage.filesystem(store.uri)
    with storage.errors(describe(model), store.uri):
        return storage.download_dir(fs, root, target, files)
