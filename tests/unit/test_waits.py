"""tests.waits: a wait fails when nothing moved for the stall window, not at a fixed total."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from tests.waits import Stalled, tree_state, wait_progress


def test_a_slow_run_that_keeps_moving_is_waited_for() -> None:
    """Three times the stall window in all, but a step every 0.1 s: not a failure."""
    start = time.monotonic()
    steps = itertools.count()

    def step() -> int:
        return int((time.monotonic() - start) / 0.1)

    got = wait_progress(
        lambda: time.monotonic() - start > 0.9 and next(steps) + 1, step, "a run", stall=0.3
    )
    assert got >= 1 and time.monotonic() - start > 0.9


def test_nothing_moving_fails_after_the_stall_window_saying_what_was_seen() -> None:
    start = time.monotonic()
    with pytest.raises(Stalled, match=r"(?s)a job: nothing moved for \d+ s .*step 7 of 20"):
        wait_progress(
            lambda: None, lambda: 7, "a job", stall=0.3, describe=lambda s: f"step {s} of 20"
        )
    assert 0.3 <= time.monotonic() - start < 2


def test_moving_forever_still_ends_at_the_safety_limit() -> None:
    ticks = itertools.count()
    with pytest.raises(Stalled, match=r"still moving but not done after \d+ s"):
        wait_progress(lambda: None, lambda: next(ticks), "a flapping job", stall=5, limit=0.3)


def test_tree_state_changes_with_any_write(tmp_path: Path) -> None:
    before = tree_state(tmp_path)
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "log").write_text("x")
    after = tree_state(tmp_path)
    assert after != before and after[:2] == (1, 1)
    assert tree_state(tmp_path / "missing") == (0, 0, 0.0)
