"""Run the pinned helm (built and cached by tests/localcluster/build.py) on the kubetune chart."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.localcluster.build import REPO_ROOT, ensure_helm

CHART = REPO_ROOT / "charts" / "kubetune"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))


@cache
def helm_path() -> Path:
    return ensure_helm()


def helm(*args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    """Run helm; return stdout, or raise with helm's stderr (its schema message) on failure."""
    r = subprocess.run(
        [str(helm_path()), *args], capture_output=True, text=True, check=False, env=env
    )
    if check and r.returncode != 0:
        raise HelmError(r.stderr.strip() or r.stdout.strip())
    return r.stdout


class HelmError(RuntimeError):
    """helm exited non-zero; the message is its stderr."""


def template(
    values_files: Sequence[Path] = (),
    sets: Sequence[str] = (),
    release: str = "kt",
    namespace: str = "kubetune-system",
) -> list[dict[str, Any]]:
    """`helm template` of the chart, parsed into its documents."""
    return list(_template(tuple(values_files), tuple(sets), release, namespace))


@cache
def _template(
    values_files: tuple[Path, ...], sets: tuple[str, ...], release: str, namespace: str
) -> tuple[dict[str, Any], ...]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for f in values_files:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    return tuple(d for d in yaml.safe_load_all(helm(*args)) if d)


def find(
    docs: Sequence[dict[str, Any]], kind: str, name: str | None = None
) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: Sequence[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = find(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
