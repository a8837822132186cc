"""`kubetune plan`: table, JSON and YAML output, exit code 2 on refusal."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from kubetune.cli.plan import add_plan_parser, plan_command

from .test_planner_helpers import CONFIGS, FIXTURES

ROOT = Path(__file__).resolve().parents[2]

JOB = """\
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: demo}
spec:
  model: {hf: {repo: meta-llama/Llama-3.1-8B}}
  dataset: {train: {path: /data/train.jsonl}}
  method: %s
  resources: {maxGPUs: %d}
"""


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_plan_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plan", *argv])
    return plan_command(args)


def job(tmp_path: Path, method: str = "lora", max_gpus: int = 8, extra: str = "") -> str:
    f = tmp_path / "job.yaml"
    f.write_text("# leading comment\n---\n" + JOB % (method, max_gpus) + extra)
    return str(f)


def test_table_with_model_config_and_pools(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = run(
        job(tmp_path),
        "--pools",
        str(FIXTURES / "pools.yaml"),
        "--model-config",
        str(CONFIGS / "llama-3.1-8b.json"),
    )
    out = capsys.readouterr().out
    assert rc == 0
    for needle in (
        "method",
        "lora",
        "ZeRO",
        "memory per GPU (GiB)",
        "weights",
        "reasons:",
        "pools.yaml",
    ):
        assert needle in out


def test_default_catalog_is_mentioned(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(job(tmp_path), "--model-config", str(CONFIGS / "llama-3.1-8b.json")) == 0
    assert "built-in pool catalog" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_machine_output_is_the_status_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture, fmt: str
) -> None:
    rc = run(
        job(tmp_path),
        "--model-config",
        str(CONFIGS / "llama-3.1-8b.json"),
        "-o",
        fmt,
        "--dataset-size",
        "3000",
    )
    text = capsys.readouterr().out
    data = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    assert rc == 0
    assert data["method"] == "lora" and data["trainableParameters"] == 41_943_040
    assert {"zeroStage", "totalGPUs", "predictedPeakGiB", "breakdownGiB", "reasons"} <= set(data)


def test_refusal_exits_2_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = run(job(tmp_path, "full", 2), "--model-config", str(CONFIGS / "llama-3.1-70b.json"))
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert "refused" in captured.err and "use lora or qlora" in captured.err


def test_missing_shape_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(job(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "--model-config" in err and "spec.model.architecture" in err


def test_bad_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: ConfigMap\n")
    assert run(str(bad)) == 2
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text((JOB % ("lora", 1)).replace("method: lora", "method: magic"))
    assert run(str(invalid)) == 2
    assert run(job(tmp_path), "--model-config", str(tmp_path / "absent.json")) == 2
    assert (
        run(
            job(tmp_path),
            "--model-config",
            str(CONFIGS / "llama-3.1-8b.json"),
            "--pools",
            str(tmp_path / "absent.yaml"),
        )
        == 2
    )
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("example", ["qlora-70b.yaml"])
def test_shipped_example_plans_from_its_architecture(
    example: str, capsys: pytest.CaptureFixture
) -> None:
    path = ROOT / "examples" / example
    if not path.exists():
        pytest.skip(f"{example} not in this checkout")
    assert run(str(path), "-o", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "qlora" and data["totalGPUs"] <= 2
