"""Generates the FineTuneJob CRD from the pydantic models (`python -m kubetune.api.crd`).

The models are the one source of truth: this turns their JSON Schema (draft 2020-12)
into a Kubernetes structural OpenAPI v3 schema. A test regenerates it and fails when
`crds/finetunejob.yaml` drifts.
"""

from __future__ import annotations

import copy
import re
import sys
from typing import Any

import yaml

from .constants import (
    CATEGORIES,
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)
from .spec import FineTuneJobSpec
from .status import FineTuneJobStatus

# Fields fixed once the workload exists (status.startTime set). `suspend` stays mutable so
# Kueue and users can pause; metadata is not in spec, so labels stay mutable too.
IMMUTABLE_AFTER_LAUNCH_EXCEPT = ("suspend",)

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Method", "type": "string", "jsonPath": ".status.plan.method"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".status.plan.totalGPUs"},
    {
        "name": "Progress %",
        "type": "number",
        "jsonPath": ".status.progress.percent",
        "description": "Percentage of the optimizer steps done",
    },
    {"name": "Eval loss", "type": "number", "jsonPath": ".status.evaluation.final.loss"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    # `kubectl get -o wide`: step, loss and ETA while training, else the latest news.
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
]
# A job the operator has not seen yet reads `status: {observedGeneration: 0}` (the API
# server applies this default on every read), so kstatus (Flux) says InProgress
# ("generation is 1, but latest observed generation is 0") instead of Current, and Argo
# CD's health check says Progressing.
STATUS_DEFAULT = {"observedGeneration": 0}

# Bounds keep CEL cost estimates finite (the API server refuses unbounded rules).
DEFAULT_MAX_LENGTH = 4096
DEFAULT_MAX_ITEMS = 256
DEFAULT_MAX_PROPERTIES = 64

_DROP = {"title", "additionalProperties", "$defs", "discriminator"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs, collapse Optional anyOfs and translate to OpenAPI v3 structural form."""
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        # Sibling keys of a $ref (description, default) describe this use; they win.
        target.update(node)
        node = target
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unsupported union in schema: {options}")
        merged = dict(options[0])
        merged.update(node)
        node = merged
        if node.get("default", "x") is None:
            del node["default"]
        return _resolve(node, defs)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if isinstance(node.get("description"), str):
        node["description"] = unwrap(node["description"])
    additional = node.get("additionalProperties")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out[key] = {k: _resolve(v, defs) for k, v in value.items()}
        elif key in ("items",):
            out[key] = _resolve(value, defs)
        elif key == "minProperties":
            out[key] = value
        else:
            out[key] = value
    if isinstance(additional, dict):
        out["additionalProperties"] = _resolve(additional, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    _bound(out)
    return out


_BREAK = re.compile(r"(?<!\n)\n(?!\n|\s*(?:[-*] |\d+\. ))")


def unwrap(text: str) -> str:
    """Docstrings are wrapped at 100 columns; `kubectl explain` wraps again, so a kept line
    break prints a sentence broken in two. Joins the lines of each paragraph (blank lines
    and list items keep their breaks)."""
    return re.sub(r"[ \t]*" + _BREAK.pattern + r"[ \t]*", " ", text.strip())


def _bound(schema: dict[str, Any]) -> None:
    t = schema.get("type")
    if t == "string" and "enum" not in schema and "maxLength" not in schema:
        schema["maxLength"] = DEFAULT_MAX_LENGTH
    elif t == "array" and "maxItems" not in schema:
        schema["maxItems"] = DEFAULT_MAX_ITEMS
    elif t == "object" and "additionalProperties" in schema and "maxProperties" not in schema:
        schema["maxProperties"] = DEFAULT_MAX_PROPERTIES


def _schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")  # type: ignore[attr-defined]
    defs = raw.get("$defs", {})
    return _resolve(raw, defs)


def immutability_rule() -> dict[str, str]:
    """Root-level transition rule: spec is frozen once status.startTime is set."""
    fields = [
        f.alias or name
        for name, f in FineTuneJobSpec.model_fields.items()
        if (f.alias or name) not in IMMUTABLE_AFTER_LAUNCH_EXCEPT
    ]
    checks = " && ".join(
        f"(has(self.spec.{f}) == has(oldSelf.spec.{f}) && "
        f"(!has(self.spec.{f}) || self.spec.{f} == oldSelf.spec.{f}))"
        for f in fields
    )
    return {
        "rule": f"!has(oldSelf.status) || !has(oldSelf.status.startTime) || ({checks})",
        "message": "spec is immutable once the job has launched (only spec.suspend may"
        " change); create a new FineTuneJob instead",
        "reason": "FieldValueForbidden",
    }


def openapi_schema() -> dict[str, Any]:
    spec = _schema(FineTuneJobSpec)
    status = {**_schema(FineTuneJobStatus), "default": STATUS_DEFAULT}
    return {
        "type": "object",
        "description": "FineTuneJob fine-tunes a language model on your data; kubetune plans"
        " the method, DeepSpeed stage and GPU shape, launches the trainer and reports"
        " progress and evaluation.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "maxLength": 64,
                "description": "kubetune.io/v1alpha1",
            },
            "kind": {"type": "string", "maxLength": 64, "description": "FineTuneJob"},
            # The API server allows only rules on metadata.name and generateName here. On
            # the field itself, the error names `metadata.name`, as `kubetune validate` does.
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "description": "The job's name; its child objects add suffixes to it.",
                        "maxLength": 253,
                        "x-kubernetes-validations": [
                            {
                                "rule": f"size(self) <= {MAX_NAME_LENGTH}",
                                "message": f"must be at most {MAX_NAME_LENGTH} characters"
                                " (child objects append suffixes)",
                            }
                        ],
                    }
                },
            },
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [
            immutability_rule(),
        ],
    }


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "kubetune"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated from operator/kubetune/api by `make crds`. Do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
