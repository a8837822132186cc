"""Print the base model's config.json (compact) to the termination log.

The operator runs this in a short probe pod when it needs the model's shape to plan
and the spec gives no `architecture`: the pod reads the model where it lives with the
trainer's own mounts and credentials, so the operator needs no access to them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml
from pydantic import ValidationError

from kubetune import contract as c
from kubetune.api.spec import ModelSpec

from .failures import BadInput, Retryable
from .model_source import describe, resolve

# What the planner reads; everything else is dropped to stay under the 4 KiB message.
KEYS = (
    "model_type",
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "d_model",
    "ffn_dim",
    "attention_bias",
    "mlp_bias",
    "text_config",
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the spec.model object, YAML or JSON")


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


def run(args: argparse.Namespace) -> int:
    try:
        model = ModelSpec.model_validate(yaml.safe_load(args.model))
    except (ValidationError, yaml.YAMLError) as exc:
        _write(json.dumps({"reason": "BadInput", "message": f"spec.model: {exc}"}))
        return int(c.ExitCode.BAD_INPUT)
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
    compact = {k: raw[k] for k in KEYS if k in raw}
    _write(json.dumps(compact, separators=(",", ":")))
    return 0
