"""The CRD is generated from the models and stays in sync with them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from kubetune.api.crd import IMMUTABLE_AFTER_LAUNCH_EXCEPT, crd, render

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds/finetunejob.yaml"


def test_crd_file_is_regenerated_byte_identical() -> None:
    assert CRD_FILE.read_text() == render(), "crds/ drifted from the models: run `make crds`"


def _schema() -> dict[str, Any]:
    version = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]


def _walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_names_and_subresources() -> None:
    c = crd()
    names = c["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "FineTuneJob",
        "finetunejobs",
        ["ftj"],
        ["kubetune"],
    )
    version = c["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = [col["name"] for col in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Method", "GPUs", "Progress %", "Eval loss", "Age", "Message"]


def test_every_field_has_a_description() -> None:
    missing = [
        p
        for p, s in _walk(_schema())
        if p not in ("", ".metadata") and not p.endswith(("[]", "{}")) and "description" not in s
    ]
    assert missing == []


def test_structural_schema_rules() -> None:
    """What the API server refuses: $ref, anyOf without type, additionalProperties: false,
    and unbounded strings/lists where CEL rules need cost bounds."""
    for path, s in _walk(_schema()):
        assert "$ref" not in s and "anyOf" not in s and "title" not in s, path
        assert s.get("additionalProperties") is not False, path
        assert "type" in s or s.get("x-kubernetes-preserve-unknown-fields"), path
        if s.get("type") == "string" and "enum" not in s:
            assert "maxLength" in s, path
        if s.get("type") == "array":
            assert "maxItems" in s, path


def test_descriptions_have_no_line_breaks_inside_paragraphs() -> None:
    """`kubectl explain` wraps descriptions itself: a docstring's own wrapping would print
    sentences broken in two. Only paragraph breaks and list items keep their newline."""
    broken = [
        (path, s["description"])
        for path, s in _walk(_schema())
        if re.search(r"(?<!\n)\n(?![\n\-*]|\d+\. )", s.get("description", ""))
    ]
    assert broken == []


def test_a_new_job_reads_as_not_yet_observed() -> None:
    """The status default makes kstatus (Flux) read a job nobody has reconciled as
    InProgress: observedGeneration 0 differs from every generation."""
    assert _schema()["properties"]["status"]["default"] == {"observedGeneration": 0}


def test_object_references_accept_dns_subdomains() -> None:
    """Secret and claim names may have dots and 253 characters, as Kubernetes allows."""
    from kubetune.api.spec import FineTuneJobSpec

    name = "datasets.v2." + "a" * 240
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"hf": {"repo": "org/m", "tokenSecretRef": {"name": "hf.token"}}},
            "dataset": {"train": {"pvc": {"claimName": name, "path": "t.jsonl"}}},
        }
    )
    assert spec.dataset.train.pvc is not None and spec.dataset.train.pvc.claim_name == name
    pvc = _schema()["properties"]["spec"]["properties"]["dataset"]["properties"]["train"]
    claim = pvc["properties"]["pvc"]["properties"]["claimName"]
    assert claim["maxLength"] == 253 and re.fullmatch(claim["pattern"][1:-1], name)
    for bad in ("Upper", "-lead", "trail.", "a..b", "a" * 254):
        assert not (len(bad) <= 253 and re.fullmatch(claim["pattern"][1:-1], bad)), bad


def test_defaults_are_applied_by_the_server_where_possible() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    assert spec["method"]["default"] == "auto"
    assert spec["training"]["default"]["maxSeqLength"] == 2048
    assert spec["training"]["properties"]["maxSeqLength"]["default"] == 2048
    assert spec["model"]["properties"]["trustRemoteCode"]["default"] is False


def test_cel_rules_present() -> None:
    schema = _schema()
    spec = schema["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("self.lora" in r for r in rules)
    split = spec["properties"]["dataset"]["properties"]["split"]
    assert split["x-kubernetes-validations"][0]["rule"] == "self.validation + self.test < 1.0"
    resources = spec["properties"]["resources"]
    assert "minGPUs <= self.maxGPUs" in resources["x-kubernetes-validations"][0]["rule"]
    root = schema["x-kubernetes-validations"][0]["rule"]
    assert "oldSelf.status.startTime" in root
    for field in IMMUTABLE_AFTER_LAUNCH_EXCEPT:
        assert f"self.spec.{field} " not in root
    assert "self.spec.training == oldSelf.spec.training" in root
