"""Starting, waiting on and stopping the daemons of a local cluster (control plane and node)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path


def die_with_parent() -> None:
    """preexec: SIGTERM the child when the process that started it dies (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def spawn(
    argv: list[str],
    log: Path,
    env: Mapping[str, str],
    cwd: Path,
    preexec: Callable[[], None] | None,
    pass_fds: Collection[int] = (),
) -> subprocess.Popen[bytes]:
    """A daemon in a session of its own, output appended to `log`."""
    with open(log, "ab") as logf:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,
            pass_fds=tuple(pass_fds),
        )


def log_tail(log: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


def wait_until(
    what: str,
    ok: Callable[[], bool],
    timeout: float,
    procs: Mapping[str, subprocess.Popen[bytes]],
    log_of: Callable[[str], Path],
    every: float = 0.2,
) -> None:
    """Poll `ok()` (exceptions count as not yet) until it holds; fail at once with the log's
    tail if one of `procs` exits meanwhile, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {p.returncode} while waiting for {what}; "
                    f"log: {log_of(name)}\n{log_tail(log_of(name))}"
                )
        with contextlib.suppress(Exception):
            if ok():
                return
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def terminate(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; reaps `proc` when it is our child."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (proc.poll() is not None) if proc is not None else not alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
