"""Property-based fuzzing of `kubetune validate` and the FineTuneJob models (Hypothesis).

Each example is one of examples/*.yaml with random mutations: a field deleted, renamed
(a typo) or added, a value replaced by one of another type or an extreme one, a list item
doubled, a mapping turned into a list; sometimes the YAML text itself is cut or has a
character inserted. Whatever the text, validation must not raise, every problem must
name the file and a line or a field path, and a manifest it accepts must survive the
round trip through the model's own serialisation (what the operator writes back).

Bounded for `make test`; KUBETUNE_FUZZ_SCALE multiplies the counts (docs/testing.md).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.api import FineTuneJob
from kubetune.api.validate import validate_text
from kubetune.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SCALE = float(os.environ.get("KUBETUNE_FUZZ_SCALE", "1"))
SETTINGS = settings(
    max_examples=int(200 * SCALE),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FILE = "job.yaml"
WHOLE_FILE = ("no FineTuneJob (kubetune.io/v1alpha1) document found",)
"""The one refusal about a whole file: it has no line or field to name."""

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "0", "-1", "1e309", "auto", "16Gi", "s3://", "/", "true", "null"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a parsed YAML document."""
    found = [at]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*at, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths(value, (*at, i))
    return found


def get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


@st.composite
def mutated_manifests(draw: st.DrawFn) -> str:
    docs = list(yaml.safe_load_all(draw(st.sampled_from(EXAMPLES)).read_text()))
    doc = copy.deepcopy(next(d for d in docs if isinstance(d, dict) and d.get("spec")))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(doc)))
        if not where:
            continue
        parent, key = get(doc, where[:-1]), where[-1]
        kind = draw(st.sampled_from(["delete", "replace", "rename", "add", "double", "listify"]))
        if kind == "delete":
            del parent[key]
        elif kind == "replace":
            parent[key] = draw(values)
        elif kind == "rename" and isinstance(key, str) and len(key) > 1:
            cut = draw(st.integers(0, len(key) - 1))
            parent[key[:cut] + key[cut + 1 :]] = parent.pop(key)
        elif kind == "add" and isinstance(parent[key], dict):
            parent[key][draw(st.text(min_size=1, max_size=10))] = draw(values)
        elif kind == "double" and isinstance(parent[key], list) and parent[key]:
            parent[key].append(copy.deepcopy(parent[key][0]))
        elif kind == "listify":
            parent[key] = [parent[key]]
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    damage = draw(st.sampled_from(["none"] * 4 + ["cut", "insert", "yaml"]))
    if damage in ("cut", "insert") and text:
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] if damage == "cut" else text[:at] + draw(st.text(max_size=3)) + text[at:]
    elif damage == "yaml":  # YAML that no dump of plain data produces, on a line of its own
        lines = text.splitlines(keepends=True)
        at = draw(st.integers(0, len(lines)))
        indent = " " * (len(lines[at - 1]) - len(lines[at - 1].lstrip())) if at else ""
        snippet = "".join(indent + line + "\n" for line in draw(st.sampled_from(YAML_SNIPPETS)))
        text = "".join(lines[:at]) + snippet + "".join(lines[at:])
    return text


YAML_SNIPPETS = [
    ["? [a, b]", ": 1"],  # a key that is a list: unhashable in Python
    ["? {a: 1}", ": 2"],
    ["x: !!python/object:os.system ls"],  # a tag the safe loader refuses
    ["x: !custom 1"],
    ["a: &loop [*loop]"],  # a document that contains itself
    ["b: &m", "  c: *m"],
    ["<<: {kind: Other}"],  # a merge key
    ["x: !!binary AAAA"],
    ["x: 2001-12-14"],
    ["y: " + "[" * 2000 + "]" * 2000],  # deeper than the parser's recursion
    ["\t- tab"],
    ["z: \x08"],
    ["---"],  # a second document
    ["--- 42"],
]


@SETTINGS
@given(mutated_manifests())
def test_validate_names_file_and_line_or_field_for_any_mutation(text: str) -> None:
    result = validate_text(text, FILE)
    for problem in result.problems:
        shown = str(problem)
        assert problem.file == FILE and shown.startswith(f"{FILE}:"), shown
        assert problem.line or problem.path or problem.message in WHOLE_FILE, shown
        assert "Traceback" not in shown and "object at 0x" not in shown, shown
    if not result.problems:
        assert result.jobs
        for job in result.jobs:
            # what the operator writes back and reads again must validate, unchanged
            wire = job.model_dump(by_alias=True, exclude_none=True, mode="json")
            again = FineTuneJob.model_validate(wire)
            assert again.model_dump(by_alias=True, exclude_none=True, mode="json") == wire


@settings(SETTINGS, max_examples=int(30 * SCALE))
@given(mutated_manifests())
def test_the_cli_answers_every_mutation_with_an_exit_code_not_a_traceback(text: str) -> None:
    err = io.StringIO()
    with (
        mock.patch("sys.stdin", io.StringIO(text)),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        code = main(["validate", "-"])
    assert code in (0, 1)
    assert "Traceback" not in err.getvalue()
    assert (code == 1) == bool(err.getvalue().strip())
