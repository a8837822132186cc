#!/usr/bin/env python3
"""`docker save IMAGE | hack/import-image.py --ref IMAGE --have HAVE | ctr images import -`:
hands a docker image to containerd, sending only the layers its content store lacks.

`docker save | ctr images import -` writes every layer again even when only the top one
changed, which for the multi-GB trainer image costs minutes after each source edit. This
filter turns docker's archive into an OCI image layout that includes only the layers whose
digests are not in HAVE (`ctr content ls` output) and references the others, which
`ctr images import` accepts because the store holds them. The manifest is the one ctr would
build: uncompressed layers named by their diff IDs.

docker writes the layers in an order that does not tell which is which, so each layer is
hashed as it streams past; layers up to --buffer-mib are kept in memory until their digest
is known. If a larger one turns out to be missing, it exits 3 having written nothing, and
the caller falls back to the plain import. Stdlib only (it runs before any virtualenv).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from typing import Any

CHUNK = 1 << 20
LAYER = "application/vnd.oci.image.layer.v1.tar"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _add(out: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))


def _blob(out: tarfile.TarFile, data: bytes, media: str) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _add(out, "blobs/sha256/" + digest.split(":")[1], data)
    return {"mediaType": media, "digest": digest, "size": len(data)}


def read_archive(limit: int, have: set[str]) -> tuple[bytes, dict[str, tuple[int, bytes | None]]]:
    """(image config, digest -> (size, content or None when the store has it)) from docker's
    archive on stdin; exits 3 on a new layer too big to keep in memory."""
    layers: dict[str, tuple[int, bytes | None]] = {}
    config: bytes | None = None
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as src:
        for member in src:
            f = src.extractfile(member) if member.isfile() else None
            if f is None:
                continue
            if member.name.endswith("/layer.tar"):
                sha, kept = hashlib.sha256(), [] if member.size <= limit else None
                while chunk := f.read(CHUNK):
                    sha.update(chunk)
                    if kept is not None:
                        kept.append(chunk)
                digest = "sha256:" + sha.hexdigest()
                if digest not in have and kept is None:
                    print(f"import-image: a new {member.size >> 20} MiB layer", file=sys.stderr)
                    raise SystemExit(3)
                layers[digest] = (member.size, None if digest in have else b"".join(kept or []))
            elif (
                "/" not in member.name
                and member.name.endswith(".json")
                and (
                    member.name != "manifest.json"  # the other top-level JSON is the config
                )
            ):
                config = f.read()
    if config is None:
        raise SystemExit("import-image: no image config in the archive")
    return config, layers


def write_layout(ref: str, config: bytes, layers: dict[str, tuple[int, bytes | None]]) -> None:
    """The OCI image layout on stdout: new layers, config, manifest, index naming `ref`."""
    diff_ids: list[str] = json.loads(config)["rootfs"]["diff_ids"]
    if set(diff_ids) != set(layers):
        raise SystemExit("import-image: the archive's layers are not the config's")
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as out:
        _add(out, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        for digest, (_, content) in layers.items():
            if content is not None:
                _add(out, "blobs/sha256/" + digest.split(":")[1], content)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": _blob(out, config, CONFIG),
            "layers": [{"mediaType": LAYER, "digest": d, "size": layers[d][0]} for d in diff_ids],
        }
        desc = _blob(out, json.dumps(manifest).encode(), MANIFEST)
        desc["annotations"] = {
            "io.containerd.image.name": ref,
            "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1],
        }
        _add(out, "index.json", json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", required=True, help="the image name to give it in containerd")
    ap.add_argument("--have", required=True, help="file: `ctr content ls` output")
    ap.add_argument("--buffer-mib", type=int, default=1024)
    args = ap.parse_args()
    with open(args.have) as f:
        have = {line.split()[0] for line in f if line.startswith("sha256:")}
    config, layers = read_archive(args.buffer_mib << 20, have)
    write_layout(args.ref, config, layers)
    sent = sum(1 for _, c in layers.values() if c is not None)
    print(f"import-image: {sent} new layer(s), {len(layers) - sent} already there", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
