"""Whose checkpoints and baseline.json the output directory holds.

A FineTuneJob deleted and applied again under the same name (or a new job pointed at an
old output path) must not resume the earlier job's checkpoints nor reuse its baseline
scores: they belong to another UID, maybe another spec. The run's identity file
(contract.IDENTITY_FILE: UID and spec hash) says whose they are. Another job's are moved
aside into `superseded/<uid>/`, never deleted, and the run starts fresh; the same job
(a restart after a crash, a resume after suspend) finds its own and resumes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from kubetune import contract
from kubetune.api.trainer_config import TrainerConfig

from .config import RunPaths
from .outputs import write_json

log = logging.getLogger(__name__)


def of(config: TrainerConfig) -> dict[str, str]:
    """This run's identity: the job's UID and its spec hash (the operator's, or computed
    the same way for a config written by hand)."""
    job = config.job
    return {
        "uid": job.uid,
        "specHash": job.spec_hash or contract.spec_hash(config.spec),
        "job": f"{job.namespace}/{job.name}",
    }


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def claim(paths: RunPaths, config: TrainerConfig) -> dict[str, Any] | None:
    """Makes the output directory this run's (rank 0, before anything resumes or reads
    baseline.json). Returns the advice entry when another job's files were moved aside."""
    mine = of(config)
    file = paths.root / contract.IDENTITY_FILE
    found = _read(file)
    same = found is not None and all(found.get(k) == mine[k] for k in ("uid", "specHash"))
    left = [p for p in (paths.checkpoints, paths.baseline) if p.exists()]
    if same or not left:
        paths.root.mkdir(parents=True, exist_ok=True)
        write_json(file, mine)
        return None
    whose = str((found or {}).get("uid") or "unknown")
    aside = _free(paths.root / contract.SUPERSEDED_DIR / whose)
    aside.mkdir(parents=True)
    for path in [*left, *([file] if file.exists() else [])]:
        path.rename(aside / path.name)
    write_json(file, mine)
    if found is None:
        why = "they carry no identity (an older trainer, or another tool, wrote them)"
    elif found.get("uid") != mine["uid"]:
        why = f"they are job {found.get('job')}'s, UID {found.get('uid')}, not this job's"
    else:
        why = "they were trained for another spec (spec hash differs)"
    names = ", ".join(p.name for p in left)
    message = (
        f"{paths.root} held {names} that this run does not resume: {why}; moved to {aside}"
        " (nothing deleted). To continue from one of those checkpoints, name it in"
        " spec.training.resumeFrom"
    )
    log.warning("%s", message)
    return {"code": contract.FOREIGN_CHECKPOINTS, "level": "warning", "message": message}


def _free(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`... when taken (the same job superseded twice)."""
    n, out = 1, path
    while out.exists():
        n += 1
        out = path.with_name(f"{path.name}-{n}")
    return out


def relocated(path: Path) -> Path:
    """`path` itself, or where `claim` moved it: a resumeFrom naming a checkpoint
    (`<run>/checkpoints/checkpoint-N`) that a later run found to be another job's and moved
    to `<run>/superseded/<uid>/checkpoints/` (the newest such move)."""
    if path.exists() or path.parent.name != "checkpoints":
        return path
    run = path.parent.parent
    moved = sorted(
        run.glob(f"{contract.SUPERSEDED_DIR}/*/checkpoints/{path.name}"),
        key=lambda p: p.parent.parent.stat().st_mtime,
    )
    return moved[-1] if moved else path
