"""Smoke run of the operator load benchmark (benchmarks/operator_load.py --smoke).

Ten FineTuneJobs applied at once against a dedicated local cluster whose pod runner maps
the trainer image to a no-op: every job must get its trainer Job, and the figures the
benchmark reports must be sane. No timing thresholds: the machine is shared.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from benchmarks.operator_load import run

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        bool(os.environ.get("KUBETUNE_SKIP_CLUSTER")), reason="KUBETUNE_SKIP_CLUSTER is set"
    ),
]


def test_operator_load_smoke(tmp_path: Path) -> None:
    # Its own cluster: the session one cannot map the trainer image to the no-op.
    res = run(jobs=10, max_concurrent_launches=10, drain=30.0, workdir=tmp_path, log=print)
    print(res.table())
    print(res.breakdown())
    assert res.jobs_created == 10, res.table()
    assert len(res.latencies) == 10
    assert all(0 <= x < 120 for x in res.latencies)
    assert 0 <= res.median <= res.pct(0.99) <= res.pct(1.0)
    assert not math.isnan(res.median)
    # The operator made requests, and at least one create per job (Service, ConfigMap, Job).
    assert res.per_job(res.requests_at_launch) >= 3
    assert res.requests_total["urllib3 POST jobs"] >= 10
    assert res.hwm_mib > 20
    assert res.rss_idle_mib > 20
    assert res.cpu_seconds > 0
    assert res.api_errors == 0
    # The no-op trainers run on the 22 fake GPUs and finish: each job ends Succeeded.
    assert res.succeeded == 10, res.breakdown()
    assert res.restarts == 0
