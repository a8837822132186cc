"""The fake-kubelet process: registers the fake nodes, heartbeats them, provisions hostPath
PVs and runs the pod runner, until SIGTERM (then it kills every pod process and exits).

Run by :class:`tests.localcluster.cluster.LocalCluster` as its own process so the pytest
process stays free of its threads and a detached `up` cluster keeps running.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from tests.localcluster.kube import api_client
from tests.localcluster.nodes import HostPathProvisioner, NodeAgent, load_pools, node_manifests
from tests.localcluster.podrunner import PodRunner, load_image_rules, serve_logs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.localcluster.agent")
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--state-dir", required=True, type=Path)
    ap.add_argument("--apiserver-port", required=True, type=int)
    ap.add_argument("--pools", default=None)
    ap.add_argument("--cpu-nodes", type=int, default=1)
    ap.add_argument("--kubelet-version", default="v1.35.4")
    ap.add_argument("--images", default=None, help="image mapping YAML (see podrunner)")
    ap.add_argument("--kubelet-port", type=int, default=0, help="serve /containerLogs here")
    ap.add_argument("--kubelet-cert", default=None)
    ap.add_argument("--kubelet-key", default=None)
    ap.add_argument("--marker", default="", help="KEY=VALUE put into every pod's env")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    api = api_client(args.kubeconfig)
    manifests = node_manifests(
        load_pools(args.pools), args.cpu_nodes, args.kubelet_version, args.kubelet_port or 10250
    )
    nodes = NodeAgent(api, manifests)
    nodes.register()
    prov = HostPathProvisioner(api, args.state_dir / "pv")
    prov.ensure_storage_class()
    marker = dict([args.marker.split("=", 1)]) if args.marker else {}
    runner = PodRunner(
        api,
        nodes.names,
        args.state_dir,
        args.apiserver_port,
        image_rules=load_image_rules(args.images),
        marker_env=marker,
    )
    targets: list[Callable[[], object]] = [nodes.run, prov.run, runner.run]
    if args.kubelet_port:
        server = serve_logs(args.state_dir, args.kubelet_port, args.kubelet_cert, args.kubelet_key)
        targets.append(server.serve_forever)
    for target in targets:
        threading.Thread(target=target, daemon=True).start()
    logging.info("agent up: nodes %s, mount namespaces %s", nodes.names, runner.use_namespaces)
    stop.wait()
    logging.info("agent stopping")
    nodes.stop()
    prov.stop()
    runner.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
