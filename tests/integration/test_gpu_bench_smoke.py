"""Smoke run of the GPU throughput benchmark (benchmarks/gpu/bench.py --smoke) on the CPU.

A tiny Llama, three timed steps of LoRA: the baseline (plain TRL SFTTrainer) and
kubetune's trainer path must both train, and the results JSON must carry what the GPU
runs report. No timing thresholds: the machine is shared.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(120)]


def test_gpu_bench_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("trl")
    from benchmarks.gpu import bench

    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    out = tmp_path / "smoke.json"
    bench.main(
        [
            "--smoke",
            "--steps",
            "3",
            "--methods",
            "lora",
            "--in-process",
            "--no-readme",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ]
    )
    doc = json.loads(out.read_text())
    assert doc["kind"] == "smoke" and doc["device"]["cuda"] is False
    assert {"torch", "transformers", "peft", "trl"} <= doc["versions"].keys()
    assert doc["date"] and doc["formulas"]["mfu"]
    runs = {(r["method"], r["side"]): r for r in doc["runs"]}
    assert set(runs) == {("lora", "baseline"), ("lora", "kubetune")}
    for r in runs.values():
        assert r["status"] == "ok", r["reason"]
        assert r["timed_steps"] == 3
        assert r["real_tokens"] > 0 and r["tokens_per_s"] > 0
        assert r["mfu"] is None  # n/a on the CPU
        assert r["flops_per_token"] > 0
        assert r["rss_delta_gib"] is not None
    base, kt = runs[("lora", "baseline")], runs[("lora", "kubetune")]
    assert base["settings"]["packing"] is False and kt["settings"]["packing"] is True
    assert kt["predicted_peak_gib"] and kt["predicted_peak_gib"] > 0
    (ratio,) = doc["ratios"]
    assert ratio["method"] == "lora" and ratio["tokens_per_s_ratio"] > 0
