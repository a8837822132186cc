"""Loading the resolved TrainerConfig the operator mounts, and what the trainer derives from it.

The file is the whole contract: the validated spec plus the plan. A config the trainer
cannot read is bad input (exit 2): retrying the same ConfigMap will not help.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubetune import contract
from kubetune.api.trainer_config import TRAINER_CONFIG_VERSION, TrainerConfig

from .failures import BadInput


def load_config(path: str | os.PathLike[str] | None = None) -> TrainerConfig:
    """Read and validate the config at `path` (default: $KUBETUNE_CONFIG, then the mount)."""
    where = Path(
        path
        or os.environ.get(contract.ENV_CONFIG)
        or Path(contract.CONFIG_DIR, contract.CONFIG_FILE)
    )
    try:
        raw: Any = yaml.safe_load(where.read_text())
    except FileNotFoundError as err:
        raise BadInput(f"trainer config {where} does not exist; pass --config PATH") from err
    except yaml.YAMLError as err:
        raise BadInput(f"trainer config {where} is not valid YAML/JSON: {err}") from err
    if not isinstance(raw, dict):
        raise BadInput(f"trainer config {where} must be a mapping, got {type(raw).__name__}")
    version = raw.get("version", TRAINER_CONFIG_VERSION)
    if version != TRAINER_CONFIG_VERSION:
        raise BadInput(
            f"trainer config {where} has version {version!r}; this trainer reads version "
            f"{TRAINER_CONFIG_VERSION}. Use a trainer image that matches the operator."
        )
    try:
        return TrainerConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise BadInput(
            f"trainer config {where} is invalid at {loc}: {first['msg']}"
            f" ({err.error_count()} error(s))"
        ) from err


def dump_config(config: TrainerConfig, path: str | os.PathLike[str]) -> Path:
    """Write `config` in its wire form (camelCase JSON, which is also YAML)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(config.model_dump(by_alias=True, mode="json"), indent=2))
    return out


@dataclass(frozen=True)
class RunPaths:
    """Where one run writes, all under the output directory (so a resumed pod finds it)."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def model(self) -> Path:
        """Full fine-tunes save the whole model here."""
        return self.root / "model"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def loss_curve(self) -> Path:
        return self.root / "loss_curve.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def model_card(self) -> Path:
        return self.root / "README.md"

    @property
    def data_report(self) -> Path:
        return self.root / "data-report.json"

    @property
    def baseline(self) -> Path:
        """Baseline scores, kept so a resumed run does not score the base model again."""
        return self.root / "baseline.json"

    @staticmethod
    def of(config: TrainerConfig) -> RunPaths:
        return RunPaths(Path(config.paths.output_dir))
