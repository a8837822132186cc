"""The `previous` baseline given as another FineTuneJob: where its output is.

Pure: the other job's resource in, a `PreviousModel` out. The location is derived from
that job's spec (its output location and base model) and its plan's method (full
fine-tunes save `model/`, adapters `adapter/`), the same layout its trainer wrote, so it
does not depend on status fields a reader may have pruned.
"""

from __future__ import annotations

import posixpath
from typing import Any

from pydantic import ValidationError

from kubetune.api.common import ModelSource, ObjectStoreSource, PVCSource
from kubetune.api.phases import Phase
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.trainer_config import PreviousModel


class PreviousNotReady(Exception):
    """The other job exists but has not succeeded yet: wait for it."""


class PreviousInvalid(Exception):
    """The other job cannot serve as a baseline (missing, failed, no stored output)."""


FIELD = "spec.evaluation.previous.job"


def resolve(namespace: str, name: str, other: dict[str, Any] | None) -> PreviousModel:
    """The other job's exported model as a location this job's trainer can load."""
    where = f"{FIELD}: FineTuneJob {namespace}/{name}"
    if other is None:
        raise PreviousInvalid(f"{where} does not exist")
    status = other.get("status") or {}
    phase = status.get("phase") or Phase.PENDING
    if phase == Phase.FAILED:
        raise PreviousInvalid(f"{where} failed; it has no output to score")
    if phase != Phase.SUCCEEDED:
        raise PreviousNotReady(f"{where} is {phase}; waiting for it to succeed")
    try:
        spec = FineTuneJobSpec.model_validate(other.get("spec") or {})
    except ValidationError as err:
        raise PreviousInvalid(f"{where} has an invalid spec: {err.error_count()} error(s)") from err
    method = (status.get("plan") or {}).get("method")
    if not method:
        raise PreviousInvalid(f"{where} has no plan in its status")
    folder = "model" if method == "full" else "adapter"
    out = spec.output
    if out is None or (out.pvc is None and out.s3 is None and out.gcs is None):
        raise PreviousInvalid(
            f"{where} kept its outputs in pod scratch space (no spec.output.pvc, s3 or gcs):"
            " nothing is left to score; give evaluation.previous.model instead"
        )
    if out.pvc is not None:
        path = posixpath.join(out.pvc.path.strip("/"), folder)
        location = ModelSource(pvc=PVCSource(claim_name=out.pvc.claim_name, path=path))
    else:
        store = out.s3 or out.gcs
        assert store is not None
        uri = f"{store.uri.rstrip('/')}/{folder}"
        found = ObjectStoreSource(uri=uri, credentials_secret_ref=store.credentials_secret_ref)
        location = ModelSource(s3=found) if out.s3 is not None else ModelSource(gcs=found)
    description = f"job {namespace}/{name} ({method} {folder})"
    if method == "full":
        return PreviousModel(model=location, description=description)
    return PreviousModel(model=spec.model.location(), adapter=location, description=description)


def claims(previous: PreviousModel | None) -> list[str]:
    """PVCs the trainer pod must mount (read-only) to load the previous model."""
    if previous is None:
        return []
    places = [previous.model, previous.adapter]
    return [p.pvc.claim_name for p in places if p is not None and p.pvc is not None]
