"""A data file's bytes: opened through its store, decompressed, and blamed correctly.

Reading can fail in two ways that need opposite answers. The store can fail (unreachable,
refused, missing), which `storage.translate` turns into retry or bad input. Or the bytes
are not what the file's name says (not gzip, cut short, not Parquet, not UTF-8), which is
bad input and never retried. Exception types cannot tell these apart: gzip's BadGzipFile
and pyarrow's corrupt-page error are OSErrors, like a dropped connection. So the store's
stream is wrapped (`StoreStream`), and every failure of the store is translated where it
happens. Whatever fails above it (decompressor, parser) is the data's fault (`undecodable`).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

from .. import storage
from .errors import BadInputError

COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
"""Suffix -> codec. fsspec's own inference misses `.zstd` (it would read zstd as text)."""
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PAR1", "Parquet"),
    (b"PK\x03\x04", "zip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)
_CODEC_MAGIC = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}
_ZSTD_CHUNK = 1 << 16
"""Compressed bytes fed to zstd at a time (64 KiB: bounds the output of one call)."""


class TruncatedError(EOFError):
    """A compressed stream ends inside a frame: the file was cut short."""


def compression_of(url: str) -> str | None:
    """The codec a file's name says it uses, or None."""
    name = url.lower()
    return next((codec for suffix, codec in COMPRESSION.items() if name.endswith(suffix)), None)


def sniff(head: bytes) -> str:
    """What the first bytes of a file look like, in words for a message."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return f"{kind} data"
    if not head:
        return "nothing (0 bytes)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not just a character cut by the sniff's end
            return "binary data"
    return "text"


class StoreStream(io.RawIOBase):
    """The store's byte stream; its own failures leave it already translated.

    `storage.translate` runs here, on the raw read, so that an OSError raised further up
    (by gzip, pyarrow) can only mean bad bytes. `offset` is how far the store was read.
    """

    def __init__(self, raw: Any, what: str, url: str) -> None:
        super().__init__()
        self._raw = raw
        self._what = what
        self._url = url
        self.offset = 0
        self.total: int | None = getattr(raw, "size", None)

    def _failure(self, err: Exception) -> Exception:
        if isinstance(getattr(err, "exit_code", None), int) or not storage.is_storage_error(err):
            return err
        return storage.translate(err, self._what, self._url)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return bool(self._raw.seekable())

    def read(self, size: int | None = -1) -> bytes:
        try:
            data: bytes = self._raw.read(-1 if size is None else size)
        except Exception as err:
            raise self._failure(err) from err
        self.offset += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            position = int(self._raw.seek(offset, whence))
        except Exception as err:
            raise self._failure(err) from err
        self.offset = position
        return position

    def tell(self) -> int:
        return self.offset


class ZstdStream(io.RawIOBase):
    """zstd frames one after another (as `zstd`, `pzstd` and `cat a.zst b.zst` write them).

    zstandard's own stream_reader returns what it has when the input ends inside a frame,
    so a truncated file would load as fewer rows without a word; this raises instead.
    """

    def __init__(self, source: io.RawIOBase) -> None:
        import zstandard

        super().__init__()
        self._source = source
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = self._dctx.decompressobj()
        self._in_frame = False
        self._out = bytearray()
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out and not self._done:
            self._fill()
        size = min(len(buffer), len(self._out))
        buffer[:size] = self._out[:size]
        del self._out[:size]
        return size

    def _fill(self) -> None:
        data = self._source.read(_ZSTD_CHUNK)
        if not data:
            if self._in_frame:
                raise TruncatedError("the zstd stream ends inside a frame")
            self._done = True
            return
        while data:
            self._out += self._frame.decompress(data)
            if not self._frame.eof:
                self._in_frame = True
                return
            data = self._frame.unused_data  # the next frame starts in this chunk
            self._frame = self._dctx.decompressobj()
            self._in_frame = False


@dataclass
class Opened:
    """An open data file: its decompressed bytes, and the store stream under them."""

    handle: BinaryIO
    stream: StoreStream

    def where(self, line: int, unit: str = "line") -> str:
        """Where reading stopped, for a message: the store offset and the last good record."""
        after = f", after {unit} {line}" if line else ""
        total = self.stream.total
        of = f" of {total}" if isinstance(total, int) else " of the file"
        return f" at byte {self.stream.offset}{of}{after}"


@contextmanager
def open_bytes(url: str, fmt: str) -> Iterator[Opened]:
    """The file's decompressed bytes, to be read as `fmt`.

    A file whose bytes contradict its name (a `.gz` that is not gzip, gzip without the
    suffix, a `.parquet` holding text, a zip archive) is refused before decoding, saying
    what the file holds instead.
    """
    what = f"reading {url}"
    fs, path = storage.filesystem(url)
    with storage.errors(what, url):
        raw = fs.open(path, "rb")
    with raw:
        stream = StoreStream(raw, what, url)
        codec = compression_of(url)
        if stream.seekable():
            head = stream.read(8)
            stream.seek(0)
            problem = _mislabelled(head, codec, fmt)
            if problem:
                raise BadInputError(problem, file=url)
        handle: Any = stream
        if codec == "gzip":
            handle = gzip.GzipFile(fileobj=stream, mode="rb")
        elif codec == "zstd":
            handle = io.BufferedReader(ZstdStream(stream), buffer_size=1 << 20)
        yield Opened(handle, stream)


def _mislabelled(head: bytes, codec: str | None, fmt: str) -> str | None:
    if not head:
        return "the file is empty (0 bytes)"
    looks = sniff(head)
    if codec is not None:
        if not head.startswith(_CODEC_MAGIC[codec]):
            return (
                f"the name says {codec}-compressed but the file holds {looks}, not {codec}"
                " data; rename it or compress it"
            )
        return None
    if looks in ("gzip data", "zstd data"):
        suffix = ".gz" if looks == "gzip data" else ".zst"
        return f"the file holds {looks} but its name has no {suffix} suffix; rename it"
    if looks in ("zip data", "bzip2 data", "xz data"):
        return f"the file holds {looks}, which is not supported; unpack it, or use gzip or zstd"
    if fmt == "parquet" and looks != "Parquet data":
        return f"not a Parquet file: it holds {looks} (a Parquet file starts with PAR1)"
    if fmt != "parquet" and looks == "Parquet data":
        return f"the file holds Parquet data but is read as {fmt}; name it .parquet"
    return None


_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # gzip.BadGzipFile, pyarrow's corrupt pages (store failures arrive translated)
    EOFError,  # a gzip or zstd stream cut short
    ValueError,  # UnicodeDecodeError, JSONDecodeError, pyarrow.ArrowInvalid
    zlib.error,
    csv.Error,
    RecursionError,  # JSON nested deeper than the parser's stack
)


def undecodable(err: BaseException, fmt: str) -> str | None:
    """Why the bytes of a `fmt` file cannot be decoded, for a message; None when `err` is
    not a decode failure (a store failure, already translated, or a bug of ours)."""
    if isinstance(getattr(err, "exit_code", None), int):
        return None
    names = {k.__name__ for k in type(err).__mro__}
    if not isinstance(err, _DECODE_ERRORS) and not names & {"ZstdError", "ArrowException"}:
        return None
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, gzip.BadGzipFile | zlib.error) or (
        isinstance(err, EOFError) and "end-of-stream" in text
    ):
        return f"not valid gzip data, or cut short ({text})"
    if isinstance(err, TruncatedError) or "ZstdError" in names:
        return f"not valid zstd data, or cut short ({text})"
    if isinstance(err, RecursionError):
        return "JSON nested too deeply to read"
    if fmt == "parquet" or "ArrowException" in names:
        return f"not a valid Parquet file ({text})"
    if isinstance(err, UnicodeDecodeError):
        return f"not valid UTF-8 ({err.reason})"
    if isinstance(err, json.JSONDecodeError):
        return f"not valid JSON ({err.msg} at column {err.colno})"
    return f"cannot be decoded ({type(err).__name__}: {text})"
