"""Loading: every file format and compression, PVC paths, object-store credentials,
and bounded memory on large files."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from kubetune.api.common import DataSource
from kubetune_trainer.data import sources
from kubetune_trainer.data.errors import BadInputError

ROWS = [
    {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
    for i in range(5)
]


def _write_all(d: Path) -> dict[str, Path]:
    jsonl = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    files = {
        "jsonl": d / "a.jsonl",
        "gz": d / "b.jsonl.gz",
        "zst": d / "c.jsonl.zst",
        "json": d / "d.json",
        "parquet": d / "e.parquet",
        "csv": d / "f.csv.gz",
    }
    files["jsonl"].write_bytes(jsonl)
    files["gz"].write_bytes(gzip.compress(jsonl))
    files["zst"].write_bytes(zstandard.ZstdCompressor().compress(jsonl))
    files["json"].write_text(json.dumps(ROWS, indent=2))
    pq.write_table(pa.Table.from_pylist(ROWS), files["parquet"])
    csv = "messages\n" + "".join(
        '"' + json.dumps(r["messages"]).replace('"', '""') + '"\n' for r in ROWS
    )
    files["csv"].write_bytes(gzip.compress(csv.encode()))
    return files


def test_every_format_and_compression_reads_the_same_rows(tmp_path: Path) -> None:
    files = _write_all(tmp_path)
    for kind, path in files.items():
        raw = sources.load_raw_urls([str(path)], cache_dir=str(tmp_path / "cache"))
        rows = [json.loads(r) for r in raw["raw"]]
        if kind == "csv":
            rows = [{"messages": json.loads(r["messages"])} for r in rows]
        assert rows == ROWS, kind
        expected_lines = [2, 3, 4, 5, 6] if kind == "csv" else [1, 2, 3, 4, 5]
        assert list(raw["line"]) == expected_lines, kind


def test_directories_list_known_files_sorted_and_pvc_root_is_configurable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = tmp_path / "datasets" / "support"
    claim.mkdir(parents=True)
    _write_all(claim)
    (claim / "README.md").write_text("not data")
    monkeypatch.setenv(sources.PVC_ROOT_ENV, str(tmp_path))
    source = DataSource.model_validate({"pvc": {"claimName": "datasets", "path": "support"}})
    assert sources.source_url(source) == str(claim)
    raw = sources.load_raw(source, cache_dir=str(tmp_path / "cache"))
    assert len(raw) == 6 * len(ROWS)
    assert (
        sorted(set(raw["file"]))
        == list(raw.unique("file"))
        == sorted(str(p) for p in claim.iterdir() if p.name != "README.md")
    )
    monkeypatch.delenv(sources.PVC_ROOT_ENV)
    assert sources.source_url(source) == "/mnt/kubetune/pvc/datasets/support"


def test_object_store_urls_and_credentials_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SK")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/var/run/gcp/key.json")
    assert sources.storage_options("s3://b/k.jsonl") == {
        "key": "AK",
        "secret": "SK",
        "client_kwargs": {"endpoint_url": "http://minio:9000"},
    }
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3.internal:9000")  # wins, as in botocore
    assert sources.storage_options("s3://b/k")["client_kwargs"] == {
        "endpoint_url": "http://s3.internal:9000"
    }
    assert sources.storage_options("gs://b/k") == {"token": "/var/run/gcp/key.json"}
    gcs = DataSource.model_validate({"gcs": {"uri": "gcs://bucket/data/train.jsonl"}})
    assert sources.source_url(gcs) == "gs://bucket/data/train.jsonl"


def test_any_fsspec_filesystem_streams(tmp_path: Path) -> None:
    with fsspec.open("memory://bucket/train.jsonl.gz", "wb", compression="gzip") as f:
        f.write(b"".join(json.dumps(r).encode() + b"\n" for r in ROWS))
    assert sources.list_files("memory://bucket") == ["memory:///bucket/train.jsonl.gz"]
    raw = sources.load_raw_urls(["memory://bucket/train.jsonl.gz"], cache_dir=str(tmp_path))
    assert len(raw) == len(ROWS)


def test_bad_locations_and_extensions_are_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no such file"):
        sources.list_files(str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.txt").write_text("{}")
    with pytest.raises(BadInputError, match="cannot tell the file format"):
        sources.load_raw_urls([str(tmp_path / "x.txt")])
    (tmp_path / "y.json").write_text('{"not": "an array"}')
    with pytest.raises(BadInputError, match="must hold an array") as err:
        sources.load_raw_urls([str(tmp_path / "y.json")], cache_dir=str(tmp_path / "c"))
    assert err.value.file == str(tmp_path / "y.json")


def test_large_jsonl_streams_in_bounded_memory(tmp_path: Path) -> None:
    """16 MB of JSONL loads holding a bounded buffer (about one writer batch), not the file."""
    path = tmp_path / "big.jsonl"
    line = json.dumps({"text": "x" * 2000}) + "\n"
    with path.open("w") as f:
        f.write(line * 8000)
    size = path.stat().st_size
    pool = pa.default_memory_pool()
    tracemalloc.start()
    raw = sources.load_raw_urls([str(path)], cache_dir=str(tmp_path / "cache"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(raw) == 8000
    assert peak < size / 2, (peak, size)
    assert pool.max_memory() < size / 2, (pool.max_memory(), size)
    assert raw.cache_files  # memory-mapped from disk, not an in-memory table
