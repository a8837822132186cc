"""The operator's only Kubernetes I/O: thin, typed wrappers over the official client.

Reads return plain dicts (camelCase, as the API sends them) so the pure builders and
observers work on the same shapes as in tests. Creation is idempotent by name. Writes do
not turn the API's answer into client model objects (`_preload_content=False`): nothing
reads it, and building a V1Job from JSON costs more CPU than the request itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune.api import GROUP, KIND, PLURAL, VERSION

log = logging.getLogger(__name__)


def _load(resp: Any) -> dict[str, Any]:
    return dict(json.loads(resp.data))


def _drain(resp: Any) -> None:
    """Reads an unparsed answer to its end: only then does urllib3 put the connection
    back into the pool for the next request."""
    _ = resp.data


class Kube:
    """What the operator does to the cluster; nothing else talks to the API."""

    def __init__(
        self,
        api: client.ApiClient,
        component: str = "kubetune-operator",
        background_events: bool = False,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.authn = client.AuthenticationV1Api(api)
        self.component = component
        self.requests = 0
        # Events are posted off the reconcile's path (in order, by one thread) when asked:
        # a launch then waits for its status writes and creates only.
        self._events = ThreadPoolExecutor(1, "events") if background_events else None

    def close(self) -> None:
        """Posts the Events still queued, then stops their thread."""
        if self._events is not None:
            self._events.shutdown(wait=True)

    # ------------------------------------------------------------------ FineTuneJobs
    def get_job_resource(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.requests += 1
        try:
            return _load(
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, _preload_content=False
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patches status fields (only those given) through the status subresource."""
        self.requests += 1
        _drain(
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _preload_content=False
            )
        )

    def delete_job_resource(self, namespace: str, name: str) -> None:
        self.requests += 1
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    # ------------------------------------------------------------------ children
    def create(self, body: dict[str, Any]) -> bool:
        """Creates the object; False when it already exists (idempotent by name)."""
        self.requests += 1
        ns = body["metadata"]["namespace"]
        kind = body["kind"]
        creators: dict[str, Callable[..., Any]] = {
            "ConfigMap": self.core.create_namespaced_config_map,
            "Service": self.core.create_namespaced_service,
            "PersistentVolumeClaim": self.core.create_namespaced_persistent_volume_claim,
            "Pod": self.core.create_namespaced_pod,
            "Job": self.batch.create_namespaced_job,
        }
        try:
            _drain(creators[kind](ns, body, _preload_content=False))
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One child by kind and name (None when absent): whose a taken name is."""
        self.requests += 1
        readers: dict[str, Callable[..., Any]] = {
            "ConfigMap": self.core.read_namespaced_config_map,
            "Service": self.core.read_namespaced_service,
            "PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim,
            "Pod": self.core.read_namespaced_pod,
            "Job": self.batch.read_namespaced_job,
        }
        try:
            return _load(readers[kind](name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_workloads(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.requests += 1
        resp = self.batch.list_namespaced_job(
            namespace, label_selector=selector, _preload_content=False
        )
        return list(_load(resp).get("items", []))

    def get_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.requests += 1
        try:
            return _load(self.batch.read_namespaced_job(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.requests += 1
        try:
            return _load(
                self.core.read_namespaced_persistent_volume_claim(
                    name, namespace, _preload_content=False
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.requests += 1
        resp = self.core.list_namespaced_pod(
            namespace, label_selector=selector, _preload_content=False
        )
        return list(_load(resp).get("items", []))

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.requests += 1
        try:
            return _load(self.core.read_namespaced_pod(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete_workload(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        """Deletes a Job and (in the background) its pods; pods get SIGTERM and the grace."""
        self.requests += 1
        body = client.V1DeleteOptions(
            propagation_policy="Background", grace_period_seconds=grace_seconds
        )
        try:
            self.batch.delete_namespaced_job(name, namespace, body=body)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def delete_pod(self, namespace: str, name: str) -> None:
        self.requests += 1
        try:
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def list_nodes(self) -> list[dict[str, Any]]:
        self.requests += 1
        return list(_load(self.core.list_node(_preload_content=False)).get("items", []))

    # ------------------------------------------------------------------ events, auth
    def list_events(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        """core/v1 Events about one object (by UID: never a deleted namesake's)."""
        self.requests += 1
        resp = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.uid={uid}", _preload_content=False
        )
        return list(_load(resp).get("items", []))

    def event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the FineTuneJob (what `kubectl describe ftj` shows)."""
        meta = body["metadata"]
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        event: dict[str, Any] = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.requests += 1
        if self._events is None:
            self._post_event(meta["namespace"], event)
        else:
            self._events.submit(self._post_event, meta["namespace"], event)

    def _post_event(self, namespace: str, event: dict[str, Any]) -> None:
        try:
            _drain(self.core.create_namespaced_event(namespace, event, _preload_content=False))  # type: ignore[arg-type]
        except ApiException as exc:  # an Event is never worth failing a reconcile
            log.warning("could not post event %s: %s", event["reason"], exc.reason)
        except Exception:  # on the events thread nothing else would say it
            log.exception("could not post event %s", event["reason"])

    def review_token(self, token: str, audience: str) -> dict[str, Any] | None:
        """TokenReview: the authenticated user (with pod name) or None when invalid."""
        self.requests += 1
        review = client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token, audiences=[audience])
        )
        result = self.authn.create_token_review(review)
        status = result.status
        if not status or not status.authenticated or audience not in (status.audiences or []):
            return None
        user = status.user
        if user is None:
            return None
        return {
            "username": user.username,
            "extra": {k: list(v) for k, v in (user.extra or {}).items()},
        }
