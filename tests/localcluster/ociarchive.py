"""Single-layer container images written without a builder, for the node's own images.

The pause and CoreDNS images are one static binary each; a `docker save`-format archive
(manifest.json, the image config and one layer tar) is all `ctr images import` needs, so
the node does not depend on an image builder or a registry for them.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def write_image_archive(
    path: Path,
    ref: str,
    files: dict[str, tuple[Path, int]],
    config: dict[str, Any],
) -> Path:
    """Write `ref` as a docker-archive at `path`: `files` maps a path in the image to
    (source file, mode); `config` is the OCI image config's `config` (Entrypoint, User, ...)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for name, (src, mode) in sorted(files.items()):
            _add(layer, name.lstrip("/"), src.read_bytes(), mode)
    layer_bytes = buf.getvalue()
    diff_id = hashlib.sha256(layer_bytes).hexdigest()
    image_config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [{"created_by": "tests/localcluster/ociarchive.py"}],
        },
        sort_keys=True,
    ).encode()
    config_name = f"{hashlib.sha256(image_config).hexdigest()}.json"
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": [f"{diff_id}/layer.tar"]}]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode="w") as out:
        _add(out, config_name, image_config)
        _add(out, f"{diff_id}/layer.tar", layer_bytes)
        _add(out, "manifest.json", json.dumps(manifest).encode())
    return path
