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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .failures import BadInput, Retryable

OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs"})
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
"""The keys an S3 credentialsSecretRef Secret must hold (its keys become the environment)."""
GCS_KEY_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
_CREDENTIAL_ERRORS = frozenset({"NoCredentialsError", "PartialCredentialsError"})
"""botocore's "found no (or half the) credentials": configuration, not a network blip."""
_CLIENT_PACKAGES = frozenset(
    {"botocore", "aiobotocore", "aiohttp", "google", "requests", "urllib3"}
)
"""Store clients whose own exception types (not OSError) mean a storage failure."""


def normalise(url: str) -> str:
    """`gcs://` is the API's alias of `gs://`, the scheme gcsfs registers."""
    return url.replace("gcs://", "gs://", 1)


def _kind(url: str) -> str | None:
    if url.startswith(("s3://", "s3a://")):
        return "s3"
    if url.startswith(("gs://", "gcs://")):
        return "gs"
    return None


_secrets: dict[str, str] | None = None
"""Store kind -> the credentialsSecretRef Secret projected into this process's environment;
None until `use_credentials` says (for messages only: credentials come from the env)."""


def use_credentials(stores: Iterable[Any]) -> None:
    """Record which Secret the operator projected for each kind of store (`stores` are the
    spec's ObjectStoreSources; the spec allows one Secret per kind), so that a refusal names
    the Secret and a Secret lacking its keys is caught before any request."""
    global _secrets
    _secrets = {}
    for store in stores:
        kind, ref = _kind(normalise(store.uri)), store.credentials_secret_ref
        if kind is not None and ref is not None:
            _secrets[kind] = ref.name


def missing_credentials(url: str) -> str | None:
    """What the named Secret lacks for `url`, from this process's environment; None when
    nothing is missing or no Secret is named (workload identity)."""
    kind = _kind(normalise(url))
    secret = (_secrets or {}).get(kind or "")
    if secret is None:
        return None
    if kind == "s3":
        missing = [k for k in S3_KEYS if not os.environ.get(k)]
        if missing:
            return (
                f"the credentialsSecretRef Secret {secret!r} lacks {' and '.join(missing)}"
                " (each key of the Secret becomes an environment variable of the trainer)"
            )
        return None
    path = os.environ.get(GCS_KEY_ENV, "")
    if not path or not os.path.isfile(path):
        key = os.path.basename(path) or "key.json"
        return (
            f"the credentialsSecretRef Secret {secret!r} has no key {key}"
            " (the service-account JSON)"
        )
    return None


def credentials_hint(url: str) -> str:
    """What to check when the store refused the credentials: the Secret, by name, and its keys."""
    kind = _kind(normalise(url))
    missing = missing_credentials(url)
    if kind is None or missing:
        return missing or "check the credentials"
    keys = " and ".join(S3_KEYS) if kind == "s3" else "the service-account key.json"
    if _secrets is None:
        return f"check the credentialsSecretRef Secret ({keys}) and the bucket policy"
    secret = _secrets.get(kind)
    if secret is None:
        return (
            "no credentialsSecretRef is set, so the pod's own identity (workload identity,"
            f" IRSA) was used: set one naming a Secret with {keys}, or grant that identity"
            " access to the bucket"
        )
    return f"check {keys} in the credentialsSecretRef Secret {secret!r} and the bucket policy"


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
    missing = missing_credentials(url)
    if missing:
        raise BadInput(f"cannot use {url}: {missing}")
    try:
        return fsspec.core.url_to_fs(url, **storage_options(url))
    except (ImportError, ValueError) as err:
        raise BadInput(f"cannot open {url}: {err}") from err


def is_object_store(fs: Any) -> bool:
    """True for S3/GCS, where "directories" are key prefixes that need no creating."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool(OBJECT_STORE_PROTOCOLS.intersection(protocols))


def translate(err: BaseException, what: str, url: str) -> BadInput | Retryable:
    """The run's verdict on a storage exception at `url`; `what` says what was being done."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        return BadInput(f"{what}: not found ({text}); check the bucket and path")
    if isinstance(err, PermissionError) or type(err).__name__ in _CREDENTIAL_ERRORS:
        return BadInput(f"{what}: access denied ({text}); {credentials_hint(url)}")
    return Retryable(f"{what}: {type(err).__name__}: {text}")


def is_storage_error(err: BaseException) -> bool:
    """OSError (s3fs/gcsfs translate most responses into it) or a store client's own
    exception; not a parse error, nor a corrupt gzip stream (an OSError, but bad data)."""
    if isinstance(err, gzip.BadGzipFile):
        return False
    return isinstance(err, OSError) or type(err).__module__.split(".")[0] in _CLIENT_PACKAGES


@contextmanager
def errors(what: str, url: str) -> Iterator[None]:
    """Re-raise storage failures at `url` inside the block as BadInput or Retryable (see
    `translate`); errors that already state an exit code, and non-storage errors, pass."""
    try:
        yield
    except Exception as err:
        if isinstance(getattr(err, "exit_code", None), int) or not is_storage_error(err):
            raise
        raise translate(err, what, url) from err


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
