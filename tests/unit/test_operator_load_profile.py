"""The operator load benchmark's profile summary: busy samples only, inclusive and self."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from benchmarks.operator_load import HOOK, top_functions


def test_top_functions_counts_busy_samples_inclusive_and_self() -> None:
    collapsed = "\n".join(
        [
            "reconcile;threading:Thread.run;reconcile:Reconciler.reconcile;kube:Kube.create 30",
            "reconcile;threading:Thread.run;reconcile:Reconciler.reconcile 10",
            "reconcile;threading:Thread.run;thread:_worker;queue:Queue.get 500",  # idle
            "MainThread;base_events:BaseEventLoop.run_forever;selectors:EpollSelector.select 90",
            "garbage line",
        ]
    )
    lines = top_functions(collapsed, 3, by="total").splitlines()
    # Ties by name.
    assert lines[2] == "| 1 | `reconcile:Reconciler.reconcile` | 25.0 | 100.0 |"
    assert lines[3] == "| 2 | `threading:Thread.run` | 0.0 | 100.0 |"
    assert lines[4] == "| 3 | `kube:Kube.create` | 75.0 | 75.0 |"
    assert lines[-1] == "(40 busy samples at 100 Hz; by thread: reconcile 100%)"
    by_self = top_functions(collapsed, 2).splitlines()
    assert by_self[2:4] == [
        "| 1 | `kube:Kube.create` | 75.0 | 75.0 |",
        "| 2 | `reconcile:Reconciler.reconcile` | 25.0 | 100.0 |",
    ]


def test_sampler_writes_collapsed_stacks_of_other_threads(tmp_path: Path) -> None:
    sys.path.insert(0, str(HOOK))
    try:
        import bench_sampler
    finally:
        sys.path.remove(str(HOOK))
    out = tmp_path / "profile.txt"
    stop = threading.Event()

    def spin_here() -> None:
        while not stop.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin_here, name="spinner_0")
    worker.start()
    bench_sampler.start(str(out), interval=0.005)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "spin_here" not in (
            out.read_text() if out.exists() else ""
        ):
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join()
    text = out.read_text()
    # Pool threads are counted under their prefix; frames are module:qualname.
    assert any(line.startswith("spinner;") and "spin_here" in line for line in text.splitlines()), (
        text[:2000]
    )
    assert "test_sampler_writes_collapsed_stacks_of_other_threads.<locals>.spin_here" in text
