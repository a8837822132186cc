"""Smoke run of the operator load benchmark (benchmarks/operator_load.py --smoke).

Ten FineTuneJobs and ten plain Jobs (the Job controller's yardstick) applied at once
against a dedicated local cluster whose pod runner maps the trainer image to a no-op:
every job must get its trainer Job and pod and every plain Job its pod, and the figures
the benchmark reports must be sane. No timing thresholds: the machine is shared.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from benchmarks.operator_load import run, top_functions

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        bool(os.environ.get("KUBETUNE_SKIP_CLUSTER")), reason="KUBETUNE_SKIP_CLUSTER is set"
    ),
]


def test_operator_load_smoke(tmp_path: Path) -> None:
    # Its own cluster: the session one cannot map the trainer image to the no-op.
    profile = tmp_path / "profile.txt"
    res = run(
        jobs=10,
        max_concurrent_launches=10,
        drain=30.0,
        workdir=tmp_path,
        log=print,
        profile=profile,
    )
    print(res.table())
    print(res.breakdown())
    assert res.jobs_created == 10, res.table()
    for lat in (res.to_job, res.to_pod, res.reference):
        assert len(lat.values) == 10, res.table()
        assert all(x < 120 for x in lat.values)
        assert 0 <= lat.median <= lat.pct(0.99) <= lat.pct(1.0)
    # Every object was seen after its create call was sent (from the call's return a loaded
    # machine can show a few ms less than zero: the watch thread ran first).
    assert 0 <= res.least_from_sent < 120, res.least_from_sent
    # A trainer pod comes after its Job; the ratio is of two real p99s.
    assert res.to_pod.pct(1.0) >= min(res.to_job.values)
    assert res.ratio > 0 and not math.isnan(res.ratio)
    # The operator created a Service, a ConfigMap and a Job per FineTuneJob, and made no
    # more requests than the launch needs before the last Job existed.
    for kind in ("services", "configmaps", "jobs"):
        assert res.requests_total[f"urllib3 POST {kind}"] == 10, res.breakdown()
    assert 3 <= res.per_job(res.requests_at_launch) <= 12, res.breakdown()
    assert res.hwm_mib > 20 and res.rss_idle_mib > 20
    assert res.cpu_seconds > 0
    assert res.api_errors == 0
    # The no-op trainers run on the 22 fake GPUs and finish: each job ends Succeeded.
    assert res.succeeded == 10, res.breakdown()
    assert res.phases == {"Succeeded": 10}, res.breakdown()
    assert res.restarts == 0
    # The profile sampled the operator while it launched, down into the reconcile.
    assert "Reconciler.reconcile" in top_functions(profile.read_text(), 200, by="total"), (
        res.profile
    )
