"""Loading: every file format and compression, PVC paths, object-store credentials,
bounded memory on large files, and every undecodable file refused as bad input."""

from __future__ import annotations

import gzip
import io
import json
import re
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from kubetune.api.common import DataSource
from kubetune.contract import ExitCode
from kubetune_trainer import storage
from kubetune_trainer.data import decode, sources
from kubetune_trainer.data.errors import BadInputError
from kubetune_trainer.data.formats import Fields, RowError, normalise
from kubetune_trainer.failures import BadInput, Retryable, classify

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
        "zstd": d / "g.jsonl.zstd",
        "bom": d / "h.jsonl",
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
    # two zstd frames back to back, as `cat a.zst b.zst` or pzstd make them
    half = jsonl.index(b"\n", len(jsonl) // 2) + 1
    zstd = zstandard.ZstdCompressor()
    files["zstd"].write_bytes(zstd.compress(jsonl[:half]) + zstd.compress(jsonl[half:]))
    files["bom"].write_bytes(sources.UTF8_BOM + jsonl)  # as a spreadsheet export writes it
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
    assert len(raw) == 8 * len(ROWS)
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
    assert storage.storage_options("s3://b/k.jsonl") == {
        "key": "AK",
        "secret": "SK",
        "client_kwargs": {"endpoint_url": "http://minio:9000"},
    }
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3.internal:9000")  # wins, as in botocore
    assert storage.storage_options("s3://b/k")["client_kwargs"] == {
        "endpoint_url": "http://s3.internal:9000"
    }
    assert storage.storage_options("gs://b/k") == {"token": "/var/run/gcp/key.json"}
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


# --------------------------------------------------------------------------- undecodable
JSONL = b"".join(json.dumps(r).encode() + b"\n" for r in ROWS)


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def _zip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("train.jsonl", data)
    return buf.getvalue()


BIG = JSONL * 400
PARQUET = _parquet([{"text": f"row {i} " * 20} for i in range(2000)])
UNDECODABLE = [
    # name, bytes, what the message must say after "<path>"
    ("not-parquet.parquet", b"text\nhello\n", r": not a Parquet file: it holds text"),
    ("cut.parquet", PARQUET[:-4000] + PARQUET[-8:], r": not a valid Parquet file \(.*\) at byte"),
    ("not-gzip.jsonl.gz", JSONL, r": the name says gzip-compressed but the file holds text"),
    ("cut.jsonl.gz", gzip.compress(BIG)[:-40], r": not valid gzip data, or cut short .* at byte"),
    ("cut.jsonl.zst", zstandard.compress(BIG)[:-40], r": not valid zstd data, or cut short"),
    ("cut.csv.zstd", zstandard.compress(b"text\n" + b"a\n" * 9000)[:-9], r": not valid zstd"),
    ("plain.jsonl.zst", JSONL, r": the name says zstd-compressed but the file holds text"),
    ("gzipped.jsonl", gzip.compress(JSONL), r": the file holds gzip data but its name has no .gz"),
    ("zipped.jsonl", _zip(JSONL), r": the file holds zip data, which is not supported"),
    ("parquet.jsonl", PARQUET, r": the file holds Parquet data but is read as jsonl"),
    ("empty.jsonl", b"", r": the file is empty \(0 bytes\)"),
    ("empty.jsonl.gz", gzip.compress(b""), r": the file holds no rows"),
    ("blank.jsonl", b"\n \n\n", r": the file holds no rows, only blank lines"),
    ("header.csv", b"text\n", r": the file has a CSV header but no rows"),
    ("blank.csv", b"\n\n", r": the file holds no CSV header, only blank lines"),
    ("latin1.csv", "text\nok\ncaf\xe9 au lait\n".encode("latin-1"), r":3: invalid UTF-8"),
    ("lines.json", JSONL, r":2: invalid JSON: Extra data .* name the file \.jsonl"),
    ("cut.json", json.dumps(ROWS).encode()[:-30], r":1: invalid JSON"),
    ("latin1.json", '[{"text": "caf\xe9"}]'.encode("latin-1"), r":1: invalid UTF-8"),
    ("empty-array.json", b"[]", r": the file holds an empty array"),
    ("deep.json", b"[" * 100_000, r": JSON nested too deeply to read"),
]


@pytest.mark.parametrize(("name", "data", "says"), UNDECODABLE, ids=[c[0] for c in UNDECODABLE])
def test_undecodable_files_are_bad_input_naming_file_and_place(
    tmp_path: Path, name: str, data: bytes, says: str
) -> None:
    """Bad compression, the wrong container, broken encoding, a cut-off or empty file: each
    is the user's to fix (exit 2, never retried), with the file and line or byte named.
    Before, most of these surfaced as `DatasetGenerationError` (exit 1, retried)."""
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(BadInputError) as err:
        sources.load_raw_urls([str(path)], cache_dir=str(tmp_path / "cache"))
    message = str(err.value)
    assert message.startswith(str(path)), message
    assert re.search(says, message), message
    assert classify(err.value)[0] == ExitCode.BAD_INPUT


def test_a_csv_field_longer_than_pythons_default_limit_loads(tmp_path: Path) -> None:
    """csv's default field limit (128 KiB) would refuse a long document as "invalid CSV"."""
    path = tmp_path / "long.csv"
    path.write_text('text\n"' + "word " * 60_000 + '"\nshort\n')
    raw = sources.load_raw_urls([str(path)], cache_dir=str(tmp_path / "cache"))
    assert [len(json.loads(r)["text"]) for r in raw["raw"]] == [300_000, 5]


def test_lone_surrogate_escapes_are_malformed_rows_not_a_crash(tmp_path: Path) -> None:
    """`"\\ud801"` decodes to a lone surrogate, which is not text: the Arrow writer (and
    the tokenizer) fail on it. Found by tests/unit/test_fuzz_data_readers.py."""
    path = tmp_path / "rows.json"
    path.write_text('[{"text": "ok"}, {"text": "a\\ud801b"}, {"text": "\\ud83d\\ude00"}]')
    raw = sources.load_raw_urls([str(path)], cache_dir=str(tmp_path / "cache"))
    assert list(raw["error"]) == ["", "invalid Unicode: a lone surrogate (\\ud801)", ""]
    assert json.loads(raw["raw"][2]) == {"text": "\U0001f600"}  # a proper pair is fine
    with pytest.raises(RowError, match=r"lone surrogate \(\\udc00\)"):
        normalise('{"text": "x\\udc00"}', "text", Fields(), None)


def test_a_pvc_source_names_the_file_on_the_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = tmp_path / "datasets" / "support"
    claim.mkdir(parents=True)
    (claim / "a.jsonl").write_bytes(JSONL)
    (claim / "b.jsonl.gz").write_bytes(JSONL)  # not gzip
    monkeypatch.setenv(sources.PVC_ROOT_ENV, str(tmp_path))
    source = DataSource.model_validate({"pvc": {"claimName": "datasets", "path": "support"}})
    with pytest.raises(BadInputError, match=f"^{claim / 'b.jsonl.gz'}: the name says gzip"):
        sources.load_raw(source, cache_dir=str(tmp_path / "cache"))


class _FlakyStore(io.RawIOBase):
    """A store stream that fails after `good` bytes, as a dropped connection does."""

    def __init__(self, data: bytes, good: int, error: Exception) -> None:
        self._data, self._good, self._error, self._pos = data, good, error, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else len(self._data) + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._data) if size is None or size < 0 else self._pos + size
        if min(end, len(self._data)) > self._good:
            raise self._error
        chunk = self._data[self._pos : end]
        self._pos += len(chunk)
        return chunk


@pytest.mark.parametrize(
    ("error", "verdict"),
    [(ConnectionResetError("reset by peer"), Retryable), (PermissionError("denied"), BadInput)],
)
def test_a_store_failing_mid_read_keeps_its_own_verdict(
    error: Exception, verdict: type[Exception]
) -> None:
    """Decoders turn a failing read into their own errors (pyarrow's OSError, gzip's EOF),
    which would read as bad data; the store's stream translates its failure first."""
    for data, opener in (
        (gzip.compress(BIG), lambda s: gzip.GzipFile(fileobj=s).read()),
        (PARQUET, lambda s: pq.ParquetFile(s).read()),
    ):
        flaky = _FlakyStore(data, len(data) // 2, error)
        stream = decode.StoreStream(flaky, "reading s3://b/k", "s3://b/k")
        with pytest.raises(verdict, match="reading s3://b/k"):
            opener(stream)
