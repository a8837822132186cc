"""Counts the operator's Kubernetes API requests, for `benchmarks/operator_load.py`.

The benchmark puts this directory on the operator's PYTHONPATH and sets
KUBETUNE_BENCH_REQUEST_LOG; Python then imports this module at start-up. It wraps
urllib3 (the `kubernetes` client the reconciler uses) and aiohttp (kopf's watches) and
keeps a count (and, for urllib3, the round-trip seconds) per (client, verb, resource),
written as JSON to that file every 0.25 s and at exit. Without the variable it does
nothing. Not product code: the operator's own `Kube.requests` counter is not exported,
and the apiserver's metrics do not tell clients apart.

With KUBETUNE_BENCH_PROFILE set it also starts the sampling profiler (bench_sampler.py), which
writes collapsed stacks of every thread to that file.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

_PATH = os.environ.get("KUBETUNE_BENCH_REQUEST_LOG", "")
_COUNTS: Counter[str] = Counter()
_SECONDS: dict[str, float] = {}
"""Wall time per key in urllib3's urlopen: the request's round trip (to the response
headers), which is how long a reconcile thread waits for the apiserver."""
_LOCK = threading.Lock()


def resource_of(url: str) -> tuple[str, bool]:
    """('pods', False) for /api/v1/namespaces/ns/pods?...; the flag says watch=true."""
    parts = urlsplit(url)
    segs = [s for s in parts.path.split("/") if s]
    watch = parse_qs(parts.query).get("watch", [""])[0] in ("true", "1")
    if segs[:1] == ["api"]:
        segs = segs[2:]
    elif segs[:1] == ["apis"]:
        segs = segs[3:]
    else:
        return (parts.path or "/", watch)
    if len(segs) >= 3 and segs[0] == "namespaces":
        segs = segs[2:]
    if not segs:
        return ("?", watch)
    resource = segs[0]
    if len(segs) >= 3:
        resource += "/" + segs[2]
    return (resource, watch)


def _count(client: str, method: str, url: str, params: Any = None) -> str:
    resource, watch = resource_of(url)
    watch = watch or str((params or {}).get("watch", "")).lower() in ("true", "1")
    verb = "WATCH" if watch else method.upper()
    key = f"{client} {verb} {resource}"
    with _LOCK:
        _COUNTS[key] += 1
    return key


def _dump() -> None:
    with _LOCK:
        data = {"time": time.time(), "counts": dict(_COUNTS), "seconds": dict(_SECONDS)}
    tmp = f"{_PATH}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, _PATH)


def _loop() -> None:
    while True:
        time.sleep(0.25)
        with contextlib.suppress(OSError):
            _dump()


def _install() -> None:
    import urllib3.connectionpool

    pool = urllib3.connectionpool.HTTPConnectionPool
    orig_urlopen = pool.urlopen

    def urlopen(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        key = _count("urllib3", method, url)
        start = time.monotonic()
        try:
            return orig_urlopen(self, method, url, *args, **kwargs)
        finally:
            with _LOCK:
                _SECONDS[key] = _SECONDS.get(key, 0.0) + time.monotonic() - start

    pool.urlopen = urlopen  # type: ignore[method-assign]
    atexit.register(_dump)
    threading.Thread(target=_loop, name="bench-request-log", daemon=True).start()

    try:
        import aiohttp
    except ImportError:
        return
    session = aiohttp.ClientSession
    orig_request = session._request

    async def _request(self: Any, method: str, str_or_url: Any, *args: Any, **kw: Any) -> Any:
        _count("aiohttp", method, str(str_or_url), kw.get("params"))
        return await orig_request(self, method, str_or_url, *args, **kw)

    session._request = _request  # type: ignore[method-assign]


if _PATH:
    _install()
if os.environ.get("KUBETUNE_BENCH_PROFILE"):
    import bench_sampler

    bench_sampler.start(os.environ["KUBETUNE_BENCH_PROFILE"])
