"""Reading a `DataSource` into a disk-backed table of raw rows.

Every file format is reduced to the same three columns — `file`, `line`, `raw` (the row
as a JSON string) plus `error` — before anything interprets it. Two reasons: a bad row
(invalid JSON, undecodable bytes) must be reported with its line, not crash the reader;
and rows of mixed shapes (a number where text belongs) must not break Arrow's schema
inference. Rows are streamed into an Arrow file by `Dataset.from_generator`, which writes
in batches and memory-maps the result, so a 1 GB JSONL never sits in RAM.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

from datasets import Dataset, Features, Value

from kubetune import contract
from kubetune.api.common import DataSource

from ..storage import errors as store_errors
from ..storage import filesystem
from . import decode
from .errors import BadInputError

PVC_ROOT_ENV = contract.ENV_PVC_ROOT
DEFAULT_PVC_ROOT = contract.PVC_ROOT
"""Where the operator mounts claim `<claimName>`: `<root>/<claimName>`."""

KNOWN_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}
COMPRESSIONS = tuple(decode.COMPRESSION)
RAW_FEATURES = Features(
    {
        "file": Value("string"),
        "line": Value("int64"),
        "raw": Value("string"),
        "error": Value("string"),
    }
)


def pvc_root() -> str:
    """The PVC mount root, overridable for tests and local runs."""
    return os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT)


def source_url(source: DataSource) -> str:
    """The fsspec URL (or local path) a file-like source points at."""
    if source.path is not None:
        return source.path
    if source.pvc is not None:
        return str(PurePosixPath(pvc_root(), source.pvc.claim_name, source.pvc.path.lstrip("/")))
    store = source.s3 or source.gcs
    if store is not None:
        return store.uri.replace("gcs://", "gs://", 1)
    raise ValueError("source has no file location (hf sources are loaded by name)")


def file_format(url: str, forced: str = "auto") -> str:
    """The format from the extension (compression suffix ignored), or the forced one."""
    if forced != "auto":
        return forced
    name = url.lower()
    for suffix in COMPRESSIONS:
        name = name.removesuffix(suffix)
    fmt = KNOWN_EXTENSIONS.get(PurePosixPath(name).suffix)
    if fmt is None:
        raise BadInputError(
            "cannot tell the file format from the extension; use .jsonl, .json, .parquet or "
            ".csv (optionally .gz/.zst), or set fileFormat",
            file=url,
        )
    return fmt


def list_files(url: str, forced_format: str = "auto") -> list[str]:
    """The data files at `url`: the file itself, or the known-format files under a folder.

    A zero-byte `prefix/` key in an object store is a "folder" marker, never a data file.
    """
    fs, path = filesystem(url)
    with store_errors(f"listing the dataset at {url}", url):
        if not fs.exists(path):
            raise BadInputError("no such file or directory", file=url)
        if not fs.isdir(path):
            return [url]
        found = sorted(
            p
            for p in fs.find(path)
            if not p.endswith("/")
            and (
                forced_format != "auto"
                or PurePosixPath(_strip_compression(p)).suffix.lower() in KNOWN_EXTENSIONS
            )
        )
    if not found:
        raise BadInputError("directory holds no .jsonl/.json/.parquet/.csv files", file=url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return [p if protocol == "file" else f"{protocol}://{p}" for p in found]


def _strip_compression(name: str) -> str:
    for suffix in COMPRESSIONS:
        name = name.removesuffix(suffix)
    return name


def _row(file: str, line: int, raw: str = "", error: str = "") -> dict[str, Any]:
    return {"file": file, "line": line, "raw": raw, "error": error}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


def _item(file: str, line: int, item: Any) -> dict[str, Any]:
    """The raw row of a parsed record; a string holding a lone surrogate (JSON's
    `"\\ud801"` escape) is not Unicode text and would break the Arrow writer."""
    raw = _dumps(item)
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = raw[err.start : err.end].encode("unicode_escape").decode()
        return _row(file, line, error=f"invalid Unicode: a lone surrogate ({bad})")
    return _row(file, line, raw=raw)


CSV_FIELD_LIMIT = 1 << 30
"""csv's default (128 KiB) is shorter than many documents; rows are bounded by memory."""
UTF8_BOM = b"\xef\xbb\xbf"
"""Spreadsheet exports start text with it; it belongs to no value."""


@dataclass
class _Read:
    """How far a file has been read: records yielded, and the physical line reached."""

    rows: int = 0
    line: int = 0


def iter_file(url: str, fmt: str) -> Iterator[dict[str, Any]]:
    """Yield one raw row per record of `url`, with a 1-based line (or item) number.

    Bytes that cannot be decoded (bad compression, the wrong container, broken encoding,
    a file cut short) and a file without rows are bad input naming the file and where;
    a row that is not valid JSON is only that row's problem (its `error`).
    """
    parse = _PARSERS.get(fmt)
    if parse is None:
        raise BadInputError(f"unknown file format {fmt!r}", file=url)
    read = _Read()
    with decode.open_bytes(url, fmt) as opened:
        try:
            yield from parse(url, opened.handle, read)
        except Exception as err:
            reason = decode.undecodable(err, fmt)
            if reason is None:
                raise
            unit = "row" if fmt in ("parquet", "json") else "line"
            raise BadInputError(reason + opened.where(read.line, unit), file=url) from err
    if read.rows == 0:
        raise BadInputError(_EMPTY[fmt] if read.line else "the file holds no rows", file=url)


_EMPTY = {
    "jsonl": "the file holds no rows, only blank lines",
    "csv": "the file has a CSV header but no rows",
    "json": "the file holds an empty array",
    "parquet": "the file holds no rows",
}


def _jsonl(url: str, handle: IO[bytes], read: _Read) -> Iterator[dict[str, Any]]:
    for number, data in enumerate(_lines(handle), start=1):
        read.line = number
        if number == 1:
            data = data.removeprefix(UTF8_BOM)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            read.rows += 1
            yield _row(url, number, error=f"invalid UTF-8 ({err.reason})")
            continue
        if text.strip():
            read.rows += 1
            yield _row(url, number, raw=text)


def _json(url: str, handle: IO[bytes], read: _Read) -> Iterator[dict[str, Any]]:
    data = handle.read()
    try:
        items = json.loads(data.removeprefix(UTF8_BOM).decode("utf-8"))
    except RecursionError as err:
        raise BadInputError("JSON nested too deeply to read", file=url) from err
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise BadInputError(f"invalid UTF-8 ({err.reason})", file=url, line=line) from err
    except json.JSONDecodeError as err:
        hint = (
            "; one JSON object per line is JSON Lines: name the file .jsonl"
            if err.msg == "Extra data"
            else ""
        )
        raise BadInputError(
            f"invalid JSON: {err.msg} at column {err.colno}{hint}", file=url, line=err.lineno
        ) from err
    if not isinstance(items, list):
        raise BadInputError("a .json file must hold an array of rows", file=url)
    read.line = 1
    for number, item in enumerate(items, start=1):
        read.rows = read.line = number
        yield _item(url, number, item)


def _parquet(url: str, handle: IO[bytes], read: _Read) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    # Parquet reads its footer first: a decompressing stream cannot seek from the end.
    source = handle if isinstance(handle, decode.StoreStream) else io.BytesIO(handle.read())
    for batch in pq.ParquetFile(source).iter_batches(batch_size=1024):
        for item in batch.to_pylist():
            read.rows = read.line = read.rows + 1
            yield _item(url, read.rows, item)


def _csv(url: str, handle: IO[bytes], read: _Read) -> Iterator[dict[str, Any]]:
    def text_lines() -> Iterator[str]:
        # Decoded line by line, so an encoding error names its exact line. csv wants lines
        # split at \r, \n and \r\n with their ends kept (what open(newline="") gives).
        physical = (p for data in _lines(handle) for p in (data + b"\n").splitlines(True))
        for number, data in enumerate(physical, start=1):
            read.line = number
            try:
                yield (data.removeprefix(UTF8_BOM) if number == 1 else data).decode()
            except UnicodeDecodeError as err:
                raise BadInputError(
                    f"invalid UTF-8 ({err.reason}) at column {err.start + 1}",
                    file=url,
                    line=number,
                ) from err

    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.DictReader(text_lines())
    try:
        header = reader.fieldnames  # reads the header, so line_num counts from it
    except csv.Error as err:
        raise BadInputError(f"invalid CSV header: {err}", file=url, line=1) from err
    if not header:
        raise BadInputError("the file holds no CSV header, only blank lines", file=url)
    while True:
        start = reader.line_num + 1
        try:
            item = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise BadInputError(f"invalid CSV: {err}", file=url, line=start) from err
        read.rows += 1
        yield _row(url, start, raw=_dumps(item))


_PARSERS: dict[str, Callable[[str, IO[bytes], _Read], Iterator[dict[str, Any]]]] = {
    "jsonl": _jsonl,
    "json": _json,
    "parquet": _parquet,
    "csv": _csv,
}


def _lines(handle: Any, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a binary stream, for decompressors (zstd) that only offer read()."""
    rest = b""
    while block := handle.read(chunk):
        parts = (rest + block).split(b"\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest


def _iter_files(urls: list[str], fmt: str) -> Iterator[dict[str, Any]]:
    for url in urls:
        yield from iter_file(url, file_format(url, fmt))


def _iter_hub(source: DataSource) -> Iterator[dict[str, Any]]:
    from datasets import load_dataset

    hf = source.hf
    assert hf is not None
    ds = load_dataset(hf.repo, hf.config, split=hf.split, revision=hf.revision)
    name = f"hf://{hf.repo}@{hf.revision}[{hf.split}]"
    for number, item in enumerate(ds, start=1):
        yield _item(name, number, item)


def _fingerprint(urls: list[str], fmt: str) -> str:
    """Changes whenever a file changes, so the datasets cache never serves stale rows."""
    digest = hashlib.sha256(fmt.encode())
    for url in urls:
        fs, path = filesystem(url)
        with store_errors(f"reading {url}", url):
            info = fs.info(path)
        stamp = {k: info.get(k) for k in ("size", "mtime", "ETag", "etag", "md5Hash", "created")}
        digest.update(_dumps([url, stamp]).encode())
    return digest.hexdigest()[:32]


def load_raw(source: DataSource, cache_dir: str | None = None) -> Dataset:
    """Stream `source` into a memory-mapped Dataset of raw rows (see the module doc)."""
    if source.hf is not None:
        hf = source.hf
        key = hashlib.sha256(_dumps(hf.model_dump()).encode()).hexdigest()[:32]
        return _generate(_iter_hub, {"source": source}, cache_dir, key)
    return load_raw_urls(
        list_files(source_url(source), source.file_format), source.file_format, cache_dir
    )


def load_raw_urls(urls: list[str], fmt: str = "auto", cache_dir: str | None = None) -> Dataset:
    """Stream the given files (any fsspec URL) into a memory-mapped Dataset of raw rows."""
    for url in urls:
        file_format(url, fmt)  # fail on an unknown extension before reading anything
    return _generate(_iter_files, {"urls": urls, "fmt": fmt}, cache_dir, _fingerprint(urls, fmt))


def _generate(gen: Any, kwargs: dict[str, Any], cache_dir: str | None, key: str) -> Dataset:
    """`Dataset.from_generator`, re-raising our own errors (BadInputError, or a storage
    failure's BadInput/Retryable: anything stating an `exit_code`) from inside the generator,
    which `datasets` wraps in its DatasetGenerationError."""
    try:
        ds = Dataset.from_generator(
            gen, gen_kwargs=kwargs, features=RAW_FEATURES, cache_dir=cache_dir, fingerprint=key
        )
    except Exception as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(getattr(cause, "exit_code", None), int):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise
    assert isinstance(ds, Dataset)
    return ds
