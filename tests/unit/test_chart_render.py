"""The Helm chart renders, lints and wires the operator's settings correctly (no cluster)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune import contract as c
from kubetune.operator.settings import Settings
from kubetune.planner.pools import parse_pools
from tests.helmtool import CHART, CI_VALUES, HelmError, find, helm, one, template

ROOT = Path(__file__).resolve().parents[2]
CI_IDS = [p.stem for p in CI_VALUES]
NS = "kubetune-system"


def _ci(name: str) -> Path:
    return CHART / "ci" / f"{name}.yaml"


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert [ctr["name"] for ctr in pod["containers"]] == ["operator"]
    return dict(pod["containers"][0])


def _env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container(docs)["env"] if "value" in e}


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    """(apiGroup, resource, verb, resourceNames) for every rule of a (Cluster)Role."""
    out = set()
    for r in role["rules"]:
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for v in r["verbs"]:
                    out.add((g, res, v, tuple(r.get("resourceNames", ()))))
    return out


# What the operator does in the namespaces it serves (operator/kubetune/operator/kube.py and
# kopf's watches of the three resources it handles).
NAMESPACED = {("kubetune.io", "finetunejobs", v) for v in ("get", "list", "watch", "delete")} | {
    ("kubetune.io", "finetunejobs/status", "patch"),
    *{("batch", "jobs", v) for v in ("get", "list", "watch", "create", "delete")},
    *{("", "pods", v) for v in ("get", "list", "watch", "create", "delete")},
    ("", "configmaps", "create"),
    ("", "services", "create"),
    ("", "configmaps", "get"),  # a name taken: whose is it (a deleted namesake's?)
    ("", "services", "get"),
    ("", "persistentvolumeclaims", "create"),
    ("", "persistentvolumeclaims", "get"),  # multi-node: the output claim must be RWX
    ("", "events", "create"),
    ("", "events", "list"),  # the Job controller's FailedCreate (pods refused)
}
CLUSTER = {
    ("", "nodes", "list"),
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}


def _plain(rules: set[tuple[str, str, str, tuple[str, ...]]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for g, r, v, names in rules if not names}


# ---------------------------------------------------------------- lint and template
@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_helm_lint_strict(values: Path) -> None:
    out = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_template_renders_valid_objects(values: Path) -> None:
    docs = template([values])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "Service"} <= kinds
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubetune"
        # Only the operator's own children carry managed-by=kubetune (the NetworkPolicy and
        # the operator's selectors rely on it).
        assert d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        cluster_scoped = d["kind"] in {"ClusterRole", "ClusterRoleBinding"}
        assert ("namespace" in d["metadata"]) != cluster_scoped, d["kind"]


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_no_key_appears_twice(values: Path) -> None:
    """PyYAML keeps the last of two equal keys; kubectl kustomize, kubeconform -strict and
    Argo CD/Flux builds refuse the document (tests/integration/test_gitops_health.py runs
    them)."""
    text = helm("template", "kt", str(CHART), "--namespace", NS, "-f", str(values))
    twice = []
    for node in yaml.compose_all(text):
        stack = [node]
        while stack:
            n = stack.pop()
            if isinstance(n, yaml.MappingNode):
                keys = [k.value for k, _ in n.value]
                twice += [(k, n.start_mark.line + 1) for k in set(keys) if keys.count(k) > 1]
                stack += [v for _, v in n.value]
            elif isinstance(n, yaml.SequenceNode):
                stack += n.value
    assert twice == []


def test_every_ci_scenario_is_present() -> None:
    assert set(CI_IDS) == {
        "default-values",
        "namespaced-values",
        "leader-election-monitoring-values",
        "netpol-values",
    }


# ---------------------------------------------------------------- the operator Deployment
@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_operator_pod_is_hardened(values: Path) -> None:
    docs = template([values])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    ctr = _container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = ctr["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    tmp = next(m for m in ctr["volumeMounts"] if m["mountPath"] == "/tmp")
    vol = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert "emptyDir" in vol
    assert ctr["command"] == ["python", "-m", "kubetune.operator"]
    assert ctr["resources"]["requests"] and ctr["resources"]["limits"]


def test_liveness_hits_kopfs_health_endpoint_and_readiness_the_progress_endpoint() -> None:
    """Liveness: kopf's endpoint (a leader-election standby answers on it too). Readiness:
    the progress endpoint, which only the leader opens, so the Service routes to it."""
    docs = template()
    ctr = _container(docs)
    env = _env(docs)
    health = next(p for p in ctr["ports"] if p["name"] == "health")
    assert env["KUBETUNE_LIVENESS"] == f"http://0.0.0.0:{health['containerPort']}/healthz"
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "progress"}
    svc = one(docs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "progress"


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_environment_is_valid_operator_settings(values: Path) -> None:
    docs = template([values])
    env = _env(docs)
    settings = Settings.from_env(env)  # the operator's own parser accepts every value
    svc = one(docs, "Service")
    port = svc["spec"]["ports"][0]
    assert port["port"] == 8081 and port["targetPort"] == "progress"
    assert settings.progress_url == f"http://{svc['metadata']['name']}.{NS}.svc:8081"
    assert settings.progress_listen == "0.0.0.0:8081"
    ctr = _container(docs)
    assert {p["name"]: p["containerPort"] for p in ctr["ports"]}["progress"] == 8081
    assert svc["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert env["KUBETUNE_LOG_FORMAT"] in ("json", "full")


def test_every_operator_setting_is_wired() -> None:
    """Each KUBETUNE_* variable Settings.from_env reads is set by the chart."""
    source = (ROOT / "operator/kubetune/operator/settings.py").read_text()
    read = {tok.strip('"') for tok in source.split() if tok.startswith('"KUBETUNE_')}
    read = {v.rstrip('":,') for v in read}
    env = _env(template([_ci("namespaced-values")]))
    assert read and read <= set(env), sorted(read - set(env))
    assert {"KUBETUNE_LIVENESS", "KUBETUNE_LOG_FORMAT"} <= set(env)


def test_progress_url_can_be_overridden() -> None:
    url = "http://127.0.0.1:18081"
    env = _env(template(sets=[f"service.progressURL={url}"]))
    assert Settings.from_env(env).progress_url == url


def test_defaults() -> None:
    docs = template()
    env = _env(docs)
    s = Settings.from_env(env)
    assert s.namespaces == []  # cluster-wide
    assert s.trainer_image == "ghcr.io/kubetune/trainer:0.1.0"
    assert s.trainer_service_account == "default"
    assert s.pools_file is None and s.discover_pools is True
    assert s.leader_election is False  # one replica: no Lease, no Role for it
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    image = _container(docs)["image"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert image == f"ghcr.io/kubetune/operator:{chart['appVersion']}"
    assert not find(docs, "PodDisruptionBudget")
    assert not find(docs, "NetworkPolicy")
    assert not find(docs, "ServiceMonitor")
    assert not find(docs, "ConfigMap")
    assert not find(docs, "Role")


# ---------------------------------------------------------------- node pools
def test_node_pools_configmap_is_the_operators_pools_file() -> None:
    values = yaml.safe_load(_ci("namespaced-values").read_text())
    docs = template([_ci("namespaced-values")])
    cm = one(docs, "ConfigMap")
    env = _env(docs)
    pools = parse_pools(yaml.safe_load(cm["data"]["pools.yaml"]), "chart")
    assert [p.to_k8s() for p in pools] == [
        p.to_k8s() for p in parse_pools(values["nodePools"], "values")
    ]
    ctr = _container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    mount = next(
        m
        for m in ctr["volumeMounts"]
        if env["KUBETUNE_POOLS_FILE"].startswith(m["mountPath"] + "/")
    )
    assert mount["readOnly"] is True
    vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    key = env["KUBETUNE_POOLS_FILE"][len(mount["mountPath"]) + 1 :]
    assert key in cm["data"]
    assert env["KUBETUNE_DISCOVER_POOLS"] == "false"
    # A pools change rolls the operator.
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/pools" in annotations


def test_localcluster_pools_file_fits_the_schema(tmp_path: Path) -> None:
    """The chart's nodePools take the same list as the local cluster's (and the operator's)
    pools file."""
    pools = yaml.safe_load((ROOT / "tests/localcluster/pools.yaml").read_text())["pools"]
    values = tmp_path / "pools.yaml"
    values.write_text(yaml.safe_dump({"nodePools": pools}))
    docs = template([values])
    cm = one(docs, "ConfigMap")
    assert yaml.safe_load(cm["data"]["pools.yaml"]) == {"pools": pools}


def test_schema_node_pool_matches_the_operators_model() -> None:
    from kubetune.planner.pools import NodePool

    schema = json.loads((CHART / "values.schema.json").read_text())
    pool = schema["definitions"]["nodePool"]
    model = NodePool.model_json_schema(by_alias=True)
    assert set(pool["properties"]) == set(model["properties"])
    assert set(pool["required"]) == set(model["required"])


# ---------------------------------------------------------------- RBAC
def test_cluster_wide_rbac_is_exactly_what_the_operator_uses() -> None:
    docs = template()
    assert not find(docs, "Role") and not find(docs, "RoleBinding")
    role = one(docs, "ClusterRole")
    assert _plain(_rules(role)) == NAMESPACED | CLUSTER
    binding = one(docs, "ClusterRoleBinding")
    sa = one(docs, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NS}
    ]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


def test_namespaced_rbac_role_per_namespace_and_a_small_cluster_role() -> None:
    docs = template([_ci("namespaced-values")])
    cluster = one(docs, "ClusterRole")
    assert _plain(_rules(cluster)) == CLUSTER | {
        ("", "namespaces", "list"),  # kopf follows the namespaces it serves
        ("", "namespaces", "watch"),
    }
    roles = find(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert _plain(_rules(role)) == NAMESPACED
    bindings = find(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["subjects"][0]["namespace"] == NS
    assert Settings.from_env(_env(docs)).namespaces == ["team-a", "team-b"]


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_no_wildcards_and_no_secrets(values: Path) -> None:
    for role in find(template([values]), "ClusterRole") + find(template([values]), "Role"):
        for g, res, verb, names in _rules(role):
            assert "*" not in (g, res, verb)
            assert res not in {"secrets", "roles", "rolebindings", "clusterroles"}
            assert verb not in {"escalate", "bind", "impersonate"}
            # update (a whole-object replace) only on the operator's own Lease.
            assert verb != "update" or (g, res, len(names)) == ("coordination.k8s.io", "leases", 1)


def test_rbac_can_be_left_to_the_platform() -> None:
    docs = template(sets=["rbac.create=false", "serviceAccount.create=false"])
    assert not find(docs, "ClusterRole") and not find(docs, "ServiceAccount")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "default"


# ---------------------------------------------------------------- trainer ServiceAccount
def test_trainer_service_account_per_watched_namespace_without_rbac() -> None:
    docs = template([_ci("namespaced-values")])
    env = _env(docs)
    name = env["KUBETUNE_TRAINER_SERVICE_ACCOUNT"]
    sas = [d for d in find(docs, "ServiceAccount") if d["metadata"]["name"] == name]
    assert sorted(d["metadata"]["namespace"] for d in sas) == ["team-a", "team-b"]
    for sa in sas:
        assert sa["automountServiceAccountToken"] is False
        assert sa["metadata"]["labels"]["app.kubernetes.io/component"] == "trainer"
    subjects = [
        s
        for b in find(docs, "RoleBinding") + find(docs, "ClusterRoleBinding")
        for s in b["subjects"]
    ]
    assert all(s["name"] != name for s in subjects)


def test_named_trainer_service_account_cluster_wide() -> None:
    docs = template(sets=["trainer.serviceAccount.name=trainer"])
    assert _env(docs)["KUBETUNE_TRAINER_SERVICE_ACCOUNT"] == "trainer"
    assert [d["metadata"]["namespace"] for d in find(docs, "ServiceAccount", "trainer")] == [NS]


# ---------------------------------------------------------------- HA, monitoring, network
LEASE_RULES = {
    ("coordination.k8s.io", "leases", "create", ()),
    ("coordination.k8s.io", "leases", "get", ("kt-kubetune",)),
    ("coordination.k8s.io", "leases", "update", ("kt-kubetune",)),
}


def test_leader_election_with_replicas() -> None:
    docs = template([_ci("leader-election-monitoring-values")])
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    # Standbys are never Ready: a rollout must not wait for new pods before stopping old ones.
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "100%"},
    }
    env = _env(docs)
    s = Settings.from_env(env)
    assert s.leader_election is True
    assert (s.lease_name, s.lease_namespace) == ("kt-kubetune", NS)
    # controller-runtime's defaults.
    assert (
        s.lease_duration_seconds,
        s.lease_renew_deadline_seconds,
        s.lease_retry_period_seconds,
    ) == (15, 10, 2)
    pod_name = next(e for e in _container(docs)["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # The Lease's Role: the release namespace only, its own Lease's name where RBAC can.
    role = one(docs, "Role")
    assert role["metadata"]["namespace"] == NS
    assert _rules(role) == LEASE_RULES
    binding = one(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert not {r for r in _rules(one(docs, "ClusterRole")) if r[1] == "leases"}
    # Nothing of kopf peering or a PodDisruptionBudget (only the leader is ever Ready).
    assert not find(docs, "PodDisruptionBudget")
    assert not [d for d in docs if "kopf" in d["apiVersion"]]


def test_namespaced_leader_election_keeps_the_lease_in_the_release_namespace() -> None:
    docs = template(
        [_ci("namespaced-values")],
        sets=["leaderElection.enabled=true", "leaderElection.leaseName=op-lock"],
    )
    assert one(docs, "Deployment")["spec"]["replicas"] == 1
    roles = {r["metadata"]["namespace"]: r for r in find(docs, "Role")}
    assert sorted(roles) == ["kubetune-system", "team-a", "team-b"]
    assert _rules(roles[NS]) == {
        (g, r, v, ("op-lock",) if names else ()) for g, r, v, names in LEASE_RULES
    }
    for ns in ("team-a", "team-b"):
        assert not {r for r in _rules(roles[ns]) if r[1] == "leases"}
    assert Settings.from_env(_env(docs)).lease_name == "op-lock"


def test_leader_election_timings_are_checked() -> None:
    env = _env(
        template(sets=["leaderElection.enabled=true", "leaderElection.retryPeriodSeconds=1"])
    )
    assert Settings.from_env(env).lease_retry_period_seconds == 1
    with pytest.raises(HelmError, match="leaseDurationSeconds > renewDeadlineSeconds"):
        template(sets=["leaderElection.renewDeadlineSeconds=20"])
    with pytest.raises(ValueError, match="lease duration > renew deadline"):
        Settings.from_env({"KUBETUNE_LEASE_RETRY_PERIOD_SECONDS": "10"})


def test_service_monitor_scrapes_metrics_on_the_progress_port() -> None:
    docs = template([_ci("leader-election-monitoring-values")])
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"] == [{"port": "progress", "path": "/metrics", "interval": "15s"}]
    svc_labels = one(docs, "Service")["metadata"]["labels"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc_labels.items()


def test_network_policy_admits_trainers_and_scrapers_on_8081() -> None:
    docs = template([_ci("netpol-values")])
    np = one(docs, "NetworkPolicy")
    spec = np["spec"]
    assert spec["podSelector"] == one(docs, "Deployment")["spec"]["selector"]
    assert spec["policyTypes"] == ["Ingress"]
    trainers, scrapers = spec["ingress"]
    peer = trainers["from"][0]
    # The label the operator puts on every trainer pod (operator/kubetune/operator/manifests.py).
    assert peer["podSelector"]["matchLabels"] == {c.LABEL_MANAGED_BY: c.MANAGED_BY}
    assert peer["namespaceSelector"]["matchExpressions"][0]["values"] == ["ml"]
    assert trainers["ports"] == [{"port": "progress", "protocol": "TCP"}]
    assert scrapers["ports"] == [{"port": "progress", "protocol": "TCP"}]
    assert scrapers["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    cluster_wide = one(template(sets=["networkPolicy.enabled=true"]), "NetworkPolicy")
    assert cluster_wide["spec"]["ingress"][0]["from"][0]["namespaceSelector"] == {}
    assert len(cluster_wide["spec"]["ingress"]) == 1


# ---------------------------------------------------------------- the schema refuses
BAD_VALUES = [
    (["replicas=two"], "/replicas': got string, want integer"),
    (["replicas=-1"], "/replicas"),
    (["replikas=2"], "additional properties 'replikas' not allowed"),
    (["image.pullPolicy=Sometimes"], "/image/pullPolicy': value must be one of"),
    (["trainer.imagePullPolicy=always"], "/trainer/imagePullPolicy"),
    (
        [
            "nodePools[0].name=h100",
            "nodePools[0].gpuType=H100",
            "nodePools[0].gpuMemoryGiB=80",
            "nodePools[0].gpusPerNode=-8",
        ],
        "/nodePools/0/gpusPerNode': minimum: got -8, want 1",
    ),
    (["nodePools[0].name=h100"], "/nodePools/0': missing properties"),
    (
        [
            "nodePools[0].name=h100",
            "nodePools[0].gpuType=H100",
            "nodePools[0].gpuMemoryGiB=80",
            "nodePools[0].gpusPerNode=8",
            "nodePools[0].gpus=8",
        ],
        "additional properties 'gpus' not allowed",
    ),
    (["watchNamespaces[0]=Team_A"], "/watchNamespaces/0'"),
    (["config.logFormat=xml"], "/config/logFormat"),
    (["config.shmSize=lots"], "/config/shmSize"),
    (["service.port=80000"], "/service/port"),
    (["service.progressURL=kubetune:8081"], "/service/progressURL"),
    (["networkPolicy.enable=true"], "additional properties 'enable' not allowed"),
    (["peering.enabled=true"], "additional properties 'peering' not allowed"),
    (["leaderElection.leaseDurationSeconds=1.5"], "/leaderElection/leaseDurationSeconds"),
    (["securityContext.privileged=true"], "additional properties 'privileged' not allowed"),
]


@pytest.mark.parametrize(("sets", "message"), BAD_VALUES, ids=[s[0] for s, _ in BAD_VALUES])
def test_schema_refuses_wrong_values_readably(sets: list[str], message: str) -> None:
    with pytest.raises(HelmError) as err:
        template(sets=sets)
    text = str(err.value)
    assert "values don't meet the specifications of the schema" in text
    assert message in text, text


# ---------------------------------------------------------------- CRDs
def test_chart_crd_is_the_generated_crd() -> None:
    chart_crd = (CHART / "crds/finetunejob.yaml").read_text()
    assert chart_crd == (ROOT / "crds/finetunejob.yaml").read_text(), (
        "charts/kubetune/crds/finetunejob.yaml drifted from crds/: run `make crds`"
    )


def test_argocd_health_file_is_shipped_in_the_chart() -> None:
    assert (CHART / "files/argocd-health.lua").read_text().startswith("-- Argo CD health check")
