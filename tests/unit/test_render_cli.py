"""`kubetune render`: offline, exactly the objects the operator would create for the plan,
through the operator's own builders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune import contract as c
from kubetune.api import FineTuneJob
from kubetune.api.trainer_config import TrainerConfig
from kubetune.cli.main import main
from kubetune.cli.render import PLACEHOLDER_UID
from kubetune.operator import manifests
from kubetune.operator.settings import Settings
from kubetune.planner import load_config, load_pools, plan

ROOT = Path(__file__).resolve().parents[2]
POOLS = ROOT / "tests/localcluster/pools.yaml"
MISTRAL = ROOT / "tests/fixtures/model-configs/mistral-7b-v0.1.json"
KUEUE = ROOT / "examples/kueue.yaml"


def render(capsys: Any, *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    code = main(["render", *argv])
    out, err = capsys.readouterr()
    return code, [d for d in yaml.safe_load_all(out) if d], err


def test_render_prints_what_the_operator_creates(capsys: Any) -> None:
    code, objects, _ = render(
        capsys, str(KUEUE), "--pools", str(POOLS), "--model-config", str(MISTRAL)
    )
    assert code == 0
    job = FineTuneJob.model_validate(yaml.safe_load(KUEUE.read_text()))
    expected_plan = plan(job.spec, load_config(MISTRAL), load_pools(POOLS))
    meta = manifests.JobMeta(
        name="nightly-lora",
        namespace="default",
        uid=PLACEHOLDER_UID,
        labels=dict(job.metadata.labels or {}),
    )
    assert objects == manifests.launch_objects(
        meta, job.spec, expected_plan, Settings.from_env(), 1
    )
    assert [o["kind"] for o in objects] == ["Service", "ConfigMap", "Job"]


def test_the_kueue_example_renders_a_job_kueue_admits(capsys: Any) -> None:
    """Kueue's batch/Job integration admits a Job that carries the queue-name label and is
    created suspended, with resource requests it can count against the queue's quota. The
    FineTuneJob itself must not be suspended, or no Job exists for Kueue to see."""
    code, objects, _ = render(
        capsys, str(KUEUE), "--pools", str(POOLS), "--model-config", str(MISTRAL)
    )
    assert code == 0
    job = next(o for o in objects if o["kind"] == "Job")
    assert job["metadata"]["labels"][c.KUEUE_QUEUE_LABEL] == "gpu-batch"
    assert job["spec"]["suspend"] is True
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    requests = pod["containers"][0]["resources"]["requests"]
    assert int(requests["nvidia.com/gpu"]) >= 1
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    cfg = TrainerConfig.model_validate(yaml.safe_load(config["data"][c.CONFIG_FILE]))
    assert cfg.spec.suspend is False and cfg.plan.gpu_type == "NVIDIA-L4"


def test_render_refuses_like_plan(capsys: Any, tmp_path: Path) -> None:
    doc = yaml.safe_load(KUEUE.read_text())
    doc["spec"]["resources"]["gpuType"] = "L4-48GB"
    bad = tmp_path / "job.yaml"
    bad.write_text(yaml.safe_dump(doc))
    code, objects, err = render(
        capsys, str(bad), "--pools", str(POOLS), "--model-config", str(MISTRAL)
    )
    assert code == 2 and not objects
    assert "kubetune render" in err and "gpuType" in err


@pytest.mark.parametrize("nodes", [1, 2])
def test_render_uses_the_files_uid_and_shares_the_output_claim(
    capsys: Any, tmp_path: Path, nodes: int
) -> None:
    doc = yaml.safe_load((ROOT / "examples/full-multinode.yaml").read_text())
    doc["metadata"]["uid"] = "1234-abcd"
    doc["spec"]["resources"].update({"minGPUs": 8 * nodes, "maxGPUs": 8 * nodes})
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(doc))
    config = ROOT / "tests/fixtures/model-configs/llama-3.1-8b.json"
    code, objects, _ = render(capsys, str(f), "--pools", str(POOLS), "--model-config", str(config))
    assert code == 0
    claim = next(o for o in objects if o["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == (["ReadWriteMany"] if nodes > 1 else ["ReadWriteOnce"])
    job = next(o for o in objects if o["kind"] == "Job")
    assert job["metadata"]["ownerReferences"][0]["uid"] == "1234-abcd"
    assert job["spec"]["completions"] == nodes
