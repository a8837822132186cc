"""The clients GitOps users run, run on our objects: kstatus (sigs.k8s.io/cli-utils and
Flux's fork), Argo CD's Lua runtime and kubeconform, built once by
hack/build-gitops-tools.sh (cached like the Kubernetes binaries); and the JSON schemas
kubeconform needs, generated from a live API server's OpenAPI v3 (the public schema
repository cannot be reached from here).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from functools import cache
from pathlib import Path
from typing import Any

from tests.localcluster.build import REPO_ROOT
from tests.localcluster.cluster import LocalCluster

BUILD_SCRIPT = REPO_ROOT / "hack" / "build-gitops-tools.sh"
ARGOCD_LUA = REPO_ROOT / "charts" / "kubetune" / "files" / "argocd-health.lua"


@cache
def bin_dir() -> Path:
    """kubetune-health and kubeconform, built on first use."""
    out = subprocess.run([str(BUILD_SCRIPT)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def servicemonitor_crd() -> Path:
    """The prometheus-operator's ServiceMonitor CRD (kept next to the tools)."""
    return bin_dir().parent / "crds" / "monitoring.coreos.com_servicemonitors.yaml"


def health(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each object's status by kstatus, Flux's kstatus and the Argo CD Lua (gopher-lua):
    `[{name, kstatus: {status, message}, fluxKstatus: {...}, argocd: {...}}]`."""
    r = subprocess.run(
        [str(bin_dir() / "kubetune-health"), str(ARGOCD_LUA)],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        check=True,
    )
    results: list[dict[str, Any]] = json.loads(r.stdout)
    return results


# ---------------------------------------------------------------------- schemas
def write_schemas(cluster: LocalCluster, out: Path, wait_for: tuple[str, ...] = ()) -> Path:
    """Strict standalone JSON schemas for every kind the API server serves (CRDs included),
    named as kubeconform looks them up: `{{ .ResourceKind }}{{ .KindSuffix }}.json`, e.g.
    `deployment-apps-v1.json`, `finetunejob-kubetune-v1alpha1.json`. Strict means what
    `kubeconform -strict` expects of its `-strict` schemas: objects refuse properties their
    schema does not list (where the API server prunes or refuses them too). A CRD's
    group-version appears in the OpenAPI a moment after the CRD is created: `wait_for` names
    those to wait for (e.g. `apis/kubetune.io/v1alpha1`)."""
    out.mkdir(parents=True, exist_ok=True)
    api = cluster.api_client()
    try:
        deadline = time.monotonic() + 60
        index = _get(api, "/openapi/v3")["paths"]
        while not set(wait_for) <= index.keys():
            assert time.monotonic() < deadline, f"not in the OpenAPI after 60 s: {wait_for}"
            time.sleep(0.5)
            index = _get(api, "/openapi/v3")["paths"]
        components: dict[str, Any] = {}
        for path, ref in index.items():
            if path.startswith("api/") or (path.startswith("apis/") and path.count("/") == 2):
                doc = _get(api, ref["serverRelativeURL"])
                components.update(doc.get("components", {}).get("schemas", {}))
    finally:
        api.close()
    definitions = {name: _strict(schema) for name, schema in components.items()}
    for name, schema in components.items():
        for gvk in schema.get("x-kubernetes-group-version-kind") or []:
            group = gvk["group"].split(".")[0]
            suffix = f"-{group.lower()}-{gvk['version']}" if group else f"-{gvk['version']}"
            standalone = {
                "$schema": "http://json-schema.org/draft-04/schema#",
                "$ref": f"#/definitions/{name}",
                "definitions": {n: definitions[n] for n in _reachable(name, definitions)},
            }
            (out / f"{gvk['kind'].lower()}{suffix}.json").write_text(json.dumps(standalone))
    return out


def _get(api: Any, path: str) -> Any:
    resp = api.call_api("GET", api.configuration.host + path)
    resp.read()
    return json.loads(resp.data)


def _reachable(root: str, definitions: dict[str, Any]) -> set[str]:
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += re.findall(r'"#/definitions/([^"]+)"', json.dumps(definitions[name]))
    return seen


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    ref = out.get("$ref")
    if isinstance(ref, str):
        out["$ref"] = ref.replace("#/components/schemas/", "#/definitions/")
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def kubeconform(schemas: Path, *files: Path) -> list[dict[str, Any]]:
    """`kubeconform -strict` over the files with only our schemas; one result per object
    (`{filename, kind, name, status, msg}`), status `statusValid` when it passes."""
    r = subprocess.run(
        [
            str(bin_dir() / "kubeconform"),
            "-strict",
            "-verbose",
            "-output",
            "json",
            "-schema-location",
            f"{schemas}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        resources: list[dict[str, Any]] = json.loads(r.stdout)["resources"]
    except (ValueError, KeyError) as exc:
        raise AssertionError(f"kubeconform: {r.stdout}{r.stderr}") from exc
    return resources
