"""Offline validation of FineTuneJob manifests, with field paths and line numbers.

`kubetune validate` and the operator's `Valid` condition both use `problems_from_error`,
so a user sees the same message locally and on the resource.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .common import QUANTITY_PATTERN
from .constants import API_VERSION, KIND
from .finetunejob import FineTuneJob


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest."""

    path: str
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return (
        json.dumps(value)
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model whose fields live at `loc` (for did-you-mean suggestions)."""
    model: Any = FineTuneJob
    for part in loc:
        if isinstance(part, int):
            continue
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        if part not in fields:
            return None
        ann = fields[part].annotation
        model = next((a for a in (*getattr(ann, "__args__", ()), ann) if _is_model(a)), None)
        if model is None:
            return None
    return model if _is_model(model) else None


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _message(err: Any) -> str:
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    got = f", got {_show(value)}"
    simple = {
        "missing": "required field is missing",
        "int_type": "must be an integer" + got,
        "int_parsing": "must be an integer" + got,
        "int_from_float": "must be a whole number" + got,
        "float_type": "must be a number" + got,
        "float_parsing": "must be a number" + got,
        "bool_type": "must be true or false" + got,
        "bool_parsing": "must be true or false" + got,
        "string_type": "must be a string" + got,
        "model_type": "must be a mapping" + got,
        "model_attributes_type": "must be a mapping" + got,
        "dict_type": "must be a mapping" + got,
        "list_type": "must be a list" + got,
    }
    if kind in simple:
        return simple[kind]
    bounds = {
        "greater_than": (">", "gt"),
        "greater_than_equal": (">=", "ge"),
        "less_than": ("<", "lt"),
        "less_than_equal": ("<=", "le"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"must be {op} {ctx[key]}{got}"
    if kind == "literal_error":
        expected = str(ctx["expected"])
        one = "," not in expected and " or " not in expected
        return f"must be {expected if one else 'one of ' + expected}{got}"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == QUANTITY_PATTERN:
            return f"must be a Kubernetes quantity such as 16Gi, 500m or 8{got}"
        return f"must match {ctx['pattern']}{got}"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else err["msg"].lower()
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters, got {len(str(value))}"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items, got {ctx.get('actual_length')}"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} items"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return str(err["msg"])


def problems_from_error(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> list[Problem]:
    """Readable problems, one per pydantic error, paths in the manifest's camelCase."""
    problems = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        msg = _message(err)
        if err["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            msg = "unknown field"
            if model is not None:
                known = [f.alias or n for n, f in model.model_fields.items()]
                close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
                if close:
                    msg += f" (did you mean {close[0]}?)"
        elif err["type"] == "value_error":
            loc += _rule_field(loc, msg)
        problems.append(Problem(path=_path(loc), message=msg))
    return problems


def _rule_field(loc: tuple[int | str, ...], message: str) -> tuple[str, ...]:
    """Where the API server reports a model-level rule: its CEL rule's `fieldPath` (e.g.
    `.qlora` under `spec`), found by the message the Python validator shares with it."""
    model = _model_at(loc)
    extra: Any = model.model_config.get("json_schema_extra") if model is not None else None
    rules: list[dict[str, str]] = (extra or {}).get("x-kubernetes-validations", [])
    for rule in rules:
        path = rule.get("fieldPath")
        if path and message.startswith(rule["message"]):
            return tuple(p for p in path.split(".") if p)
    return ()


# --------------------------------------------------------------------------- YAML with lines
def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the deepest node along `loc` (its key's line for mapping entries)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _duplicate_keys(node: yaml.Node, loc: tuple[int | str, ...] = ()) -> Iterator[Problem]:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                yield Problem(
                    path=_path((*loc, key.value)),
                    message="duplicate key (the later value would silently win)",
                    line=key.start_mark.line + 1,
                )
            seen.add(key.value)
            yield from _duplicate_keys(value, (*loc, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*loc, i))


@dataclass
class Result:
    """What validating one file found."""

    jobs: list[FineTuneJob]
    problems: list[Problem]


def validate_text(text: str, filename: str = "<stdin>") -> Result:
    """Validates every FineTuneJob document in a YAML text; other kinds are ignored."""
    jobs: list[FineTuneJob] = []
    problems: list[Problem] = []
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.reader.ReaderError as exc:  # a character YAML forbids: no mark, a position
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character
        shown = f"#x{char:04x}" if isinstance(char, int) else repr(char)
        what = f"unacceptable character {shown} ({exc.reason})"
        return Result([], [Problem("", f"YAML syntax error: {what}", filename, line)])
    except yaml.YAMLError as exc:
        return Result([], [_yaml_problem("YAML syntax error", exc, filename)])
    except RecursionError:
        deep = Problem("", "YAML nested too deeply to read", filename, _too_deep(text))
        return Result([], [deep])
    found = 0
    for index, node in enumerate(nodes):
        if node is None:
            continue
        loop = _alias_loop(node)
        if loop is not None:
            problems.append(
                Problem(
                    "",
                    f"document {index + 1} contains itself through an alias (*anchor inside"
                    " &anchor); a manifest is a tree",
                    filename,
                    loop.start_mark.line + 1,
                )
            )
            continue
        try:
            doc = yaml.SafeLoader(text).construct_document(node)
            job, found_here, more = _check_document(doc, node, index, filename)
        except yaml.YAMLError as exc:  # an unhashable key, a tag such as !!python/object
            problems.append(_yaml_problem("YAML error", exc, filename))
            continue
        except RecursionError:
            line = _too_deep(text) or node.start_mark.line + 1
            problems.append(Problem("", "YAML nested too deeply to read", filename, line))
            continue
        found += found_here
        problems += more
        if job is not None:
            jobs.append(job)
    if found == 0 and not problems:
        problems.append(Problem("", f"no {KIND} ({API_VERSION}) document found", filename, None))
    return Result(jobs, problems)


def _check_document(
    doc: Any, node: yaml.Node, index: int, filename: str
) -> tuple[FineTuneJob | None, int, list[Problem]]:
    """(the job, 1 if the document is a FineTuneJob, its problems) for one document."""
    problems: list[Problem] = []
    if not isinstance(doc, dict):
        line = node.start_mark.line + 1
        problems.append(Problem("", f"document {index + 1} is not a mapping", filename, line))
        return None, 0, problems
    if doc.get("kind") != KIND:
        if doc.get("apiVersion") == API_VERSION:
            problems.append(
                Problem(
                    "kind",
                    f"must be {KIND}, got {_show(doc.get('kind'))}",
                    filename,
                    _line_of(node, ("kind",)),
                )
            )
        return None, 0, problems
    dup = list(_duplicate_keys(node))
    problems.extend(Problem(p.path, p.message, filename, p.line) for p in dup)
    try:
        job = FineTuneJob.model_validate(doc)
    except ValidationError as exc:
        for p in problems_from_error(exc):
            loc = tuple(int(x) if x.isdigit() else x for x in _split(p.path))
            problems.append(Problem(p.path, p.message, filename, _line_of(node, loc)))
        return None, 1, problems
    return (None if dup else job), 1, problems


def _too_deep(text: str, depth: int = 100) -> int | None:
    """The line where flow brackets first nest `depth` deep, if any (a hint for the
    message, not a parse: brackets inside quotes count too)."""
    level = 0
    for i, char in enumerate(text):
        level += 1 if char in "[{" else -1 if char in "]}" else 0
        if level >= depth:
            return text.count("\n", 0, i) + 1
    return None


def _yaml_problem(kind: str, exc: yaml.YAMLError, filename: str) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    what = getattr(exc, "problem", None) or str(exc)
    return Problem("", f"{kind}: {what}", filename, line)


def _alias_loop(root: yaml.Node) -> yaml.Node | None:
    """The node at which the document contains itself (`&a [*a]`), if it does: constructing
    or validating such a document would recurse forever. Iterative: manifests may be deep."""
    stack: list[tuple[yaml.Node, frozenset[int]]] = [(root, frozenset())]
    while stack:
        node, above = stack.pop()
        if id(node) in above:
            return node
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            continue
        inner = above | {id(node)}
        stack.extend((child, inner) for child in children)
    return None


def _split(path: str) -> list[str]:
    return [p for p in path.replace("[", ".").replace("]", "").split(".") if p]


def validate_file(path: str | Path) -> Result:
    """Validates a manifest file; an unreadable file is a problem, not an exception."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return Result([], [Problem("", f"cannot read file: {exc}", str(path))])
    return validate_text(text, str(path))
