"""Structural lint of trainer-image/Dockerfile (no docker needed; `make images` and the
real-node tests build and run it).

Checks, stage by stage: every base image pinned by an explicit tag (not `latest`), the
final stage runs as uid 1000, installs no build tools, and its ENTRYPOINT is exactly
`kubetune.contract.TRAINER_ENTRYPOINT` — the command the operator renders for pods.
"""

from __future__ import annotations

import json
from pathlib import Path

from kubetune import contract
from tests.dockerfile import BUILD_TOOLS, resolve_args, stages

DOCKERFILE = Path(__file__).resolve().parents[2] / "trainer-image" / "Dockerfile"


def test_multi_stage_with_pinned_bases() -> None:
    text = DOCKERFILE.read_text()
    all_stages = stages(text)
    assert len(all_stages) >= 2, "build and runtime stages expected"
    for stage in all_stages:
        image = resolve_args(text, stage[0][1].split()[0])
        assert ":" in image and not image.endswith(":latest"), f"unpinned base {image}"
        assert "${" not in image, f"base {image} uses an ARG without a default"


def test_final_stage_is_non_root_without_build_tools() -> None:
    text = DOCKERFILE.read_text()
    final = stages(text)[-1]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] in ("1000", "trainer"), users
    for word, args in final:
        if word == "RUN":
            assert not BUILD_TOOLS.search(args), f"build tool in the final stage: {args}"
            assert "apt-get install" not in args or "rm -rf /var/lib/apt/lists" in args
    assert "devel" not in final[0][1], "the final stage must not start from a -devel image"


def test_entrypoint_matches_contract() -> None:
    final = stages(DOCKERFILE.read_text())[-1]
    entry = [args for word, args in final if word == "ENTRYPOINT"]
    assert entry, "ENTRYPOINT missing"
    assert tuple(json.loads(entry[-1])) == contract.TRAINER_ENTRYPOINT
    cmd = [args for word, args in final if word == "CMD"]
    assert tuple(json.loads(cmd[-1])) == contract.TRAINER_LAUNCH_ARGS


def test_lint_catches_a_root_image(tmp_path: Path) -> None:
    bad = 'FROM python:3.11-slim AS runtime\nRUN apt-get install -y gcc\nENTRYPOINT ["python"]\n'
    final = stages(bad)[-1]
    assert not [a for w, a in final if w == "USER"]
    assert any(BUILD_TOOLS.search(a) for w, a in final if w == "RUN")
