"""Property-based fuzzing of the dataset readers (Hypothesis).

Files of every supported format and compression are written from random rows, then
mislabelled (another format or compression in the name), cut short, or hit with random
bytes; some are random bytes outright. Whatever the bytes, reading must either give rows
with their file and line, or refuse with a BadInputError that starts with the file and says
where (`file:line:` or a byte offset) or what the whole file is; never another exception
(a traceback, exit 1, a retry). Untouched, correctly named files must read back exactly the
rows written. The rows read then go through the checks that follow loading (JSON rows,
format detection, normalisation), which may refuse only with BadInputError or RowError.

Bounded for `make test`: see the `settings` below; the figures are in docs/testing.md.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune_trainer.data import sources
from kubetune_trainer.data.errors import BadInputError
from kubetune_trainer.data.formats import (
    Fields,
    RowError,
    check_readable,
    detect_format,
    normalise,
)

FORMATS = ("jsonl", "json", "csv", "parquet")
CODECS = ("", ".gz", ".zst", ".zstd")
SUFFIX = {"jsonl": ".jsonl", "json": ".json", "csv": ".csv", "parquet": ".parquet"}
WHOLE_FILE = re.compile(
    r": (the file is empty|the file holds|the file has a CSV header|the name says"
    r"|not a Parquet file: it holds|a \.json file must hold an array|JSON nested too deeply)"
)
"""Refusals about the whole file, which have no line to name."""
SCALE = float(os.environ.get("KUBETUNE_FUZZ_SCALE", "1"))
"""Multiplies every example count: `KUBETUNE_FUZZ_SCALE=20` for a long offline run."""
SETTINGS = settings(
    max_examples=int(250 * SCALE),
    deadline=None,  # a loaded 2-core machine stalls now and then; the bound is max_examples
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40).filter(str.strip)
rows_strategy = st.lists(
    st.fixed_dictionaries({"text": text, "note": st.text(max_size=10)}), min_size=1, max_size=12
)


def encode(rows: list[dict[str, Any]], fmt: str) -> bytes:
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    if fmt == "json":
        return json.dumps(rows).encode()
    if fmt == "csv":
        out = io.StringIO(newline="")
        writer = csv.DictWriter(out, fieldnames=["text", "note"])  # \r\n, as Excel writes
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().encode()
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def compress(data: bytes, codec: str) -> bytes:
    if codec == ".gz":
        return gzip.compress(data)
    if codec in (".zst", ".zstd"):
        return zstandard.ZstdCompressor().compress(data)
    return data


@st.composite
def damaged_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(file name, bytes): random rows in one format and compression, named as another
    (sometimes), then cut short or overwritten (sometimes), or random bytes outright."""
    name_fmt, name_codec = draw(st.sampled_from(FORMATS)), draw(st.sampled_from(CODECS))
    name = "data" + SUFFIX[name_fmt] + name_codec
    if draw(st.integers(0, 4)) == 0:
        return name, draw(st.binary(max_size=600))
    fmt = draw(st.sampled_from(FORMATS)) if draw(st.booleans()) else name_fmt
    codec = draw(st.sampled_from(CODECS)) if draw(st.booleans()) else name_codec
    data = compress(encode(draw(rows_strategy), fmt), codec)
    damage = draw(st.sampled_from(["none", "cut", "overwrite", "insert"]))
    if damage != "none" and data:
        at = draw(st.integers(0, len(data) - 1))
        junk = draw(st.binary(min_size=1, max_size=16))
        if damage == "cut":
            data = data[:at]
        elif damage == "overwrite":
            data = data[:at] + junk + data[at + len(junk) :]
        else:
            data = data[:at] + junk + data[at:]
    return name, data


def read(path: Path) -> list[dict[str, Any]]:
    url = str(path)
    return list(sources.iter_file(url, sources.file_format(url)))


def assert_names_file_and_place(err: BadInputError, path: Path) -> None:
    message = str(err)
    assert message.startswith(str(path)), message
    located = re.match(rf"{re.escape(str(path))}:\d+: ", message) or re.search(
        r" at byte \d+ of \d+", message
    )
    assert located or WHOLE_FILE.search(message), message


def after_loading(rows: list[dict[str, Any]]) -> None:
    """The checks that follow loading: only BadInputError (naming a file and line, or the
    spec fields to set) and per-row RowError may come out."""
    try:
        check_readable(rows)
        fmt = detect_format([r["raw"] for r in rows if r["raw"]], Fields())
    except BadInputError as err:
        assert (err.file and err.line) or "spec.dataset.format" in str(err), str(err)
        return
    for row in rows:
        if row["raw"]:
            try:
                example = normalise(row["raw"], fmt, Fields(), None)
            except RowError:
                continue
            # what the pipeline stores in Arrow: must be encodable text
            json.dumps(example, ensure_ascii=False).encode("utf-8")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@SETTINGS
@given(damaged_files())
def test_any_bytes_read_as_rows_or_refused_naming_file_and_place(
    workdir: Path, file: tuple[str, bytes]
) -> None:
    name, data = file
    path = workdir / name
    path.write_bytes(data)
    try:
        rows = read(path)
    except BadInputError as err:
        assert_names_file_and_place(err, path)
        return
    assert rows, "a file without rows must be refused"
    for row in rows:
        assert row["file"] == str(path) and row["line"] >= 1
        assert bool(row["raw"]) != bool(row["error"]), row
    after_loading(rows)


@settings(SETTINGS, max_examples=int(150 * SCALE))
@given(st.sampled_from(FORMATS), st.sampled_from(CODECS), rows_strategy)
def test_intact_files_read_back_exactly(
    workdir: Path, fmt: str, codec: str, rows: list[dict[str, Any]]
) -> None:
    path = workdir / ("intact" + SUFFIX[fmt] + codec)
    path.write_bytes(compress(encode(rows, fmt), codec))
    got = read(path)
    assert [json.loads(r["raw"]) for r in got] == rows
    lines = [r["line"] for r in got]
    if fmt == "csv":  # the line a record starts on; quoted newlines make records longer
        assert lines[0] == 2 and lines == sorted(set(lines)), lines
    else:
        assert lines == list(range(1, len(rows) + 1))
    after_loading(got)


@settings(SETTINGS, max_examples=int(25 * SCALE))
@given(damaged_files())
def test_the_dataset_writer_surfaces_the_same_verdict(
    workdir: Path, file: tuple[str, bytes]
) -> None:
    """Through `Dataset.from_generator` (which wraps errors raised inside the reader) the
    refusal is still the BadInputError, not datasets' DatasetGenerationError."""
    name, data = file
    path = workdir / ("ds-" + name)
    path.write_bytes(data)
    try:
        raw = sources.load_raw_urls([str(path)], cache_dir=str(workdir / "cache"))
    except BadInputError as err:
        assert_names_file_and_place(err, path)
        return
    assert len(raw) > 0
