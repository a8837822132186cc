"""`python -m tests.localcluster up|down|env|status [--name NAME] [--real-node]`: a long-lived
local cluster (for `make demo` and manual poking). `up` prints the KUBECONFIG path on stdout.
`--real-node` gives it the machine's one real node (kubelet, containerd, ...; see
realnode.py) instead of fake nodes, with the operator and trainer images loaded."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from tests.localcluster.cluster import LocalCluster
from tests.localcluster.procs import alive


def cluster_dir(name: str) -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"kubetune-localcluster-{name}"


def _running(d: Path) -> LocalCluster | None:
    with contextlib.suppress(OSError, ValueError, KeyError):
        c = LocalCluster.attach(d)
        if c.pids and all(alive(p) for p in c.pids.values()):
            return c
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.localcluster")
    ap.add_argument("command", choices=["up", "down", "env", "status"])
    ap.add_argument("--name", default="demo", help="clusters of different names coexist")
    ap.add_argument("--pools", default=None, help="node pools YAML (default: pools.yaml)")
    ap.add_argument("--cpu-nodes", type=int, default=None, help="default: 1, 0 with --real-node")
    ap.add_argument("--real-node", action="store_true", help="a real kubelet + containerd node")
    ap.add_argument(
        "--no-images", action="store_true", help="with --real-node: skip building the images"
    )
    ap.add_argument("--audit", action="store_true", help="the API server's audit log (metadata)")
    ap.add_argument("--images", default=None, help="image mapping YAML for the pod runner")
    args = ap.parse_args(argv)
    d = cluster_dir(args.name)
    running = _running(d)
    if args.command == "up":
        if running is None:
            if (d / "state.json").exists():  # a dead or half-started one: clear it first
                LocalCluster.attach(d).stop()
            shutil.rmtree(d, ignore_errors=True)
            c = LocalCluster(
                dir=d,
                pools=args.pools,
                cpu_nodes=args.cpu_nodes,
                images=args.images,
                detached=True,
                real_node=args.real_node,
                real_node_images=not args.no_images,
                audit=args.audit,
                name=args.name,
            )
            c.start()
            print(f"local cluster up in {c.startup_seconds:.1f}s: {c.server}", file=sys.stderr)
            running = c
        print(running.kubeconfig)
    elif args.command == "down":
        if (d / "state.json").exists():
            LocalCluster.attach(d).stop()
        print(f"local cluster {args.name} down", file=sys.stderr)
    elif args.command == "env":
        if running is None:
            print(f"local cluster {args.name} is not running", file=sys.stderr)
            return 1
        print(f"export KUBECONFIG={running.kubeconfig}")
        print(f"export PATH={running.bin_dir}:$PATH")
        # The test fixtures attach to it: real-node tests to a real-node cluster, the others
        # to one with fake nodes.
        which = "REALNODE" if running.node is not None else "LOCALCLUSTER"
        print(f"export KUBETUNE_{which}_DIR={running.dir}")
    else:
        state: dict[str, Any] = {"name": args.name, "dir": str(d), "running": running is not None}
        if running:
            state.update(server=running.server, pids=running.pids)
        print(json.dumps(state, indent=2))
        return 0 if running else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
