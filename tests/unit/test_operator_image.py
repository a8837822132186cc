"""Structural checks of operator/Dockerfile and what both images share (no docker needed;
`make images` and the real-node tests build and run them)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.dockerfile import BUILD_TOOLS, arg_defaults, resolve_args, stages

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator" / "Dockerfile"
TRAINER = ROOT / "trainer-image" / "Dockerfile"
CHART_VALUES = ROOT / "charts" / "kubetune" / "values.yaml"


def test_operator_image_runs_as_the_charts_user_with_only_the_operator_extra() -> None:
    text = OPERATOR.read_text()
    final = stages(text)[-1]
    users = [args for word, args in final if word == "USER"]
    uid = yaml.safe_load(CHART_VALUES.read_text())["securityContext"]["runAsUser"]
    assert users and users[-1] == f"{uid}:{uid}", users
    runs = " ".join(args for word, args in final if word == "RUN")
    assert not BUILD_TOOLS.search(runs) and "uv " not in runs
    assert not any(w == "COPY" and "/uv" in a for w, a in final), "no uv in the final image"
    compiles = [a for s in stages(text) for w, a in s if w == "RUN" and "pip compile" in a]
    assert len(compiles) == 1 and "--extra operator" in compiles[0]
    assert "--extra trainer" not in text and "trainer-image" not in text
    cmd = [args for word, args in final if word == "CMD"]
    assert cmd == ['["python", "-m", "kubetune.operator"]']


def test_both_images_take_their_bases_as_build_args_with_public_pinned_defaults() -> None:
    makefile_uv = re.search(r"^UV_VERSION := (\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert makefile_uv
    for dockerfile in (OPERATOR, TRAINER):
        text = dockerfile.read_text()
        args = arg_defaults(text)
        assert args["BASE_IMAGE"] == "python:3.11-slim-bookworm", dockerfile
        # The uv the images use is the one the Makefile pins for the virtualenv.
        assert args["UV_IMAGE"] == f"ghcr.io/astral-sh/uv:{makefile_uv.group(1)}", dockerfile
        for stage in stages(text):
            image = resolve_args(text, stage[0][1].split()[0])
            assert ":" in image and not image.endswith(":latest"), f"unpinned base {image}"
        # The dependency layer depends only on the requirements resolved from the lock.
        compile_runs = [a for w, a in stages(text)[1] if w == "RUN"]
        assert any("-c requirements.lock" in a for a in compile_runs), dockerfile


def test_the_build_context_is_only_what_the_images_copy() -> None:
    ignore = (ROOT / ".dockerignore").read_text().split()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    copied = set()
    for dockerfile in (OPERATOR, TRAINER):
        for stage in stages(dockerfile.read_text()):
            for word, args in stage:
                if word == "COPY" and not args.startswith("--from"):
                    copied.update(args.split()[:-1])
    assert copied == allowed, (copied, allowed)
