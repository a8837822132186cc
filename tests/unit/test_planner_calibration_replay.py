"""Replays recorded planner calibrations (benchmarks/gpu/calibrate.py) against the planner.

Every `benchmarks/gpu/results/calibration-*.json` recorded on a GPU must still be
predicted within ±10 % by the current memory model; fix a drift with a factor in
`kubetune.planner.calibration.CORRECTIONS`. CPU smoke records (RSS deltas, which the
planner does not model) are replayed for structure only. Until a GPU file exists, the
replay machinery itself is checked against synthetic records built from the planner.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks.gpu import calibrate
from benchmarks.gpu.bench import SIZES

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "results"
RECORDS = sorted(RESULTS.glob("calibration-*.json"))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


GPU_RECORDS = [p for p in RECORDS if calibrate.is_gpu_record(_load(p))]
CPU_RECORDS = [p for p in RECORDS if p not in GPU_RECORDS]

POINTS = [
    {"method": m, "seq_len": s, "micro_batch": b, "checkpointing": c, "precision": "bf16"}
    for m in ("lora", "qlora", "full")
    for s, b, c in ((1024, 1, False), (4096, 4, True))
]


@pytest.mark.parametrize(
    "path",
    GPU_RECORDS or [pytest.param(None, marks=pytest.mark.skip(reason="no GPU calibration yet"))],
    ids=lambda p: p.name if p else "none",
)
def test_recorded_gpu_calibration_within_tolerance(path: Path) -> None:
    doc = _load(path)
    rows = calibrate.replay(doc)
    assert rows, f"{path.name} has no measured points"
    assert not calibrate.failures(doc), "\n".join(calibrate.failures(doc))


@pytest.mark.parametrize("path", CPU_RECORDS, ids=lambda p: p.name)
def test_cpu_smoke_records_replay(path: Path) -> None:
    doc = _load(path)
    assert doc["kind"] == "smoke" and not doc["device"]["cuda"]
    rows = calibrate.replay(doc)
    assert rows and len(rows) == sum(c["status"] == "ok" for c in doc["cases"])
    for row in rows:
        assert math.isfinite(row["predicted_gib"]) and row["predicted_gib"] > 0
        assert row["measured_gib"] is not None


@pytest.mark.parametrize("size", ["1b", "8b"])
def test_replay_accepts_a_record_within_5_percent(size: str) -> None:
    for factor in (0.96, 1.0, 1.05):
        doc = calibrate.synthetic_record(SIZES[size], POINTS, factor)
        rows = calibrate.replay(doc)
        assert len(rows) == len(POINTS)
        assert all(abs(r["error"]) <= 0.05 for r in rows)
        assert calibrate.failures(doc) == []


@pytest.mark.parametrize("factor", [1.2, 0.8])
def test_replay_rejects_a_record_off_by_20_percent(factor: float) -> None:
    doc = calibrate.synthetic_record(SIZES["8b"], POINTS, factor)
    bad = calibrate.failures(doc)
    assert len(bad) == len(POINTS), bad
    assert all("predicted" in line and "measured" in line for line in bad)


def test_replay_uses_the_current_planner(monkeypatch: pytest.MonkeyPatch) -> None:
    """A correction recorded after the measurement changes the replayed prediction."""
    from kubetune.planner import calibration as cal

    doc = calibrate.synthetic_record(SIZES["1b"], POINTS[:1], 1.0)
    assert calibrate.failures(doc) == []
    monkeypatch.setitem(cal.CORRECTIONS, ("lora", "weights"), 1.5)
    assert calibrate.failures(doc), "the replay must predict with today's planner"


def test_skipped_and_failed_points_are_not_replayed() -> None:
    doc = calibrate.synthetic_record(SIZES["1b"], POINTS[:2], 1.0)
    doc["cases"][0] |= {"status": "oom", "measured_peak_gib": None}
    assert len(calibrate.replay(doc)) == 1
