"""Building blocks shared by the spec: secret references, sources, quantities."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from .base import ApiModel, with_cel

# Kubernetes resource quantity, as `resource.Quantity` parses it (e.g. "16Gi", "500m", "1e3").
QUANTITY_PATTERN = r"^[+-]?(\d+\.?\d*|\.\d+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?\d+))?$"
Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=64)]
# An object name as Kubernetes validates Secret, PersistentVolumeClaim, PriorityClass and
# StorageClass names: an RFC 1123 DNS subdomain (dots allowed, up to 253 characters), so
# `hf.token` and `datasets.v2` are valid references.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
Name = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, min_length=1, max_length=253)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class SecretKeyRef(ApiModel):
    """A key in a Secret in the job's namespace."""

    name: Name
    """Name of the Secret."""
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)] = "token"
    """Key inside the Secret."""


class SecretRef(ApiModel):
    """A whole Secret in the job's namespace, exposed to the trainer as environment."""

    name: Name
    """Name of the Secret (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional
    AWS_ENDPOINT_URL; for GCS: a service-account JSON under GOOGLE_APPLICATION_CREDENTIALS)."""


class HFSource(ApiModel):
    """A repository on the Hugging Face Hub."""

    repo: Annotated[
        str, StringConstraints(pattern=r"^[\w.-]+(/[\w.-]+)?$", min_length=1, max_length=200)
    ]
    """Repository id, e.g. `meta-llama/Llama-3.1-8B-Instruct`."""
    revision: Annotated[str, StringConstraints(min_length=1, max_length=200)] = "main"
    """Branch, tag or commit; pin a commit for reproducible runs."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret holding a Hub token, for gated or private repositories."""


class HFDatasetSource(HFSource):
    """A dataset on the Hugging Face Hub."""

    split: Annotated[str, StringConstraints(min_length=1, max_length=200)] = "train"
    """Split to read, e.g. `train` or `train[:10%]`."""
    config: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    """Dataset configuration (subset) name, when the dataset has several."""


class PVCSource(ApiModel):
    """A path inside a PersistentVolumeClaim in the job's namespace."""

    claim_name: Name
    """Name of the PersistentVolumeClaim."""
    path: Annotated[str, StringConstraints(max_length=1024)] = ""
    """Path inside the volume (a directory for models, a file or directory for data)."""
    read_only: bool = True
    """Mount the claim read-only."""


class ObjectStoreSource(ApiModel):
    """An object-store URI read through fsspec."""

    uri: Annotated[
        str, StringConstraints(pattern=r"^(s3|gs|gcs)://[^/\s]+(/\S*)?$", max_length=2048)
    ]
    """`s3://bucket/prefix` or `gs://bucket/prefix`."""
    credentials_secret_ref: SecretRef | None = None
    """Secret with the store's credentials; without it the pod's workload identity is used."""


SOURCE_KINDS = ("hf", "pvc", "s3", "gcs", "path")


def check_sources(model: ApiModel, kinds: tuple[str, ...], exactly_one: bool = True) -> None:
    """Python twin of SOURCE_RULES: one source kind set, and URIs matching their kind."""
    given = [k for k in kinds if getattr(model, k) is not None]
    if exactly_one and len(given) != 1:
        raise ValueError(
            f"set exactly one of {', '.join(kinds)}, got " + (", ".join(given) if given else "none")
        )
    s3, gcs = getattr(model, "s3", None), getattr(model, "gcs", None)
    if s3 is not None and not s3.uri.startswith("s3://"):
        raise ValueError(f"s3.uri must start with s3://, got {s3.uri}")
    if gcs is not None and not gcs.uri.startswith(("gs://", "gcs://")):
        raise ValueError(f"gcs.uri must start with gs://, got {gcs.uri}")


URI_RULES = (
    {
        "rule": "!has(self.s3) || self.s3.uri.startsWith('s3://')",
        "message": "s3.uri must start with s3://",
    },
    {
        "rule": "!has(self.gcs) || self.gcs.uri.startsWith('gs://')"
        " || self.gcs.uri.startsWith('gcs://')",
        "message": "gcs.uri must start with gs://",
    },
)
SOURCE_RULES = (
    {
        "rule": " + ".join(f"(has(self.{k}) ? 1 : 0)" for k in SOURCE_KINDS) + " == 1",
        "message": "set exactly one of hf, pvc, s3, gcs, path",
    },
    *URI_RULES,
)


class ModelSource(ApiModel):
    """Where the base model lives: exactly one of `hf`, `pvc`, `s3`, `gcs`, `path`."""

    hf: HFSource | None = None
    """A Hugging Face Hub repository."""
    pvc: PVCSource | None = None
    """A directory in a PersistentVolumeClaim holding `config.json` and the weights."""
    s3: ObjectStoreSource | None = None
    """An S3 (or S3-compatible) prefix holding the model files."""
    gcs: ObjectStoreSource | None = None
    """A Google Cloud Storage prefix holding the model files."""
    path: Annotated[str, StringConstraints(pattern=r"^/", max_length=1024)] | None = None
    """An absolute path inside the trainer image."""

    model_config = with_cel(*SOURCE_RULES)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        check_sources(self, SOURCE_KINDS)
        return self


FileFormat = Literal["auto", "jsonl", "json", "parquet", "csv"]


class DataSource(ApiModel):
    """One dataset file set: exactly one of `hf`, `pvc`, `s3`, `gcs`, `path`."""

    hf: HFDatasetSource | None = None
    """A dataset on the Hugging Face Hub."""
    pvc: PVCSource | None = None
    """A file or directory in a PersistentVolumeClaim."""
    s3: ObjectStoreSource | None = None
    """An S3 object or prefix."""
    gcs: ObjectStoreSource | None = None
    """A Google Cloud Storage object or prefix."""
    path: Annotated[str, StringConstraints(pattern=r"^/", max_length=1024)] | None = None
    """An absolute path inside the trainer pod (e.g. baked into a custom image)."""
    file_format: FileFormat = "auto"
    """File format; `auto` reads the extension (.jsonl, .json, .parquet, .csv, with .gz/.zst)."""

    model_config = with_cel(*SOURCE_RULES)

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        check_sources(self, SOURCE_KINDS)
        return self


def is_quantity(value: str) -> bool:
    """True when `value` parses as a Kubernetes quantity."""
    return re.match(QUANTITY_PATTERN, value) is not None


PositiveInt = Annotated[int, Field(gt=0)]
