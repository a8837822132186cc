"""hack/import-image.py turns `docker save` output into an OCI layout with only the layers
containerd lacks; checked here on a small archive in docker's legacy layout (what docker.io
20.10 writes: layer directories named by v1 IDs, in no useful order)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "import-image.py"


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _add(t: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


def docker_archive(layers: list[bytes]) -> tuple[bytes, list[str]]:
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        # v1 IDs sort in an order unrelated to the layers' (here: reversed).
        for i, layer in reversed(list(enumerate(layers))):
            v1 = f"{9 - i:064d}"
            _add(t, f"{v1}/VERSION", b"1.0")
            _add(t, f"{v1}/json", b"{}")
            _add(t, f"{v1}/layer.tar", layer)
        cfg = hashlib.sha256(config).hexdigest()
        _add(t, f"{cfg}.json", config)
        _add(t, "manifest.json", json.dumps([{"Config": f"{cfg}.json"}]).encode())
        _add(t, "repositories", b"{}")
    return buf.getvalue(), diff_ids


def run(archive: bytes, have: list[str], tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    (tmp / "have.txt").write_text(
        "DIGEST SIZE AGE LABELS\n" + "".join(f"{d}\t10\t1 day\t\n" for d in have)
    )
    cmd = [sys.executable, str(SCRIPT), "--ref", "example.com/x:1", "--have", str(tmp / "have.txt")]
    return subprocess.run([*cmd, *extra], input=archive, capture_output=True, check=False)


def test_only_missing_layers_are_sent_and_the_manifest_names_all(tmp_path: Path) -> None:
    base, top = _layer({"big": b"x" * 5000}), _layer({"app.py": b"print(1)"})
    archive, (base_id, top_id) = docker_archive([base, top])
    r = run(archive, [base_id], tmp_path)
    assert r.returncode == 0, r.stderr
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as t:
        files = {m.name: t.extractfile(m).read() for m in t if m.isfile()}  # type: ignore[union-attr]
    blobs = {"sha256:" + n.split("/")[-1] for n in files if n.startswith("blobs/")}
    assert top_id in blobs and base_id not in blobs
    index = json.loads(files["index.json"])
    (desc,) = index["manifests"]
    assert desc["annotations"]["io.containerd.image.name"] == "example.com/x:1"
    manifest = json.loads(files["blobs/sha256/" + desc["digest"].split(":")[1]])
    assert [(x["digest"], x["size"]) for x in manifest["layers"]] == [
        (base_id, len(base)),
        (top_id, len(top)),
    ]
    assert files["blobs/sha256/" + top_id.split(":")[1]] == top


def test_a_new_layer_too_big_to_buffer_asks_for_the_plain_import(tmp_path: Path) -> None:
    archive, _ = docker_archive([_layer({"big": b"x" * (2 << 20)})])
    r = run(archive, [], tmp_path, "--buffer-mib", "1")
    assert r.returncode == 3 and r.stdout == b"", r.stderr
