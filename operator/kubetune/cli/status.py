"""`kubetune status NAME` and `kubetune logs NAME`: a FineTuneJob for humans."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from kubetune import contract as c
from kubetune.api import GROUP, PLURAL, VERSION
from kubetune.api.phases import FINAL_PHASES, Phase
from kubetune.api.status import progress_parts


def add_status_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show a FineTuneJob's phase, plan, progress, evaluation")
    p.add_argument("name")
    p.add_argument("-n", "--namespace", default=None, help="default: the kubeconfig's")
    p.add_argument("-w", "--watch", action="store_true", help="follow until it finishes")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--timeout", type=float, default=0, help="give up watching after this")
    p.set_defaults(func=status_command)
    lg = sub.add_parser("logs", help="stream rank 0's trainer logs")
    lg.add_argument("name")
    lg.add_argument("-n", "--namespace", default=None)
    lg.add_argument("-f", "--follow", action="store_true")
    lg.set_defaults(func=logs_command)


def _num(v: Any, fmt: str = ".4g") -> str:
    return "-" if v is None else format(v, fmt)


def progress_line(status: dict[str, Any]) -> str:
    """`phase  step 40/120 (33%)  loss 1.23  812 tok/s  ETA 2m10s` in one line."""
    p = status.get("progress") or {}
    parts = [f"{status.get('phase') or Phase.PENDING:<10}"]
    if p:
        parts += progress_parts(p)
    elif status.get("message"):
        parts.append(str(status["message"]))
    return "  ".join(parts)


def render_status(body: dict[str, Any]) -> str:
    """The whole status as a readable report."""
    meta, st = body["metadata"], body.get("status") or {}
    lines = [f"FineTuneJob {meta['namespace']}/{meta['name']}"]
    lines.append(f"  Phase:     {st.get('phase') or Phase.PENDING}  ({st.get('message') or ''})")
    plan = st.get("plan")
    if plan:
        lines.append(
            f"  Plan:      {plan['method']} on {plan['nodes']}x{plan['gpusPerNode']}"
            f" {plan['gpuType']} (pool {plan['pool']}), ZeRO {plan.get('zeroStage', 0)},"
            f" micro-batch {plan['microBatchSize']} x accumulation"
            f" {plan['gradientAccumulationSteps']}, checkpointing"
            f" {'on' if plan['gradientCheckpointing'] else 'off'}"
        )
        measured = (st.get("progress") or {}).get("peakMemoryGiB")
        mem = f"  Memory:    predicted {plan['predictedPeakGiB']:.1f} GiB per GPU"
        if measured is not None:
            mem += f", measured {measured:.1f} GiB"
        lines.append(mem)
        breakdown = plan.get("breakdownGiB") or {}
        if breakdown:
            lines.append("             " + ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items()))
        for reason in plan.get("reasons") or []:
            lines.append(f"             - {reason}")
        for warning in plan.get("warnings") or []:
            lines.append(f"  Warning:   {warning}")
    lines.append(f"  Progress:  {progress_line(st)}")
    ckpt = st.get("checkpoints") or {}
    if ckpt.get("latest"):
        lines.append(f"  Checkpoint: {ckpt['latest']} (step {ckpt.get('latestStep', '?')})")
    ev = st.get("evaluation") or {}
    base, final = ev.get("baseline") or {}, ev.get("final") or {}
    if base or final:
        lines.append("  Evaluation:          baseline     tuned")
        for key in ("loss", "perplexity", "exactMatch", "rougeL", "accuracy"):
            if key in base or key in final:
                lines.append(f"    {key:<18}{_num(base.get(key)):>10}{_num(final.get(key)):>10}")
    forgetting = ev.get("forgetting")
    if forgetting:
        verdict = "passed" if forgetting.get("passed") else "FAILED"
        lines.append(
            f"  Forgetting: perplexity {forgetting['baselinePerplexity']:.4g} →"
            f" {forgetting['tunedPerplexity']:.4g} ({forgetting['increasePercent']:+.2f}%,"
            f" limit {forgetting['limitPercent']:g}%): {verdict}"
        )
    if ev.get("passed") is not None:
        lines.append(f"  Gate:      {'passed' if ev['passed'] else 'FAILED'}")
    for key, value in (st.get("output") or {}).items():
        if value:
            lines.append(f"  Output:    {key}: {value}")
    if st.get("restarts"):
        lines.append(f"  Restarts:  {st['restarts']} (attempt {st.get('attempt')})")
    return "\n".join(lines)


def _clients(namespace: str | None) -> tuple[Any, str]:
    from kubernetes import client, config

    config.load_kube_config()
    if namespace is None:
        _, active = config.list_kube_config_contexts()
        namespace = (active or {}).get("context", {}).get("namespace") or "default"
    return client.ApiClient(), namespace


def _get(api: Any, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    body: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )  # type: ignore[assignment]
    return body


def status_command(args: argparse.Namespace) -> int:
    from kubernetes.client.exceptions import ApiException

    api, ns = _clients(args.namespace)
    try:
        body = _get(api, ns, args.name)
        if args.watch:
            start, last = time.monotonic(), ""
            while (body.get("status") or {}).get("phase") not in FINAL_PHASES:
                line = progress_line(body.get("status") or {})
                if line != last:
                    print(f"[{time.monotonic() - start:6.0f}s] {line}", flush=True)
                    last = line
                if args.timeout and time.monotonic() - start > args.timeout:
                    print("timed out waiting for the job to finish", file=sys.stderr)
                    return 3
                time.sleep(args.interval)
                body = _get(api, ns, args.name)
    except ApiException as exc:
        print(f"cannot read finetunejob {ns}/{args.name}: {exc.reason}", file=sys.stderr)
        return 1
    print(render_status(body))
    return 0 if (body.get("status") or {}).get("phase") != Phase.FAILED else 1


def logs_command(args: argparse.Namespace) -> int:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api, ns = _clients(args.namespace)
    body = _get(api, ns, args.name)
    attempt = (body.get("status") or {}).get("attempt")
    core = client.CoreV1Api(api)
    selector = f"{c.LABEL_JOB}={args.name},{c.LABEL_COMPONENT}=trainer"
    if attempt:
        selector += f",{c.LABEL_ATTEMPT}={attempt}"
    names = [
        str(p.metadata.name)
        for p in core.list_namespaced_pod(ns, label_selector=selector).items
        if p.metadata is not None
        and (p.metadata.annotations or {}).get("batch.kubernetes.io/job-completion-index") == "0"
    ]
    if not names:
        print(f"no rank-0 trainer pod for {ns}/{args.name} yet", file=sys.stderr)
        return 1
    try:
        if args.follow:
            stream: Any = core.read_namespaced_pod_log(
                names[0], ns, follow=True, _preload_content=False
            )
            for chunk in stream.stream():
                sys.stdout.write(chunk.decode(errors="replace"))
        else:
            print(core.read_namespaced_pod_log(names[0], ns), end="")
    except ApiException as exc:
        print(f"cannot read logs of {names[0]}: {exc.reason}", file=sys.stderr)
        return 1
    return 0
