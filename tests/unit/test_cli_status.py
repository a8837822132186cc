"""`kubetune status` renders what the operator wrote."""

from __future__ import annotations

from kubetune.cli.status import progress_line, render_status

BODY = {
    "metadata": {"name": "tiny", "namespace": "demo"},
    "status": {
        "phase": "Succeeded",
        "message": "training finished",
        "plan": {
            "method": "lora",
            "nodes": 1,
            "gpusPerNode": 1,
            "gpuType": "L4-24GB",
            "pool": "l4",
            "zeroStage": 0,
            "microBatchSize": 4,
            "gradientAccumulationSteps": 2,
            "gradientCheckpointing": False,
            "predictedPeakGiB": 1.25,
            "breakdownGiB": {"weights": 0.5, "activations": 0.25},
            "reasons": ["LoRA: the least invasive method that fits"],
            "warnings": ["fewer than 500 examples: thin for LoRA"],
        },
        "progress": {
            "step": 40,
            "totalSteps": 40,
            "percent": 100.0,
            "loss": 0.12,
            "tokensPerSecond": 812.0,
            "etaSeconds": 0,
            "peakMemoryGiB": 1.1,
        },
        "checkpoints": {"latest": "/out/checkpoint-40", "latestStep": 40},
        "evaluation": {
            "baseline": {"exactMatch": 0.0, "loss": 6.2},
            "final": {"exactMatch": 0.9, "loss": 0.3},
            "forgetting": {
                "baselinePerplexity": 50.0,
                "tunedPerplexity": 51.0,
                "increasePercent": 2.0,
                "limitPercent": 3.0,
                "passed": True,
            },
            "passed": True,
        },
        "output": {"adapter": "/out/adapter", "lossCurve": "/out/loss.png"},
    },
}


def test_render_status_shows_plan_progress_and_baseline_vs_tuned() -> None:
    text = render_status(BODY)
    assert "lora on 1x1 L4-24GB (pool l4)" in text
    assert "predicted 1.2 GiB per GPU, measured 1.1 GiB" in text
    assert "Warning:   fewer than 500 examples" in text
    row = next(line for line in text.splitlines() if "exactMatch" in line)
    assert row.split() == ["exactMatch", "0", "0.9"]
    assert "+2.00%, limit 3%): passed" in text
    assert "lossCurve: /out/loss.png" in text


def test_progress_line() -> None:
    line = progress_line(
        {
            "phase": "Running",
            "progress": {
                "step": 10,
                "totalSteps": 40,
                "percent": 25.0,
                "loss": 1.5,
                "etaSeconds": 130,
            },
        }
    )
    assert line.split() == ["Running", "step", "10/40", "(25%)", "loss", "1.5", "ETA", "2m10s"]
    assert progress_line({"phase": "Pending", "message": "waiting"}).endswith("waiting")
