"""A run resumes only its own checkpoints: those of another job (another UID, or the same
UID with another spec) are moved aside, never deleted, and never resumed or scored from;
a checkpoint the user names in spec.training.resumeFrom is used where it now is."""

from __future__ import annotations

import json
from pathlib import Path

from kubetune import contract as c
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import Plan
from kubetune.api.trainer_config import TrainerConfig
from kubetune.operator import manifests
from kubetune.operator.settings import Settings
from kubetune_trainer import identity
from kubetune_trainer.config import RunPaths
from kubetune_trainer.testing import make_plan

SPEC = {
    "model": {"hf": {"repo": "org/base"}},
    "dataset": {"train": {"pvc": {"claimName": "data", "path": "t.jsonl"}}},
}


def config(uid: str, root: Path, **training: object) -> TrainerConfig:
    spec = FineTuneJobSpec.model_validate({**SPEC, "training": training})
    meta = manifests.JobMeta(name="j", namespace="ns", uid=uid)
    plan: Plan = make_plan("lora")
    cfg = manifests.trainer_config(meta, spec, plan, Settings(), 1)
    cfg.paths.output_dir = str(root)
    return cfg


def checkpoint(root: Path, step: int) -> Path:
    path = root / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    return path


def test_the_same_job_keeps_and_resumes_its_own_checkpoints(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path)
    assert identity.claim(paths, config("u1", tmp_path)) is None
    mine = checkpoint(tmp_path, 20)
    (tmp_path / "baseline.json").write_text("{}")
    # a restart of the same job (same UID, same spec): nothing moves
    assert identity.claim(paths, config("u1", tmp_path)) is None
    assert mine.is_dir() and paths.baseline.is_file()
    saved = json.loads((tmp_path / c.IDENTITY_FILE).read_text())
    assert saved["uid"] == "u1" and saved["job"] == "ns/j"


def test_another_jobs_checkpoints_and_baseline_are_moved_aside_untouched(
    tmp_path: Path,
) -> None:
    paths = RunPaths(tmp_path)
    identity.claim(paths, config("u-old", tmp_path))
    old = checkpoint(tmp_path, 40)
    (old / "weights").write_text("the old job's")
    (tmp_path / "baseline.json").write_text('{"zeroShot": 1}')
    advice = identity.claim(paths, config("u-new", tmp_path))
    assert advice is not None and advice["code"] == c.FOREIGN_CHECKPOINTS
    assert "u-old" in advice["message"] and "resumeFrom" in advice["message"]
    aside = tmp_path / c.SUPERSEDED_DIR / "u-old"
    assert (aside / "checkpoints" / "checkpoint-40" / "weights").read_text() == "the old job's"
    assert json.loads((aside / "baseline.json").read_text()) == {"zeroShot": 1}
    assert json.loads((aside / c.IDENTITY_FILE).read_text())["uid"] == "u-old"
    assert not paths.checkpoints.exists() and not paths.baseline.exists()
    assert json.loads((tmp_path / c.IDENTITY_FILE).read_text())["uid"] == "u-new"
    # the named checkpoint is found where it was moved
    named = tmp_path / "checkpoints" / "checkpoint-40"
    assert identity.relocated(named) == aside / "checkpoints" / "checkpoint-40"


def test_a_changed_spec_or_a_missing_identity_is_not_this_runs(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path)
    checkpoint(tmp_path, 10)  # written by an older trainer: no identity file
    assert identity.claim(paths, config("u1", tmp_path)) is not None
    assert (tmp_path / c.SUPERSEDED_DIR / "unknown" / "checkpoints" / "checkpoint-10").is_dir()
    checkpoint(tmp_path, 10)
    advice = identity.claim(paths, config("u1", tmp_path, epochs=5))
    assert advice is not None and "another spec" in advice["message"]
    assert (tmp_path / c.SUPERSEDED_DIR / "u1" / "checkpoints" / "checkpoint-10").is_dir()
    # superseded twice: nothing overwritten
    checkpoint(tmp_path, 10)
    identity.claim(paths, config("u2", tmp_path))
    assert (tmp_path / c.SUPERSEDED_DIR / "u1-2" / "checkpoints" / "checkpoint-10").is_dir()
