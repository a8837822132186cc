"""The local cluster behaves like a real one: CRDs with status, the real scheduler on fake GPU
nodes, pods run by the pod runner, garbage collection, RBAC and PodSecurity, clean shutdown."""

from __future__ import annotations

import json
import secrets
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.localcluster import LocalCluster, leftover_processes
from tests.localcluster.kube import raw

pytestmark = pytest.mark.cluster

H100 = "NVIDIA-H100-80GB-HBM3"
RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def job_pods(core: client.CoreV1Api, ns: str, job: str) -> list[dict[str, Any]]:
    return raw(core.list_namespaced_pod, ns, label_selector=f"job-name={job}")["items"]


def test_crd_and_status_subresource(k8s: client.ApiClient, namespace: str) -> None:
    ext = client.ApiextensionsV1Api(k8s)
    group, plural = "localcluster.kubetune.io", f"widgets{secrets.token_hex(2)}"
    crd: dict[str, Any] = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": "Widget" + plural[7:]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {"phase": {"type": "string"}},
                                },
                            },
                        }
                    },
                }
            ],
        },
    }
    raw(ext.create_custom_resource_definition, crd)
    try:

        def established() -> bool:
            got = raw(ext.read_custom_resource_definition, crd["metadata"]["name"])
            conds = (got.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

        wait_for("CRD Established", established)
        co = client.CustomObjectsApi(k8s)
        kind = crd["spec"]["names"]["kind"]
        body = {
            "apiVersion": f"{group}/v1",
            "kind": kind,
            "metadata": {"name": "w"},
            "spec": {"size": 3},
            "status": {"phase": "ignored-on-create"},
        }
        # Schema validation is real: size must be >= 1.
        with pytest.raises(ApiException) as bad:
            co.create_namespaced_custom_object(
                group, "v1", namespace, plural, {**body, "spec": {"size": 0}}
            )
        assert bad.value.status == 422

        def create() -> dict[str, Any]:
            try:
                return raw(co.create_namespaced_custom_object, group, "v1", namespace, plural, body)
            except ApiException as e:  # discovery may lag Established by a moment
                if e.status == 404:
                    return {}
                raise

        created = wait_for("custom resource created", create, 20)
        assert "status" not in created  # status is only written through the subresource
        raw(
            co.patch_namespaced_custom_object_status,
            group,
            "v1",
            namespace,
            plural,
            "w",
            {"status": {"phase": "Ready"}},
            _content_type="application/merge-patch+json",
        )
        got = raw(co.get_namespaced_custom_object_status, group, "v1", namespace, plural, "w")
        assert got["status"] == {"phase": "Ready"}
        assert got["spec"] == {"size": 3}
    finally:
        raw(ext.delete_custom_resource_definition, crd["metadata"]["name"])


# Run by each pod of the Indexed Job: checks its env and files, talks to its peer over the
# hostname the operator would use, and leaves a termination message.
JOB_SCRIPT = textwrap.dedent(
    """
    import json, os, pathlib, socket, sys, time
    idx = int(os.environ["JOB_COMPLETION_INDEX"])
    me, peer_idx = os.environ["POD_NAME"], 1 - idx
    peer = f"{os.environ['JOB']}-{peer_idx}.{os.environ['SVC']}.{os.environ['POD_NS']}.svc"
    port = int(os.environ["PORT"])
    if idx == 0:
        srv = socket.create_server(("0.0.0.0", port))
        srv.settimeout(60)
        conn, _ = srv.accept()
        got = conn.recv(100).decode()
        conn.sendall(b"pong")
    else:
        for _ in range(300):
            try:
                conn = socket.create_connection((peer + ".cluster.local", port), timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        conn.sendall(b"ping from " + me.encode())
        got = conn.recv(100).decode()
    sa = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
    pathlib.Path("/scratch/out").write_text("scratch works")
    result = {
        "idx": idx,
        "got": got,
        "hostname": socket.gethostname(),
        "cfg_env": os.environ["GREETING"],
        "secret_env": os.environ["PASSWORD"],
        "from_env": os.environ["CFG_mode"],
        "cfg_file": pathlib.Path("/etc/lc/greeting").read_text(),
        "secret_file": pathlib.Path("/etc/lc-secret/password").read_text(),
        "downward": pathlib.Path("/etc/podinfo/name").read_text(),
        "sa_ns": (sa / "namespace").read_text(),
        "token": len((sa / "token").read_text()) > 100,
        "ca": "BEGIN CERTIFICATE" in (sa / "ca.crt").read_text(),
        "cwd": os.getcwd(),
        "python": sys.executable,
        "scratch": pathlib.Path("/scratch/out").read_text(),
    }
    print("RESULT", json.dumps(result), flush=True)
    pathlib.Path("/dev/termination-log").write_text(f"index {idx} done")
    """
)


def test_indexed_gpu_job_is_scheduled_and_run(
    local_cluster: LocalCluster, k8s: client.ApiClient, namespace: str
) -> None:
    core, batch = client.CoreV1Api(k8s), client.BatchV1Api(k8s)
    ns, job, svc = namespace, "train", "train-workers"
    raw(
        core.create_namespaced_config_map,
        ns,
        {"metadata": {"name": "cfg"}, "data": {"greeting": "hello", "mode": "fast"}},
    )
    raw(
        core.create_namespaced_secret,
        ns,
        {"metadata": {"name": "sec"}, "stringData": {"password": "s3cret"}},
    )
    raw(
        core.create_namespaced_service,
        ns,
        {
            "metadata": {"name": svc},
            "spec": {
                "clusterIP": "None",
                "selector": {"job-name": job},
                "ports": [{"port": 29500}],
            },
        },
    )
    port = 20000 + secrets.randbelow(20000)
    container = {
        "name": "trainer",
        "image": "ghcr.io/example/kubetune-trainer:dev",
        "command": ["python", "-c", JOB_SCRIPT],
        "workingDir": "/scratch",
        "securityContext": RESTRICTED,
        "resources": {"limits": {"nvidia.com/gpu": "2", "cpu": "1", "memory": "1Gi"}},
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "JOB", "value": job},
            {"name": "SVC", "value": svc},
            {"name": "PORT", "value": str(port)},
            {
                "name": "GREETING",
                "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}},
            },
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
        ],
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "volumeMounts": [
            {"name": "cfg", "mountPath": "/etc/lc", "readOnly": True},
            {"name": "sec", "mountPath": "/etc/lc-secret", "readOnly": True},
            {"name": "podinfo", "mountPath": "/etc/podinfo"},
            {"name": "scratch", "mountPath": "/scratch"},
        ],
    }
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job},
        "spec": {
            "completions": 2,
            "parallelism": 2,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "subdomain": svc,
                    "nodeSelector": {"nvidia.com/gpu.product": H100},
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": "cfg", "configMap": {"name": "cfg"}},
                        {"name": "sec", "secret": {"secretName": "sec"}},
                        {
                            "name": "podinfo",
                            "downwardAPI": {
                                "items": [
                                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}
                                ]
                            },
                        },
                        {"name": "scratch", "emptyDir": {}},
                    ],
                }
            },
        },
    }
    raw(batch.create_namespaced_job, ns, body)

    def done() -> bool:
        st = raw(batch.read_namespaced_job_status, job, ns).get("status", {})
        if st.get("failed"):
            pods = job_pods(core, ns, job)
            detail = [
                (
                    p["status"].get("containerStatuses"),
                    local_cluster.pod_runner.logs(ns, p["metadata"]["name"], "trainer"),
                )
                for p in pods
            ]
            raise AssertionError(f"job failed: {detail}")
        return st.get("succeeded") == 2

    wait_for("job to succeed", done, 90)
    pods = job_pods(core, ns, job)
    assert len(pods) == 2
    # The real scheduler honoured the selector, toleration and GPU request: 2 GPUs each
    # fit on H100 nodes only.
    assert {p["spec"]["nodeName"] for p in pods} <= {"h100-0", "h100-1"}
    for pod in pods:
        name, idx = (
            pod["metadata"]["name"],
            pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"],
        )
        assert pod["status"]["phase"] == "Succeeded"
        assert pod["status"]["podIP"] == "127.0.0.1"
        term = pod["status"]["containerStatuses"][0]["state"].get("terminated")
        assert term, json.dumps(pod["status"]["containerStatuses"])
        assert term["exitCode"] == 0 and term["reason"] == "Completed"
        assert term["message"] == f"index {idx} done"
        out = local_cluster.pod_runner.logs(ns, name, "trainer")
        # ... and the same through the API server (the fake kubelet's /containerLogs).
        assert local_cluster.kubectl("logs", "-n", ns, name, "-c", "trainer") == out
        result = json.loads(out.split("RESULT ", 1)[1])
        assert result == {
            "idx": int(idx),
            "got": result["got"],
            "hostname": f"{job}-{idx}",
            "cfg_env": "hello",
            "secret_env": "s3cret",
            "from_env": "fast",
            "cfg_file": "hello",
            "secret_file": "s3cret",
            "downward": name,
            "sa_ns": ns,
            "token": True,
            "ca": True,
            "cwd": "/scratch",
            "python": result["python"],
            "scratch": "scratch works",
        }, out
        assert (
            result["got"] == "pong"
            if idx == "1"
            else result["got"].startswith("ping from train-1-")
        )
        # kubetune images run with the project venv's python first on PATH.
        assert Path(result["python"]).parent == Path(sys.executable).parent


def test_unschedulable_without_toleration(k8s: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(k8s)
    pod = {
        "metadata": {"name": "no-toleration"},
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
            "containers": [
                {
                    "name": "c",
                    "image": "busybox",
                    "command": ["true"],
                    "securityContext": RESTRICTED,
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }
    raw(core.create_namespaced_pod, namespace, pod)

    def unschedulable() -> bool:
        st = raw(core.read_namespaced_pod_status, "no-toleration", namespace).get("status", {})
        return any(
            c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
            for c in st.get("conditions", [])
        )

    wait_for("scheduler to report Unschedulable", unschedulable, 30)


def test_init_containers_sidecar_and_failure_message(k8s: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(k8s)

    def sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "image": "busybox",
            "command": ["sh", "-c", script],
            "securityContext": RESTRICTED,
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            **extra,
        }

    pod = {
        "metadata": {"name": "steps"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "initContainers": [
                sh("first", "echo one > /data/order"),
                sh("sidecar", "exec sleep 300", restartPolicy="Always"),
                sh("second", "echo two >> /data/order"),
            ],
            "containers": [
                sh(
                    "main",
                    "cat /data/order; echo boom; exit 3",
                    terminationMessagePolicy="FallbackToLogsOnError",
                ),
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }
    raw(core.create_namespaced_pod, namespace, pod)

    def finished() -> dict[str, Any]:
        st = raw(core.read_namespaced_pod_status, "steps", namespace)["status"]
        return st if st.get("phase") == "Failed" else {}

    st = wait_for("pod to fail", finished, 60)
    main = st["containerStatuses"][0]["state"]["terminated"]
    assert (main["exitCode"], main["reason"]) == (3, "Error")
    assert main["message"].split() == ["one", "two", "boom"]
    inits = {c["name"]: c["state"] for c in st["initContainerStatuses"]}
    assert inits["first"]["terminated"]["reason"] == "Completed"
    assert inits["second"]["terminated"]["reason"] == "Completed"
    assert "terminated" in inits["sidecar"]  # stopped once the main container finished


def test_garbage_collection_kills_and_removes_pods(
    local_cluster: LocalCluster, k8s: client.ApiClient, namespace: str
) -> None:
    core, batch = client.CoreV1Api(k8s), client.BatchV1Api(k8s)
    body = {
        "metadata": {"name": "sleeper"},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "c",
                            "image": "busybox",
                            "command": ["sh", "-c", "echo started; exec sleep 300"],
                            "securityContext": RESTRICTED,
                        }
                    ],
                }
            }
        },
    }
    raw(batch.create_namespaced_job, namespace, body)

    def running() -> list[dict[str, Any]]:
        pods = job_pods(core, namespace, "sleeper")
        return [p for p in pods if p.get("status", {}).get("phase") == "Running"]

    pod = wait_for("pod Running", running, 60)[0]
    st = pod["status"]
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True"
    assert "startTime" in st
    pid = int(st["containerStatuses"][0]["containerID"].rsplit("/", 1)[1])
    assert Path(f"/proc/{pid}").exists()
    raw(batch.delete_namespaced_job, "sleeper", namespace, body={"propagationPolicy": "Background"})
    wait_for("GC to delete the pods", lambda: not job_pods(core, namespace, "sleeper"), 60)
    wait_for("the pod's process to exit", lambda: not Path(f"/proc/{pid}").exists(), 10)


def test_rbac_refuses_service_account_without_permission(
    local_cluster: LocalCluster, k8s: client.ApiClient, namespace: str
) -> None:
    core, rbac = client.CoreV1Api(k8s), client.RbacAuthorizationV1Api(k8s)
    raw(core.create_namespaced_service_account, namespace, {"metadata": {"name": "limited"}})
    raw(
        rbac.create_namespaced_role,
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
    )
    raw(
        rbac.create_namespaced_role_binding,
        namespace,
        {
            "metadata": {"name": "limited-reads-pods"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": namespace}],
        },
    )
    token = raw(
        core.create_namespaced_service_account_token,
        "limited",
        namespace,
        {"spec": {"expirationSeconds": 600}},
    )["status"]["token"]
    cfg = client.Configuration()
    cfg.host = local_cluster.server
    cfg.ssl_ca_cert = k8s.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(cfg) as limited:
        lcore = client.CoreV1Api(limited)
        raw(lcore.list_namespaced_pod, namespace)  # granted by the Role
        with pytest.raises(ApiException) as denied:
            raw(lcore.list_namespaced_secret, namespace)
        assert denied.value.status == 403
        assert "system:serviceaccount:" + namespace + ":limited" in str(denied.value.body)


def test_pod_security_restricted_is_enforced(k8s: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(k8s)
    pod = {
        "metadata": {"name": "priv"},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "busybox",
                    "command": ["true"],
                    "securityContext": {"privileged": True},
                }
            ]
        },
    }
    with pytest.raises(ApiException) as refused:
        raw(core.create_namespaced_pod, namespace, pod)
    assert refused.value.status == 403
    assert "PodSecurity" in str(refused.value.body)


def test_second_cluster_starts_fast_and_leaves_no_process(tmp_path: Path) -> None:
    """A second cluster coexists with the session one and stops without leftovers."""
    pools = tmp_path / "pools.yaml"
    pools.write_text("pools: []\n")
    cluster = LocalCluster(pools=pools, cpu_nodes=1)
    try:
        cluster.start()
        assert cluster.startup_seconds < 30, cluster.startup_seconds
        out = cluster.kubectl(
            "run", "hello", "--image=busybox", "--restart=Never", "--command", "--", "sleep", "300"
        )
        assert "created" in out

        def pod_pid() -> int | None:
            st = cluster.kubectl(
                "get", "pod", "hello", "-o", "jsonpath={.status.containerStatuses[0].containerID}"
            )
            return int(st.rsplit("/", 1)[1]) if st.startswith("localcluster://") else None

        pid = wait_for("pod running", pod_pid, 30)
        pids = [*cluster.pids.values(), pid]
        assert len(leftover_processes(cluster.dir)) >= len(pids)
    finally:
        d = cluster.dir
        cluster.stop()
    assert leftover_processes(d) == []
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]
