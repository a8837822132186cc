"""Small helpers over the official `kubernetes` client that work on plain dicts.

The fake kubelet and node agent handle objects as JSON dicts (as a kubelet sees them on the
wire); skipping model deserialisation keeps them simple and fast.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

Obj = dict[str, Any]

SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


def api_client(kubeconfig: str) -> client.ApiClient:
    """An admin ApiClient for the kubeconfig (no global configuration is touched)."""
    return config.new_client_from_config(config_file=kubeconfig)


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
    """Call a generated API method and return the response body as a dict."""
    resp = call(*args, _preload_content=False, **kwargs)
    data = resp.data
    return json.loads(data) if data else {}


def now() -> str:
    """RFC 3339 timestamp, as Kubernetes metav1.Time serialises it."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """metav1.MicroTime (Lease renewTime)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_status(e: BaseException, *codes: int) -> bool:
    return isinstance(e, ApiException) and e.status in codes
