"""The FineTuneJob resource: apiVersion, kind, metadata, spec, status."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from .base import ApiModel
from .constants import MAX_NAME_LENGTH
from .spec import FineTuneJobSpec
from .status import FineTuneJobStatus

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class ObjectMeta(BaseModel):
    """The parts of metadata kubetune checks; the rest passes through untouched."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: Annotated[str, StringConstraints(min_length=1)] | None = None
    generate_name: str | None = Field(default=None, alias="generateName")
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None

    @field_validator("name")
    @classmethod
    def _dns_label(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if len(v) > MAX_NAME_LENGTH:
            raise ValueError(
                f"must be at most {MAX_NAME_LENGTH} characters (child objects append"
                f" suffixes), got {len(v)}"
            )
        if not NAME_RE.match(v):
            raise ValueError(
                "must be a DNS-1035 label: lower-case letters, digits and '-', starting with"
                f" a letter, got {v!r}"
            )
        return v


class FineTuneJob(ApiModel):
    """Fine-tune a language model on your data; kubetune plans the method and GPUs."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(
        default="kubetune.io/v1alpha1", alias="apiVersion"
    )
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None

    def manifest(self) -> dict[str, Any]:
        """The object as it would be applied (status left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"status"})
