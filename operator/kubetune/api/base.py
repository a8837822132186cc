"""The base model every API object derives from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields refused.

    Refusing unknown fields matters: a typo such as `learningrate` would otherwise be
    dropped silently and the job would train with the default.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    def to_k8s(self) -> dict:
        """The wire form: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def with_cel(*rules: dict[str, str]) -> ConfigDict:
    """Model config that attaches CEL rules (`x-kubernetes-validations`) to the CRD schema.

    Each rule has `rule` and `message` (and optionally `fieldPath`, `reason`). The same
    rule is enforced in Python by a model validator on the class, so `kubetune validate`
    catches it offline; tests check both agree against a real API server.
    """
    return ConfigDict(
        **ApiModel.model_config,
        json_schema_extra={"x-kubernetes-validations": [dict(r) for r in rules]},
    )
