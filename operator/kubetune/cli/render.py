"""`kubetune render JOB.yaml --pools POOLS`: the objects the operator would create, offline.

Like `helm template`: the job is planned exactly as `kubetune plan` plans it, and the plan
goes through the operator's own builders (`manifests.launch_objects`), so what is printed
is what the operator creates for its first attempt: the rendezvous Service, the output
claim when the spec sizes one, the ConfigMap with the trainer config, and the Job.
Exit codes as `kubetune plan`: 0 the objects, 2 a refusal or missing input.
"""

from __future__ import annotations

import argparse

import yaml

from .plan import add_planning_args, plan_job

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


def add_render_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "render",
        help="print the objects the operator would create for a FineTuneJob",
        description="Plan a FineTuneJob offline and print, as YAML documents, exactly the"
        " objects the operator would create for its first attempt (Service, output claim,"
        " ConfigMap with the trainer config, Job). The operator's settings come from the"
        " same KUBETUNE_* environment variables the operator reads. Exit code 2 when"
        " nothing fits.",
    )
    add_planning_args(p)
    p.add_argument(
        "--attempt", type=int, default=1, metavar="N", help="the attempt to render (default 1)"
    )
    p.set_defaults(func=render_command)


def render_command(args: argparse.Namespace) -> int:
    from kubetune.operator.manifests import JobMeta, launch_objects
    from kubetune.operator.settings import Settings

    planned = plan_job(args, "render")
    if isinstance(planned, int):
        return planned
    meta = planned.job.metadata
    extra = meta.model_extra or {}
    job = JobMeta(
        name=meta.name or "job",
        namespace=meta.namespace or "default",
        uid=str(extra.get("uid") or PLACEHOLDER_UID),
        generation=int(extra.get("generation") or 1),
        labels=dict(meta.labels or {}),
    )
    objects = launch_objects(job, planned.job.spec, planned.plan, Settings.from_env(), args.attempt)
    print(yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False), end="")
    return 0


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the trainer config inside the ConfigMap) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
