"""Object stores (`s3://`, `gs://`) through fsspec, for data, base models and outputs.

One place decides how a URL becomes a filesystem (credentials and endpoint from the
environment the operator projects the `credentialsSecretRef` Secret into) and what a
storage failure means for the run: a missing bucket/object or refused credentials is the
user's to fix (bad input, never retried); anything else — an unreachable endpoint, a
timeout, a 5xx — is transient (retryable). Light imports only: the data package and the
`inspect-model` probe use it too.
"""

from __future__ import annotations

import gzip
import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .failures import BadInput, Retryable

OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs"})
_CREDENTIAL_ERRORS = frozenset({"NoCredentialsError", "PartialCredentialsError"})
"""botocore's "found no (or half the) credentials": configuration, not a network blip."""
_CLIENT_PACKAGES = frozenset(
    {"botocore", "aiobotocore", "aiohttp", "google", "requests", "urllib3"}
)
"""Store clients whose own exception types (not OSError) mean a storage failure."""


def normalise(url: str) -> str:
    """`gcs://` is the API's alias of `gs://`, the scheme gcsfs registers."""
    return url.replace("gcs://", "gs://", 1)


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for an object-store URL, from the environment the operator sets.

    The operator projects the `credentialsSecretRef` Secret into these variables; when
    none is set the store's own default chain (workload identity) applies. The endpoint
    (MinIO, Ceph and other S3-compatible stores) comes from `AWS_ENDPOINT_URL_S3` or
    `AWS_ENDPOINT_URL`: botocore reads them too, but passing it keeps the behaviour
    independent of the botocore version in the image.
    """
    env = os.environ
    if url.startswith(("s3://", "s3a://")):
        opts: dict[str, Any] = {}
        for key, var in (
            ("key", "AWS_ACCESS_KEY_ID"),
            ("secret", "AWS_SECRET_ACCESS_KEY"),
            ("token", "AWS_SESSION_TOKEN"),
        ):
            if env.get(var):
                opts[key] = env[var]
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
        return opts
    if url.startswith(("gs://", "gcs://")) and env.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return {"token": env["GOOGLE_APPLICATION_CREDENTIALS"]}
    return {}


def filesystem(url: str) -> tuple[Any, str]:
    """`(fs, path)` for `url` with its storage options; a scheme without its fsspec
    package (s3fs, gcsfs) or an unknown scheme is bad input."""
    import fsspec

    url = normalise(url)
    try:
        return fsspec.core.url_to_fs(url, **storage_options(url))
    except (ImportError, ValueError) as err:
        raise BadInput(f"cannot open {url}: {err}") from err


def is_object_store(fs: Any) -> bool:
    """True for S3/GCS, where "directories" are key prefixes that need no creating."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool(OBJECT_STORE_PROTOCOLS.intersection(protocols))


def translate(err: BaseException, what: str) -> BadInput | Retryable:
    """The run's verdict on a storage exception; `what` says what was being done to where."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        return BadInput(f"{what}: not found ({text}); check the bucket and path")
    if isinstance(err, PermissionError) or type(err).__name__ in _CREDENTIAL_ERRORS:
        return BadInput(
            f"{what}: access denied ({text}); check the credentialsSecretRef Secret"
            " (or the pod's workload identity) and the bucket policy"
        )
    return Retryable(f"{what}: {type(err).__name__}: {text}")


def is_storage_error(err: BaseException) -> bool:
    """OSError (s3fs/gcsfs translate most responses into it) or a store client's own
    exception; not a parse error, nor a corrupt gzip stream (an OSError, but bad data)."""
    if isinstance(err, gzip.BadGzipFile):
        return False
    return isinstance(err, OSError) or type(err).__module__.split(".")[0] in _CLIENT_PACKAGES


@contextmanager
def errors(what: str) -> Iterator[None]:
    """Re-raise storage failures inside the block as BadInput or Retryable (see `translate`);
    errors that already state an exit code, and non-storage errors, pass unchanged."""
    try:
        yield
    except Exception as err:
        if isinstance(getattr(err, "exit_code", None), int) or not is_storage_error(err):
            raise
        raise translate(err, what) from err


def download_dir(fs: Any, root: str, target: Path, files: list[str] | None = None) -> Path:
    """Copy every object under the prefix `root` (or just `files`, relative to it) into
    `target`, keeping sub-folders, in one concurrent batch.

    Lists with `find` rather than `ls`: object stores have no real directories, `ls`
    returns sub-prefixes that cannot be fetched as files, and a zero-byte `prefix/` key
    (a "folder" made by a console) is a marker, not a file.
    """
    root = root.rstrip("/")
    if files is None:
        files = [
            p[len(root) + 1 :]
            for p in fs.find(root)
            if p.startswith(root + "/") and not p.endswith("/")
        ]
        if not files:
            raise FileNotFoundError(f"no objects under {root}/")
    target.mkdir(parents=True, exist_ok=True)
    local = [target / name for name in files]
    for path in local:
        path.parent.mkdir(parents=True, exist_ok=True)
    fs.get([posixpath.join(root, name) for name in files], [str(p) for p in local])
    return target
