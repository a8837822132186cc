"""Finding the base model's files, wherever the spec says they are."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from kubetune.api.spec import ModelSpec

from .failures import BadInput, Retryable

HF_TOKEN_ENV = "HF_TOKEN"
"""The operator projects `tokenSecretRef` into this variable (huggingface_hub reads it too)."""


def resolve_model_dir(model: ModelSpec, pvc_root: str, scratch: str) -> str:
    """A local directory with config.json, weights and tokenizer (downloaded if needed)."""
    if model.path is not None:
        where = model.path
    elif model.pvc is not None:
        where = str(PurePosixPath(pvc_root, model.pvc.claim_name, model.pvc.path.lstrip("/")))
    elif model.hf is not None:
        from huggingface_hub import snapshot_download

        try:
            where = snapshot_download(
                model.hf.repo,
                revision=model.hf.revision,
                token=os.environ.get(HF_TOKEN_ENV),
                cache_dir=str(Path(scratch, "hf")),
            )
        except Exception as err:  # gated/missing repos are bad input; the rest transient
            text = str(err)
            if any(s in text for s in ("401", "403", "404", "Repository Not Found", "gated")):
                raise BadInput(
                    f"cannot download model {model.hf.repo}: {text[:300]}; check"
                    " the repo name, revision and tokenSecretRef"
                ) from err
            raise Retryable(f"downloading model {model.hf.repo} failed: {text[:300]}") from err
    else:
        store = model.s3 or model.gcs
        assert store is not None  # the spec guarantees exactly one source
        from . import storage

        where = str(Path(scratch, "model"))
        fs, root = storage.filesystem(store.uri)
        # A missing prefix or refused credentials is bad input; the rest is retried.
        with storage.errors(f"downloading the model from {store.uri}"):
            storage.download_dir(fs, root, Path(where))
    if not Path(where, "config.json").is_file():
        raise BadInput(
            f"model directory {where} has no config.json; point spec.model at the"
            " directory that holds config.json and the weights"
        )
    return where
