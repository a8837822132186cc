"""`kubetune render` output is what a real API server accepts: every example, planned on
the local cluster's pools, renders objects the server creates (dry run) as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, utils

from kubetune.cli.main import main
from tests.fixtures.tiny_model import cached_tiny_base

ROOT = Path(__file__).resolve().parents[2]
POOLS = ROOT / "tests/localcluster/pools.yaml"
CONFIGS = ROOT / "tests/fixtures/model-configs"
MODEL_CONFIG = {  # the examples whose spec gives no architecture
    "demo-lora.yaml": None,  # the tiny base, below
    "eval-forgetting.yaml": CONFIGS / "llama-3.1-8b.json",
    "full-multinode.yaml": CONFIGS / "llama-3.1-8b.json",
    "kueue.yaml": CONFIGS / "mistral-7b-v0.1.json",
    "lora-minimal.yaml": CONFIGS / "llama-3.1-8b.json",
    "qlora-70b.yaml": None,
}


@pytest.mark.parametrize("example", sorted(MODEL_CONFIG))
def test_rendered_objects_are_accepted_by_the_api_server(
    k8s: client.ApiClient, namespace: str, example: str, capsys: Any
) -> None:
    path = ROOT / "examples" / example
    config = MODEL_CONFIG[example]
    if example == "demo-lora.yaml":
        config = cached_tiny_base() / "config.json"
    argv = ["render", str(path), "--pools", str(POOLS)]
    if config is not None:
        argv += ["--model-config", str(config)]
    assert main(argv) == 0, capsys.readouterr().err
    objects = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert objects and objects[-1]["kind"] == "Job"
    for obj in objects:
        obj["metadata"]["namespace"] = namespace
        created = utils.create_from_dict(k8s, obj, namespace=namespace, dry_run="All")
        assert created, obj["kind"]
