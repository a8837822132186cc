"""The chart's README lists every value with its default, and the schema knows every value."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml

from tests.helmtool import CHART

README = CHART / "README.md"
ROW = re.compile(r"^\| `([A-Za-z0-9_.]+)` \| `(.*)` \| (.+) \|$")


def _values() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def _readme_rows() -> dict[str, tuple[Any, str]]:
    rows: dict[str, tuple[Any, str]] = {}
    text = README.read_text()
    section = text[text.index("\n## Values\n") :]
    end = section.find("\n## ", 1)
    section = section if end < 0 else section[:end]
    for line in section.splitlines():
        m = ROW.match(line)
        if m:
            key, default, description = m.groups()
            assert key not in rows, f"README lists {key} twice"
            rows[key] = (json.loads(default), description)
    return rows


def _get(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        assert isinstance(node, dict) and part in node, f"README lists {path}: not in values"
        node = node[part]
    return node


def _leaves(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaves(value, path + ".")
        else:
            yield path


def test_readme_lists_every_value() -> None:
    rows = _readme_rows()
    missing = [
        leaf
        for leaf in _leaves(_values())
        if not any(leaf == key or leaf.startswith(key + ".") for key in rows)
    ]
    assert not missing, f"values missing from charts/kubetune/README.md: {missing}"


def test_readme_defaults_are_the_values_defaults() -> None:
    values = _values()
    for key, (default, description) in _readme_rows().items():
        assert _get(values, key) == default, f"README default of {key} is stale"
        assert description.strip() and "MISSING" not in description, key


def _schema_node(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref:
        node: Any = root
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return dict(node)
    return schema


def test_schema_describes_every_value() -> None:
    root = json.loads((CHART / "values.schema.json").read_text())
    assert root["additionalProperties"] is False
    for leaf in _leaves(_values()):
        node = root
        for part in leaf.split("."):
            node = _schema_node(node, root)
            if "properties" not in node and node.get("type") == "object":
                break  # a free-form Kubernetes object (resources, affinity, ...)
            props = node.get("properties", {})
            assert part in props, f"values.schema.json lacks {leaf}"
            node = props[part]


def test_schema_objects_are_closed() -> None:
    """Every object with declared properties refuses unknown keys (typos fail the install)."""
    root = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: Any, path: str) -> Iterator[str]:
        if isinstance(node, dict):
            # imagePullSecrets/extraEnv items mirror Kubernetes types and stay open.
            if (
                "properties" in node
                and node.get("additionalProperties") is not False
                and not path.endswith(("imagePullSecrets.items", "extraEnv.items"))
            ):
                yield path
            for key, sub in node.items():
                yield from walk(sub, f"{path}.{key}" if path else key)

    open_objects = list(walk(root, ""))
    assert not open_objects, open_objects
