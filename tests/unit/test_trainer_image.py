"""Structural lint of trainer-image/Dockerfile (no docker needed).

Checks, stage by stage: every base image pinned by an explicit tag (not `latest`), the
final stage runs as uid 1000, installs no build tools, and its ENTRYPOINT is exactly
`kubetune.contract.TRAINER_ENTRYPOINT` — the command the operator renders for pods.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from kubetune import contract

DOCKERFILE = Path(__file__).resolve().parents[2] / "trainer-image" / "Dockerfile"
BUILD_TOOLS = re.compile(
    r"\b(build-essential|gcc|g\+\+|clang|make|cmake|ninja-build|nvcc|cuda-toolkit|python3-dev)\b"
)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def resolve_args(text: str, value: str) -> str:
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), value)


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
