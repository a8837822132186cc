"""kubetune end to end on the machine's real node (tests/localcluster/realnode.py): the chart
installs the operator from the operator image, under its ServiceAccount and RBAC, and trainer
pods run from the trainer image as containers of a real kubelet + containerd, under
restricted Pod Security, with a CNI bridge, kube-proxy, CoreDNS and fake GPUs from a device
plugin. What only a real kubelet does is asserted here: the termination message, projected
tokens reviewed by the operator, memory limits and OOMKilled, cluster DNS for the rendezvous
Service, image pulls that fail.

The module shares one real cluster (`real_cluster`, with an audit log) and one release of the
chart. See docs/testing.md, "The real node".
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubetune import contract as c
from kubetune.api import GROUP, PLURAL, VERSION
from tests.fixtures.demo_volume import DEMO_JOB, demo_job, write_demo_volume
from tests.helmtool import CHART, helm, template
from tests.integration.harness import TRAINING_STALL, hostpath_claim, phase_is, wait_for
from tests.localcluster.cluster import LocalCluster
from tests.localcluster.kube import raw
from tests.localcluster.realnode import NODE_NAME, POD_CIDR, POOLS

pytestmark = [pytest.mark.realnode, pytest.mark.trainer, pytest.mark.slow]
RELEASE = "kubetune"
OPERATOR_NS = "kubetune-system"
OPERATOR = f"system:serviceaccount:{OPERATOR_NS}:{RELEASE}"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
OPERATOR_IMAGE = f"ghcr.io/kubetune/operator:{APP_VERSION}"
TRAINER_IMAGE = f"ghcr.io/kubetune/trainer:{APP_VERSION}"
# The chart's values for this cluster: the real node's pool, fast retries, leader election
# on (one replica) so its Lease rules are used too. The images are the chart's defaults.
SETS = [
    "config.progressIntervalSeconds=1",
    "config.retryBackoffSeconds=1",
    "config.resyncSeconds=5",
    "config.imagePullTimeoutSeconds=20",
    "config.terminationGraceSeconds=20",
    "config.logFormat=full",
    "leaderElection.enabled=true",
]

# (apiGroup, resource, verb) the chart grants that a clean run of the demo does not exercise;
# each is a code path of its own. Everything else granted must show up in the audit log, and
# every entry here must still be granted (the list cannot go stale silently).
UNUSED_ALLOWED: dict[tuple[str, str, str], str] = {
    ("", "events", "list"): (
        "only while a trainer Job has fewer pods than it asks for (refusals.py reads the Job "
        "controller's FailedCreate Events); a demo whose pods appear at once never lists them"
    ),
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
    ("", "configmaps", "get"): (
        "only when a child's name is taken (a crash between create and status write, or a"
        " deleted namesake's ConfigMap not yet garbage-collected): whose is it"
    ),
    ("", "services", "get"): (
        "only when a child's name is taken (as configmaps get): whose is the Service"
    ),
    ("", "persistentvolumeclaims", "get"): (
        "only for multi-node plans (their output claim must be ReadWriteMany); the demo"
        " runs on one node"
    ),
}


# ---------------------------------------------------------------------- fixtures
def _restricted_namespace(cluster: LocalCluster, name: str) -> None:
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(ns))
    deadline = time.monotonic() + 60
    while "default" not in cluster.kubectl("get", "sa", "-n", name, "-o", "name"):
        assert time.monotonic() < deadline, f"no default ServiceAccount in {name}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def release(real_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`helm install` of the chart, cluster-wide, with its default (locally built) images;
    returns the operator pod's name once it runs."""
    tmp = tmp_path_factory.mktemp("helm")
    _restricted_namespace(real_cluster, OPERATOR_NS)
    values = tmp / "values.yaml"
    values.write_text(yaml.safe_dump({"nodePools": yaml.safe_load(POOLS.read_text())["pools"]}))
    env = {
        **real_cluster.env(),
        **{f"HELM_{k}_HOME": str(tmp / k.lower()) for k in ("CACHE", "CONFIG", "DATA")},
    }
    args = ["upgrade", "--install", RELEASE, str(CHART), "-n", OPERATOR_NS, "-f", str(values)]
    for s in SETS:
        args += ["--set", s]
    helm(
        *args, "--wait", "--timeout", "300s", "--kubeconfig", str(real_cluster.kubeconfig), env=env
    )
    # With leader election the Deployment allows all replicas unavailable, so `--wait` does
    # not wait for the pod: wait for the leader to be Ready (it alone opens the progress port).
    deadline, ready = time.monotonic() + 300, list[dict[str, Any]]()
    while not ready:
        pods = json.loads(real_cluster.kubectl("get", "pods", "-n", OPERATOR_NS, "-o", "json"))
        ready = [
            p
            for p in pods["items"]
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", [])
            )
        ]
        assert ready or time.monotonic() < deadline, [p["status"] for p in pods["items"]]
        time.sleep(1)
    return str(ready[0]["metadata"]["name"])


@pytest.fixture
def ns(real_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace enforcing the restricted Pod Security Standard."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:30].strip("-")
    name = f"{slug}-{secrets.token_hex(3)}"
    _restricted_namespace(real_cluster, name)
    yield name
    real_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def api(real_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    a = real_cluster.api_client()
    try:
        yield a
    finally:
        a.close()


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_volume(tmp_path_factory.mktemp("demo-volume"))


# ---------------------------------------------------------------------- helpers
def apply(api: client.ApiClient, ns: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)


def job_and_pods(
    api: client.ApiClient, ns: str, name: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    job = raw(
        client.CustomObjectsApi(api).get_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name
    )
    pods = raw(
        client.CoreV1Api(api).list_namespaced_pod, ns, label_selector=f"{c.LABEL_JOB}={name}"
    )["items"]
    return job, list(pods)


def wait_phase(api: client.ApiClient, ns: str, name: str, *phases: str) -> dict[str, Any]:
    """The job once its phase is one of `phases`, waiting as long as it moves."""
    return wait_for(api, ns, name, phase_is(*phases), TRAINING_STALL, " or ".join(phases))


def condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def events_for(api: client.ApiClient, ns: str, name: str) -> list[dict[str, Any]]:
    items = raw(client.CoreV1Api(api).list_namespaced_event, ns)["items"]
    return [e for e in items if e["involvedObject"]["name"] == name]


def trainer_pods(api: client.ApiClient, ns: str, name: str) -> list[dict[str, Any]]:
    _, pods = job_and_pods(api, ns, name)
    return [p for p in pods if p["metadata"]["labels"].get(c.LABEL_COMPONENT) == "trainer"]


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


def granted_rules() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every rule of the chart's (Cluster)Roles, as rendered."""
    out: set[tuple[str, str, str]] = set()
    for doc in template(sets=SETS, release=RELEASE, namespace=OPERATOR_NS):
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in doc.get("rules") or []:
            for group in rule.get("apiGroups") or []:
                for res in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        out.add((group, res, verb))
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


# ---------------------------------------------------------------------- the node itself
NODE_PROBE = r"""
import json, os, socket
out = {"uid": os.getuid(), "gpus": os.environ.get("NVIDIA_VISIBLE_DEVICES")}
out["kubernetes"] = socket.gethostbyname("kubernetes.default.svc.cluster.local")
with socket.create_connection(("kubernetes.default.svc", 443), timeout=10):
    out["api_reachable"] = True
try:  # nothing may leave the machine
    socket.create_connection(("192.0.2.1", 53), timeout=5).close()
    out["outside"] = "reached"
except OSError as e:
    out["outside"] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"""


def test_the_real_node_is_a_gpu_node_with_cluster_dns_and_services(
    real_cluster: LocalCluster, api: client.ApiClient, ns: str
) -> None:
    node = raw(client.CoreV1Api(api).read_node, NODE_NAME)
    labels, status = node["metadata"]["labels"], node["status"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-L4"
    assert labels["nvidia.com/gpu.count"] == status["allocatable"]["nvidia.com/gpu"] == "2"
    assert status["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://1.6")
    assert status["nodeInfo"]["kubeletVersion"] == "v1.35.4"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "probe",
                    "image": OPERATOR_IMAGE,
                    "command": ["python", "-c", NODE_PROBE],
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    real_cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    deadline = time.monotonic() + 120
    while True:
        body = json.loads(real_cluster.kubectl("get", "pod", "probe", "-n", ns, "-o", "json"))
        if body["status"].get("phase") in ("Succeeded", "Failed"):
            break
        assert time.monotonic() < deadline, body["status"]
        time.sleep(1)
    logs = real_cluster.kubectl("logs", "probe", "-n", ns)
    assert body["status"]["phase"] == "Succeeded", logs
    seen = json.loads(logs.strip().splitlines()[-1])
    assert seen["uid"] == 1000
    assert re.fullmatch(r"GPU-kubetune-[01]", seen["gpus"] or ""), seen  # the device plugin's
    assert seen["kubernetes"] == "10.96.0.1" and seen["api_reachable"]  # CoreDNS, kube-proxy
    assert seen["outside"] != "reached" and "unreachable" in seen["outside"], seen
    assert body["status"]["podIP"].startswith(POD_CIDR.rsplit(".", 2)[0])
    assert body["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")


# ---------------------------------------------------------------------- the demo, audited
def test_demo_succeeds_under_the_charts_rbac_which_is_exactly_what_it_uses(
    real_cluster: LocalCluster, release: str, api: client.ApiClient, ns: str, demo_files: Path
) -> None:
    cluster = real_cluster
    op = json.loads(cluster.kubectl("get", "pod", release, "-n", OPERATOR_NS, "-o", "json"))
    assert op["spec"]["serviceAccountName"] == RELEASE
    assert op["spec"]["containers"][0]["image"] == OPERATOR_IMAGE
    assert op["spec"]["nodeName"] == NODE_NAME
    uid = cluster.kubectl("exec", release, "-n", OPERATOR_NS, "--", "id", "-u").strip()
    assert uid == "65532"

    claim = hostpath_claim(api, ns, "kubetune-demo", demo_files)
    cluster.kubectl("apply", "-n", ns, "-f", str(DEMO_JOB))
    body = wait_phase(api, ns, "demo-lora", "Succeeded", "Failed")
    st = body["status"]
    logs = cluster.kubectl("logs", release, "-n", OPERATOR_NS, check=False)
    assert st["phase"] == "Succeeded", f"{st.get('message')}\n{logs[-3000:]}"
    ev = st["evaluation"]
    assert ev["final"]["exactMatch"] >= ev["baseline"]["exactMatch"] + 0.2
    assert st["progress"]["step"] == st["progress"]["totalSteps"] > 0
    for cond in ("Valid", "Planned", "Launched", "Succeeded", "Ready"):
        assert condition(body, cond)["status"] == "True", cond
    adapter = st["output"]["adapter"].replace(f"{c.PVC_ROOT}/kubetune-demo", str(claim))
    assert (Path(adapter) / "adapter_config.json").is_file()

    # The trainer ran as a container of the trainer image on the real node, and its
    # termination message (written to /dev/termination-log, read by the kubelet) is what the
    # status says.
    (pod,) = trainer_pods(api, ns, "demo-lora")
    assert pod["spec"]["nodeName"] == NODE_NAME
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["image"] == TRAINER_IMAGE and cs["containerID"].startswith("containerd://")
    term = cs["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    summary = c.TerminationSummary.model_validate(json.loads(term["message"])).model_dump(
        by_alias=True, exclude_none=True, mode="json"
    )
    assert summary["output"]["adapter"] == st["output"]["adapter"]
    assert summary["evaluation"]["final"] == ev["final"]
    trainer_log = cluster.kubectl("logs", pod["metadata"]["name"], "-n", ns)
    assert "'loss'" in trainer_log, trainer_log[-2000:]

    # --- the audit log: every request the operator's identity made
    events = audit_events(cluster, OPERATOR)
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
    # Live progress came through the endpoint: only it reviews tokens (the trainer's
    # projected token, audience kubetune).
    assert ("authentication.k8s.io", "tokenreviews", "create") in used
    granted = granted_rules()
    missing = sorted(used - granted)
    unused = sorted(granted - used - set(UNUSED_ALLOWED))
    stale = sorted(set(UNUSED_ALLOWED) - granted)
    report = "\n".join(f"  {g or 'core'} {r} {v}" for g, r, v in sorted(used))
    print(f"verbs the operator used (audit log):\n{report}")
    assert not missing, f"used but not granted: {missing}"
    assert not unused, f"granted but never used (drop them or justify in UNUSED_ALLOWED): {unused}"
    assert not stale, f"UNUSED_ALLOWED lists rules the chart no longer grants: {stale}"

    # --- the trainer's identity: nothing beyond what every ServiceAccount holds
    trainer = f"system:serviceaccount:{ns}:default"  # cluster-wide: the namespace's default
    assert not [e for e in audit_events(cluster, trainer) if e.get("objectRef")], (
        "trainer pods called the API server; progress must go to the operator's endpoint"
    )
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", ns)
    nobody = f"system:serviceaccount:{ns}:nobody"
    assert rules_of(cluster, trainer, ns) == rules_of(cluster, nobody, ns)
    for verb, res in [
        ("get", "pods"),
        ("list", "pods"),
        ("get", "finetunejobs.kubetune.io"),
        ("patch", "finetunejobs.kubetune.io/status"),
        ("create", "events"),
        ("get", "secrets"),
        ("create", "tokenreviews.authentication.k8s.io"),
    ]:
        assert not can_i(cluster, trainer, verb, res, ns), (verb, res)


# ---------------------------------------------------------------------- failures
def test_a_trainer_over_its_memory_limit_is_oomkilled_and_fails_naming_host_memory(
    release: str, api: client.ApiClient, ns: str, demo_files: Path
) -> None:
    hostpath_claim(api, ns, "kubetune-demo", demo_files)
    # The limit is below what Python with torch needs: the kernel OOM-kills the trainer.
    apply(api, ns, demo_job("oom", resources={"memory": "300Mi"}))
    body = wait_phase(api, ns, "oom", "Failed", "Succeeded")
    st = body["status"]
    failed = condition(body, "Failed")
    assert st["phase"] == "Failed" and failed["reason"] == "HostOutOfMemory", st
    assert "exited 137 (OOMKilled)" in failed["message"], failed
    assert "memory limit 300Mi" in failed["message"], failed
    assert "spec.resources.memory" in failed["message"], failed
    # Host memory, not GPU memory: no retry of the same limit, and the GPU plan (its
    # micro-batch) is left as it was (issue 16: it used to be halved on every OOMKilled).
    events = events_for(api, ns, "oom")
    assert not [e for e in events if e["reason"] in ("Restarting", "ReplannedAfterOOM")]
    plan = st["plan"]
    assert (plan["microBatchSize"], plan["gradientAccumulationSteps"]) == (8, 2), plan
    assert st["restarts"] == 0 and st["attempt"] == 1


def test_a_wrong_image_fails_the_job_clearly_without_retrying(
    release: str, api: client.ApiClient, ns: str, demo_files: Path
) -> None:
    hostpath_claim(api, ns, "kubetune-demo", demo_files)
    image = "registry.invalid/kubetune/no-such-trainer:0"
    apply(api, ns, demo_job("badimage", image=image))
    body = wait_phase(api, ns, "badimage", "Failed", "Succeeded")
    st = body["status"]
    failed = condition(body, "Failed")
    assert st["phase"] == "Failed" and failed["reason"] in ("ErrImagePull", "ImagePullBackOff")
    assert image in failed["message"], failed
    assert not st.get("restarts") and (st.get("attempt") or 0) <= 1, st
    time.sleep(10)  # a retry loop would show within the resync period (5 s)
    again = job_and_pods(api, ns, "badimage")[0]["status"]
    assert again["phase"] == "Failed" and again.get("attempt") == st.get("attempt"), again


# ---------------------------------------------------------------------- two pods, one DNS
def test_two_pod_job_rendezvous_by_dns_through_the_headless_service(
    release: str, api: client.ApiClient, ns: str, demo_files: Path
) -> None:
    hostpath_claim(api, ns, "kubetune-demo", demo_files)
    # Two 1-GPU L4 "nodes": the real node's two GPUs host one rank each, in pods of their
    # own with their own IPs; rank 1 finds rank 0 by its name under the headless Service
    # (CoreDNS) and they train over gloo.
    apply(
        api,
        ns,
        demo_job(
            "pair",
            resources={"gpuType": "L4", "minGPUs": 2},
            training={"epochs": 4},
            evaluation={"maxNewTokens": 8, "maxTestSamples": 20},
        ),
    )
    body = wait_phase(api, ns, "pair", "Succeeded", "Failed")
    st = body["status"]
    assert st["phase"] == "Succeeded", st.get("message")
    assert (st["plan"]["nodes"], st["plan"]["gpusPerNode"]) == (2, 1)
    pods = trainer_pods(api, ns, "pair")
    assert sorted(p["status"]["phase"] for p in pods) == ["Succeeded", "Succeeded"]
    assert len({p["status"]["podIP"] for p in pods}) == 2
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == f"pair-a1-0.pair.{ns}.svc" and env["NNODES"] == "2"
    svc = raw(client.CoreV1Api(api).read_namespaced_service, "pair", ns)
    assert svc["spec"]["clusterIP"] == "None"
    assert st["progress"]["step"] == st["progress"]["totalSteps"] > 0
