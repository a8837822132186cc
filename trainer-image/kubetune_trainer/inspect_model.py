"""Print what planning needs about a job's inputs to the termination log, compactly.

The operator runs this in a short probe pod before planning, with the trainer's own mounts
and credentials (so the operator needs no access to them): the base model's config.json
(`--model`, only the keys the planner reads) and a cheap count of the training data
(`--dataset`, see `data.count`). The message is `{"config": {...}, "dataset": {...}}`;
counting is best effort (a failure is reported as `{"error": ...}`, never fails the probe).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import yaml
from pydantic import ValidationError

from kubetune import contract as c
from kubetune.api.spec import DatasetSpec, ModelSpec
from kubetune.planner.architecture import CONFIG_KEYS

from . import storage
from .failures import BadInput, Retryable
from .model_source import describe, resolve

KEYS = CONFIG_KEYS
"""What the planner reads; everything else is dropped to stay under the 4 KiB message."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="the spec.model object, YAML or JSON")
    parser.add_argument("--dataset", help="the spec.dataset object, YAML or JSON: count it")


def _write(message: str) -> None:
    path = os.environ.get(c.ENV_TERMINATION_LOG, c.TERMINATION_LOG)
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(message[: c.TERMINATION_MESSAGE_LIMIT])
    except OSError:
        pass
    print(message)


def _fail(reason: str, message: str, code: c.ExitCode) -> int:
    _write(json.dumps({"reason": reason, "message": message}))
    print(message, file=sys.stderr)
    return int(code)


def _count(raw: str) -> dict[str, Any]:
    from .data.count import count_dataset

    try:
        return count_dataset(DatasetSpec.model_validate(yaml.safe_load(raw)))
    except Exception as exc:  # best effort: planning goes on without the size
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def run(args: argparse.Namespace) -> int:
    out: dict[str, Any] = {}
    if args.model:
        try:
            model = ModelSpec.model_validate(yaml.safe_load(args.model))
        except (ValidationError, yaml.YAMLError) as exc:
            _write(json.dumps({"reason": "BadInput", "message": f"spec.model: {exc}"}))
            return int(c.ExitCode.BAD_INPUT)
        storage.use_credentials(s for s in (model.s3, model.gcs) if s is not None)
        try:
            local = resolve(model, c.SCRATCH_DIR, files=["config.json"])
            raw = json.loads((local / "config.json").read_text())
        except Retryable as exc:
            # The store is down or unreachable: the operator probes again after a backoff.
            return _fail("ModelSourceUnreachable", str(exc), c.ExitCode.RETRYABLE)
        except BadInput as exc:  # it names the model's location already
            return _fail("ModelConfigUnreadable", str(exc), c.ExitCode.BAD_INPUT)
        except (OSError, ValueError) as exc:
            # The operator says "cannot read config.json" around this: say only where and why.
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            return _fail("ModelConfigUnreadable", f"{describe(model)}: {why}", c.ExitCode.BAD_INPUT)
        out["config"] = {k: raw[k] for k in KEYS if k in raw}
    if args.dataset:
        out["dataset"] = _count(args.dataset)
    _write(json.dumps(out, separators=(",", ":")))
    return 0
