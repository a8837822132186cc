"""The chart's RBAC, proven end to end: `helm install` (cluster-wide, the default), the
operator Deployment's pod run by the pod runner under the chart's ServiceAccount token (not
admin), the demo LoRA FineTuneJob to Succeeded; then the API server's audit log says which
verbs the operator used, and they must be exactly what the chart grants.

A dedicated cluster with `audit=True` (Metadata level), so the log holds only this test's
traffic. See docs/testing.md, "Proving the RBAC".
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.demo_volume import write_demo_volume
from tests.helmtool import CHART, helm, template
from tests.integration.harness import TRAINING_STALL, hostpath_claim, phase_is, wait_for
from tests.localcluster.cluster import LocalCluster, leftover_processes
from tests.waits import SAFETY_LIMIT

# The training wait follows progress (tests.waits); the timeout only stops a hang elsewhere.
pytestmark = [pytest.mark.trainer, pytest.mark.slow, pytest.mark.timeout(SAFETY_LIMIT)]
ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples/demo-lora.yaml"
POOLS = ROOT / "tests/localcluster/pools.yaml"
RELEASE = "kubetune"

# (apiGroup, resource, verb) the chart grants that a short, successful single-node run does
# not exercise; each is a code path of its own. Everything else granted must show up in the
# audit log, and every entry here must still be granted (the list cannot go stale silently).
UNUSED_ALLOWED: dict[tuple[str, str, str], str] = {
    ("kubetune.io", "finetunejobs", "delete"): (
        "only when spec.ttlSecondsAfterFinished expires (reconcile.py, the ttl check)"
    ),
    ("batch", "jobs", "delete"): (
        "only on suspend, a failed or stuck attempt, or a passed deadline (the workload is "
        "deleted and relaunched from its checkpoint); a clean first attempt never deletes it"
    ),
    ("", "persistentvolumeclaims", "create"): (
        "only for spec.output.pvc.size (the operator creates the output claim); the demo's "
        "claim exists already"
    ),
    ("", "persistentvolumeclaims", "get"): (
        "only for multi-node plans (their output claim must be ReadWriteMany); the demo"
        " runs on one node"
    ),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _namespace(cluster: LocalCluster, name: str) -> None:
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(ns))
    deadline = time.monotonic() + 30
    while "default" not in cluster.kubectl("get", "sa", "-n", name, "-o", "name"):
        assert time.monotonic() < deadline, f"no default ServiceAccount in {name}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def audited_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster(pools=POOLS, audit=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        assert not leftover_processes(cluster.dir)


def granted_rules(sets: list[str], namespace: str) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every rule of the chart's (Cluster)Roles, as rendered."""
    out: set[tuple[str, str, str]] = set()
    for doc in template(sets=sets, release=RELEASE, namespace=namespace):
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in doc.get("rules") or []:
            for group in rule.get("apiGroups") or []:
                for res in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        out.add((group, res, verb))
    return out


def audit_events(cluster: LocalCluster, user: str) -> list[dict[str, Any]]:
    events = []
    for line in cluster.audit_log.read_text().splitlines():
        ev = json.loads(line)
        if ev.get("user", {}).get("username") == user:
            events.append(ev)
    return events


def used_verbs(events: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    out = set()
    for ev in events:
        ref = ev.get("objectRef")
        if not ref:  # non-resource URLs (discovery, /version): every identity may GET them
            continue
        res = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out.add((ref.get("apiGroup", ""), res, ev["verb"]))
    return out


def can_i(cluster: LocalCluster, user: str, verb: str, resource: str, ns: str) -> bool:
    kind, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, kind, "--as", user, "-n", ns]
    args += ["--subresource", sub] if sub else []
    out = cluster.kubectl(*args, check=False).strip()
    assert out in ("yes", "no"), out
    return out == "yes"


def rules_of(cluster: LocalCluster, user: str, ns: str) -> list[str]:
    out = cluster.kubectl("auth", "can-i", "--list", "--as", user, "-n", ns)
    return sorted({" ".join(line.split()) for line in out.splitlines()[1:] if line.strip()})


def test_demo_succeeds_under_the_charts_rbac_which_is_exactly_what_it_uses(
    audited_cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster = audited_cluster
    op_ns, jobs_ns = "kubetune-system", f"jobs-{secrets.token_hex(2)}"
    _namespace(cluster, op_ns)
    _namespace(cluster, jobs_ns)
    port = _free_port()
    sets = [
        "image.repository=kubetune-operator",
        "image.tag=test",
        f"service.port={port}",
        f"healthPort={_free_port()}",
        f"service.progressURL=http://127.0.0.1:{port}",
        "config.progressIntervalSeconds=2",
        # Leader election on (one replica): its Lease rules must be used too.
        "leaderElection.enabled=true",
    ]
    pools = tmp_path / "values.yaml"
    pools.write_text(yaml.safe_dump({"nodePools": yaml.safe_load(POOLS.read_text())["pools"]}))
    env = {
        **cluster.env(),
        **{f"HELM_{k}_HOME": str(tmp_path / "helm" / k) for k in ("CACHE", "CONFIG", "DATA")},
    }
    args = ["install", RELEASE, str(CHART), "-n", op_ns, "-f", str(pools), "--wait"]
    for s in sets:
        args += ["--set", s]
    helm(*args, "--timeout", "120s", "--kubeconfig", str(cluster.kubeconfig), env=env)
    sa = f"{RELEASE}-kubetune" if "kubetune" not in RELEASE else RELEASE
    operator = f"system:serviceaccount:{op_ns}:{sa}"
    pod = json.loads(cluster.kubectl("get", "pods", "-n", op_ns, "-o", "json"))["items"]
    assert len(pod) == 1 and pod[0]["spec"]["serviceAccountName"] == sa
    assert pod[0]["status"]["phase"] == "Running"

    # --- the demo job, trained by the helm-installed operator pod
    api = cluster.api_client()
    try:
        hostpath_claim(api, jobs_ns, "kubetune-demo", write_demo_volume(tmp_path / "demo"))
        cluster.kubectl("apply", "-n", jobs_ns, "-f", str(DEMO))
        body = wait_for(
            api,
            jobs_ns,
            "demo-lora",
            phase_is("Succeeded", "Failed"),
            TRAINING_STALL,
            "the job to finish",
        )
    finally:
        api.close()
    logs = cluster.pod_runner.logs(op_ns, pod[0]["metadata"]["name"])
    st = body["status"]
    assert st["phase"] == "Succeeded", f"{st.get('message')}\n{logs[-3000:]}"
    ev = st["evaluation"]
    assert ev["final"]["exactMatch"] > ev["baseline"]["exactMatch"]
    # Progress came through the endpoint (the trainer's token reviewed by the operator).
    assert st["progress"]["step"] == st["progress"]["totalSteps"] > 0

    # --- the audit log: every request the operator's identity made
    events = audit_events(cluster, operator)
    assert events, "no request by the operator's ServiceAccount in the audit log"
    denied = sorted(
        {
            f"{e['verb']} {e.get('objectRef', {}).get('resource', e.get('requestURI'))}"
            for e in events
            if e.get("responseStatus", {}).get("code") == 403
        }
    )
    assert not denied, f"requests the chart's RBAC refused: {denied}\n{logs[-3000:]}"
    used = used_verbs(events)
    granted = granted_rules(sets, op_ns)
    missing = sorted(used - granted)
    unused = sorted(granted - used - set(UNUSED_ALLOWED))
    stale = sorted(set(UNUSED_ALLOWED) - granted)
    report = "\n".join(f"  {g or 'core'} {r} {v}" for g, r, v in sorted(used))
    print(f"verbs the operator used (audit log):\n{report}")
    assert not missing, f"used but not granted: {missing}"
    assert not unused, f"granted but never used (drop them or justify in UNUSED_ALLOWED): {unused}"
    assert not stale, f"UNUSED_ALLOWED lists rules the chart no longer grants: {stale}"

    # --- the trainer's identity: nothing beyond what every ServiceAccount holds
    trainer_sa = "default"  # cluster-wide: the job namespace's `default` ServiceAccount
    trainer = f"system:serviceaccount:{jobs_ns}:{trainer_sa}"
    assert not [e for e in audit_events(cluster, trainer) if e.get("objectRef")], (
        "trainer pods called the API server; progress must go to the operator's endpoint"
    )
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", jobs_ns)
    nobody = f"system:serviceaccount:{jobs_ns}:nobody"
    assert rules_of(cluster, trainer, jobs_ns) == rules_of(cluster, nobody, jobs_ns)
    for verb, res in [
        ("get", "pods"),
        ("list", "pods"),
        ("get", "finetunejobs.kubetune.io"),
        ("patch", "finetunejobs.kubetune.io/status"),
        ("create", "events"),
        ("get", "secrets"),
        ("create", "tokenreviews.authentication.k8s.io"),
    ]:
        assert not can_i(cluster, trainer, verb, res, jobs_ns), (verb, res)
