"""Waits that follow progress: they fail only when nothing has moved for a while.

A fixed total fails a slow but healthy run on a loaded machine (the same suite that passes
in ~10 min on a quiet machine took 79 min beside other clusters and trainings, and every
failure was a fixed limit running out while the work still moved). These waits give up
after `stall` seconds in which what `observe()` returns did not change, and then say what
was seen last. `limit` is only a safety net against something that moves forever without
ever finishing (a status that flaps); it is far above any healthy run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
SAFETY_LIMIT = 3600.0
"""Seconds after which even a moving wait gives up."""


class Stalled(AssertionError):
    """Nothing moved for the stall window (or the safety limit ran out)."""


def wait_progress(
    done: Callable[[], T | None],
    observe: Callable[[], Hashable],
    what: str,
    stall: float,
    describe: Callable[[Hashable], str] = repr,
    poll: float = 0.5,
    limit: float = SAFETY_LIMIT,
) -> T:
    """Poll `done()` until it returns something truthy and return that; raise Stalled
    when `observe()` has returned the same value for `stall` seconds, or after `limit`."""
    started = moved = time.monotonic()
    last = observe()
    while True:
        result = done()
        if result:
            return result
        now = time.monotonic()
        seen = observe()
        if seen != last:
            last, moved = seen, now
        elif now - moved > stall:
            raise Stalled(
                f"{what}: nothing moved for {now - moved:.0f} s"
                f" ({now - started:.0f} s in all); last seen:\n{describe(last)}"
            )
        if now - started > limit:
            raise Stalled(
                f"{what}: still moving but not done after {limit:.0f} s; last seen:\n"
                f"{describe(last)}"
            )
        time.sleep(poll)


def tree_state(*roots: Path) -> tuple[int, int, float]:
    """(files, bytes, newest mtime) under `roots`: changes whenever anything is written."""
    files = size = 0
    newest = 0.0
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                try:
                    st = os.stat(os.path.join(folder, name))
                except OSError:  # removed while we walked (checkpoint rotation)
                    continue
                files, size, newest = files + 1, size + st.st_size, max(newest, st.st_mtime)
    return files, size, newest


def tail(path: Path, chars: int = 3000) -> str:
    """The end of a log file, for a failure message."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - chars))
            return fh.read().decode(errors="replace")
    except OSError:
        return f"({path} unreadable)"
