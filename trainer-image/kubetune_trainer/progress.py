"""Rank 0's progress reports to the operator: never blocking, never fatal.

A background thread POSTs the newest `ProgressReport` at most every `intervalSeconds`
with the pod's projected service-account token. Reports are coalesced (only the newest
is kept) and dropped on any error, so a dead operator costs training nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from pathlib import Path

from kubetune.api.trainer_config import TrainerConfig
from kubetune.contract import ProgressReport

log = logging.getLogger(__name__)


class ProgressReporter:
    """Posts the latest report from a daemon thread; `submit` returns immediately."""

    def __init__(
        self,
        url: str | None,
        token_file: str | None,
        interval_seconds: float = 5.0,
        timeout_seconds: float = 2.0,
    ) -> None:
        self.url = url
        self.token_file = Path(token_file) if token_file else None
        self.interval = interval_seconds
        self.timeout = min(timeout_seconds, interval_seconds)
        self.sent = 0
        self.failed = 0
        self._pending: ProgressReport | None = None
        self._wake = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        if url:
            self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
            self._thread.start()

    @classmethod
    def from_config(cls, config: TrainerConfig) -> ProgressReporter:
        p = config.progress
        return cls(p.url, p.token_file, p.interval_seconds)

    def submit(self, report: ProgressReport) -> None:
        """Queue `report`, replacing any not yet sent."""
        if self._thread is None:
            return
        with self._wake:
            self._pending = report
            self._wake.notify()

    def close(self, flush: bool = True) -> None:
        """Send what is pending (bounded by the timeout) and stop the thread."""
        if self._thread is None:
            return
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=self.timeout + 1 if flush else 0.1)

    def _loop(self) -> None:
        last = 0.0
        while True:
            with self._wake:
                while self._pending is None and not self._stopped:
                    self._wake.wait()
                if self._pending is None:
                    return
                stopping = self._stopped
            if not stopping:  # rate limit; a final report goes out at once
                time.sleep(max(0.0, last + self.interval - time.monotonic()))
            with self._wake:
                report, self._pending = self._pending, None
            if report is not None:
                self._post(report)
            last = time.monotonic()
            if stopping:
                return

    def _post(self, report: ProgressReport) -> None:
        body = json.dumps(report.model_dump(by_alias=True, exclude_none=True, mode="json"))
        headers = {"Content-Type": "application/json"}
        try:
            if self.token_file is not None:
                # Re-read each time: the kubelet rotates projected tokens.
                headers["Authorization"] = f"Bearer {self.token_file.read_text().strip()}"
            request = urllib.request.Request(
                str(self.url), data=body.encode(), headers=headers, method="POST"
            )
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read(1024)
            self.sent += 1
        except Exception as err:  # drop it: progress is best effort
            self.failed += 1
            log.debug("progress report dropped: %s", err)
