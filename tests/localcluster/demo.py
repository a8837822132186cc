"""`make demo`: the demo LoRA FineTuneJob on the local cluster's real node: the operator
installed by `helm install` from the locally built operator image, under the chart's
ServiceAccount, and the job's pods run from the trainer image, as containers of a real
kubelet + containerd under restricted Pod Security.

    python -m tests.localcluster.demo up     # start (or reuse) everything, train, report
    python -m tests.localcluster.demo down   # stop the cluster, remove the demo files

`up` is idempotent: a running `demo` cluster is reused, the images are rebuilt when the
checkout changed them, the release is upgraded in place and the operator restarted, and an
earlier demo job and its outputs are replaced by a fresh run. The wait for the job follows its
progress: it gives up only when nothing moved for `KUBETUNE_DEMO_STALL_SECONDS` (600).
The demo's files live in `.demo/` in the clone (gitignored): `volume/` is the hostPath
behind the `kubetune-demo` claim (model, data, and the run's outputs under `runs/`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from kubetune import contract as c
from tests.integration.harness import JobWatch, get_job
from tests.localcluster.__main__ import _running, cluster_dir
from tests.localcluster.build import REPO_ROOT, ensure_helm
from tests.localcluster.cluster import LocalCluster
from tests.localcluster.realnode import POOLS
from tests.waits import Stalled, wait_progress

NAME = "demo"  # the local cluster's name (python -m tests.localcluster ... --name demo)
RELEASE = "kubetune"
OPERATOR_NS = "kubetune-system"
JOB_NS = "default"
JOB = "demo-lora"
CLAIM = "kubetune-demo"
DEMO_DIR = REPO_ROOT / ".demo"
VOLUME = DEMO_DIR / "volume"
EXAMPLE = REPO_ROOT / "examples" / "demo-lora.yaml"
CHART = REPO_ROOT / "charts" / "kubetune"
STALL_SECONDS = float(os.environ.get("KUBETUNE_DEMO_STALL_SECONDS", "600"))

_t0 = time.monotonic()


def say(msg: str) -> None:
    print(f"==> [{time.monotonic() - _t0:5.0f}s] {msg}", flush=True)


def _helm(*args: str, check: bool = True, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(DEMO_DIR / "helm" / "cache"),
        "HELM_CONFIG_HOME": str(DEMO_DIR / "helm" / "config"),
        "HELM_DATA_HOME": str(DEMO_DIR / "helm" / "data"),
    }
    r = subprocess.run(
        [str(ensure_helm()), *args, "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if check and r.returncode != 0:
        raise SystemExit(f"helm {' '.join(args[:2])} failed:\n{r.stderr.strip()}")
    return r


def ensure_cluster() -> LocalCluster:
    d = cluster_dir(NAME)
    running = _running(d)
    if running is not None:
        say(f"reusing the local cluster {NAME!r} at {running.server}")
        return running
    if (d / "state.json").exists():  # a dead or half-started one: clear it first
        LocalCluster.attach(d).stop()
    shutil.rmtree(d, ignore_errors=True)
    say(
        f"starting the local cluster {NAME!r}: etcd, kube-apiserver, controllers and a real node"
        " (kubelet, containerd, CNI, kube-proxy, CoreDNS, 2 fake GPUs). The first run on a"
        " machine installs containerd/runc/CNI/docker.io with apt (~1 min), builds the"
        " Kubernetes binaries (~5 min), CoreDNS and the device plugin (~2 min), and the"
        " operator and trainer images (~10 min: debootstrap base, ~3.5 GB of wheels), then"
        " loads them into containerd (~5 min); later runs take about a minute"
    )
    cluster = LocalCluster(dir=d, detached=True, real_node=True, name=NAME)
    cluster.start(say=say)
    say(f"local cluster up in {cluster.startup_seconds:.0f}s at {cluster.server}")
    return cluster


def install_chart(cluster: LocalCluster, restart: bool) -> None:
    """`helm upgrade --install` the chart cluster-wide with its default images (the ones
    `make images` built and the node holds); `restart` rolls the operator onto a rebuilt image."""
    kc = cluster.kubeconfig
    values = {
        "nodePools": yaml.safe_load(POOLS.read_text())["pools"],
        "config": {"progressIntervalSeconds": 2, "logFormat": "full"},
    }
    DEMO_DIR.mkdir(exist_ok=True)
    vf = DEMO_DIR / "values.yaml"
    vf.write_text(yaml.safe_dump(values, sort_keys=False))
    say(f"helm upgrade --install {RELEASE} charts/kubetune -n {OPERATOR_NS} -f {vf}")
    _helm(
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "-n",
        OPERATOR_NS,
        "--create-namespace",
        "-f",
        str(vf),
        "--wait",
        "--timeout",
        "300s",
        kubeconfig=kc,
    )
    dep = f"deploy/{RELEASE}"
    if restart:  # a re-run: a fresh operator pod, on the image as built now
        cluster.kubectl("rollout", "restart", dep, "-n", OPERATOR_NS)
        cluster.kubectl("rollout", "status", dep, "-n", OPERATOR_NS, "--timeout=300s")
    pods = cluster.kubectl(
        "get",
        "pods",
        "-n",
        OPERATOR_NS,
        "-l",
        f"app.kubernetes.io/instance={RELEASE}",
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.containers[0].image}{'\\n'}{end}",
    ).split("\n")
    for line in filter(None, pods):
        pod, image = line.split()
        say(f"operator running as pod/{pod} ({image}) under ServiceAccount {OPERATOR_NS}/{RELEASE}")


def prepare_volume(cluster: LocalCluster) -> None:
    """The demo files on a hostPath PV bound to the `kubetune-demo` claim; an earlier job and
    its outputs are removed so the run starts from scratch."""
    cluster.kubectl("delete", "finetunejob", JOB, "-n", JOB_NS, "--ignore-not-found", "--wait")
    cluster.kubectl(
        "delete", "jobs,pods", "-n", JOB_NS, "-l", f"{c.LABEL_JOB}={JOB}", "--ignore-not-found"
    )
    shutil.rmtree(VOLUME / "runs", ignore_errors=True)
    say(f"writing the demo model and data to {VOLUME} (the tiny base model is cached)")
    from tests.fixtures.demo_volume import write_demo_volume

    write_demo_volume(VOLUME)
    os.chmod(VOLUME, 0o777)
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": CLAIM},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteMany"],
            "hostPath": {"path": str(VOLUME)},
            "storageClassName": "manual",
            "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": {"namespace": JOB_NS, "name": CLAIM},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM, "namespace": JOB_NS},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "10Gi"}},
            "storageClassName": "manual",
            "volumeName": CLAIM,
        },
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([pv, pvc]))


def run_job(cluster: LocalCluster) -> int:
    say(f"kubectl apply -n {JOB_NS} -f examples/demo-lora.yaml")
    cluster.kubectl("apply", "-n", JOB_NS, "-f", str(EXAMPLE))
    say(f"kubetune status {JOB} -n {JOB_NS} --watch")
    env = {**cluster.env(), "PYTHONUNBUFFERED": "1"}
    kubetune = [sys.executable, "-m", "kubetune.cli.main"]
    watch = subprocess.Popen(
        [*kubetune, "status", JOB, "-n", JOB_NS, "--watch", "--interval", "2"], env=env
    )
    # Follow the job as long as something moves (its status, its pods, their logs); give up
    # only after STALL_SECONDS of nothing, saying what was seen last.
    api = cluster.api_client()
    moving = JobWatch(api, JOB_NS, JOB)
    body: dict[str, Any] = {}

    last: Hashable = None

    def observe() -> Hashable:
        nonlocal body, last
        with contextlib.suppress(Exception):  # the API server busy a moment: not movement
            body = get_job(api, JOB_NS, JOB)
            last = moving.state(body)
        return last

    stalled = False
    try:
        wait_progress(
            lambda: watch.poll() is not None,
            observe,
            f"{JOB_NS}/{JOB} to finish",
            STALL_SECONDS,
            describe=lambda _: f"status: {json.dumps(body.get('status'))}\npods: {moving.pods}",
            poll=5.0,
            limit=24 * 3600.0,
        )
    except Stalled as e:
        watch.terminate()
        stalled = True
        print(e, file=sys.stderr)
    finally:
        api.close()
    rc = 3 if stalled else watch.wait()
    watch.wait()
    body = json.loads(cluster.kubectl("get", "finetunejob", JOB, "-n", JOB_NS, "-o", "json"))
    outputs = (body.get("status") or {}).get("output") or {}
    prefix = f"{c.PVC_ROOT}/{CLAIM}"
    if outputs:
        print(f"\nOn this machine (the kubetune-demo claim is the hostPath {VOLUME}):")
        for key, path in outputs.items():
            if isinstance(path, str) and path.startswith(prefix):
                print(f"  {key + ':':<12} {VOLUME}{path[len(prefix) :]}")
    phase = (body.get("status") or {}).get("phase")
    print(f"\n$ kubectl get pods -n {JOB_NS} -o wide")
    print(cluster.kubectl("get", "pods", "-n", JOB_NS, "-o", "wide").rstrip())
    say(f"demo finished: {phase} (make demo-down removes the cluster and {DEMO_DIR})")
    if rc == 0 and phase != "Succeeded":
        rc = 1
    if rc != 0:
        print(
            f"operator logs: kubectl logs -n {OPERATOR_NS} deploy/{RELEASE}; "
            f'cluster: eval "$({sys.executable} -m tests.localcluster env --name {NAME})"',
            file=sys.stderr,
        )
    return rc


def up() -> int:
    reused = _running(cluster_dir(NAME)) is not None
    cluster = ensure_cluster()
    if reused and cluster.node is not None:  # the checkout may have changed the images
        cluster.node.build_and_import_images(say)
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(CHART / "crds" / "finetunejob.yaml"),
    )
    install_chart(cluster, restart=reused)
    prepare_volume(cluster)
    return run_job(cluster)


def down() -> int:
    d = cluster_dir(NAME)
    if (d / "state.json").exists():
        LocalCluster.attach(d).stop()
    shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    print(f"demo cluster {NAME!r} stopped; removed {DEMO_DIR}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.localcluster.demo")
    ap.add_argument("command", choices=["up", "down"])
    args = ap.parse_args(argv)
    return up() if args.command == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
