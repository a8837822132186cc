"""Checkpoints that are either complete or invisible.

The Trainer writes a checkpoint into `checkpoints/.staging/checkpoint-N`; only when every
rank has finished writing does rank 0 rename it to `checkpoints/checkpoint-N` (a rename is
atomic on one filesystem). A pod killed mid-save leaves only staging debris, which the next
start deletes, so resuming always picks a checkpoint that loads.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

STAGING = ".staging"
PREFIX = "checkpoint"
_NAME = re.compile(rf"^{PREFIX}-(\d+)$")
STATE_FILE = "trainer_state.json"  # written last by the Trainer


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


def list_complete(root: Path) -> list[Checkpoint]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append(Checkpoint(child, int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest(root: Path) -> Checkpoint | None:
    """The newest complete checkpoint, the one to resume from."""
    done = list_complete(root)
    return done[-1] if done else None


def clean_incomplete(root: Path) -> list[Path]:
    """Delete staging leftovers and checkpoint dirs without trainer state (rank 0 only)."""
    removed = []
    staging = root / STAGING
    if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
        removed.append(staging)
    if root.is_dir():
        for child in root.iterdir():
            if _NAME.match(child.name) and not (child / STATE_FILE).is_file():
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


def publish(staged: Path, root: Path) -> Path:
    """Move a fully written checkpoint from staging to its final name."""
    final = root / staged.name
    if final.exists():  # re-saving the same step (e.g. after resume): replace it
        shutil.rmtree(final)
    staged.rename(final)
    # Leave no staging folder behind once nothing is staged in it (TRL also drops its
    # model card README.md into the output dir it saves to): a finished run's checkpoints
    # folder holds only complete checkpoints.
    if not any(child.is_dir() for child in staged.parent.iterdir()):
        shutil.rmtree(staged.parent, ignore_errors=True)
    return final


def rotate(root: Path, keep: int, best: Path | None) -> list[Path]:
    """Keep the newest `keep` complete checkpoints plus `best`; delete the rest."""
    done = list_complete(root)
    survivors = {c.path for c in done[-keep:]} if keep > 0 else set()
    if best is not None:
        survivors.add(best)
    removed = []
    for c in done:
        if c.path not in survivors:
            shutil.rmtree(c.path, ignore_errors=True)
            removed.append(c.path)
    return removed


def best_of(checkpoint: Path) -> Path | None:
    """The best checkpoint recorded in a checkpoint's trainer state, if it still exists."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    best = state.get("best_model_checkpoint")
    return Path(best) if best and Path(best).is_dir() else None
