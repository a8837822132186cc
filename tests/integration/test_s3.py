"""Data, base models and outputs on S3, against a real S3 API: moto's server on loopback.

Nothing of ours is mocked: the trainer's code talks to the server through s3fs/aiobotocore
exactly as it would to AWS or MinIO, with credentials and the endpoint taken from the
environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`) the way a
trainer pod gets them from its `credentialsSecretRef` Secret. The end-to-end case runs
`python -m kubetune_trainer train` with model, dataset and output all on s3://.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.common import DataSource, ModelSource, ObjectStoreSource
from kubetune.api.spec import FineTuneJobSpec, ModelSpec
from kubetune.contract import ExitCode
from kubetune_trainer import model_source, outputs, storage
from kubetune_trainer.config import dump_config
from kubetune_trainer.data import sources
from kubetune_trainer.data.formats import check_readable
from kubetune_trainer.failures import BadInput, Retryable, classify
from kubetune_trainer.models import resolve_model_dir
from kubetune_trainer.testing import make_config, make_plan
from tests.fixtures.tiny_model import cached_tiny_base, make_instruction_rows
from tests.integration.test_training import LORA, job, run_trainer

pytestmark = pytest.mark.trainer
BUCKET = "kubetune-test"
KEY, SECRET = "AKIAKUBETUNETEST0001", "kubetune-test-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class S3:
    endpoint: str
    client: Any  # boto3 S3 client, used only to arrange and inspect the bucket

    def env(self, **overrides: str) -> dict[str, str]:
        """What a trainer pod's envFrom Secret provides, plus a hermetic AWS config."""
        return {
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1,localhost",
            **overrides,
        }

    def keys(self, prefix: str) -> dict[str, bytes]:
        """Every object under `prefix`, key (relative to it) -> body."""
        found: dict[str, bytes] = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                body = self.client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
                found[item["Key"][len(prefix) :]] = body
        return found

    def upload_dir(self, local: Path, prefix: str) -> None:
        for path in sorted(local.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(local).as_posix()}"
                self.client.upload_file(str(path), BUCKET, key)

    @contextmanager
    def auth(self) -> Iterator[None]:
        """moto checks credentials only when asked; turn that on for the block."""
        self._reset_auth("0")
        try:
            yield
        finally:
            self._reset_auth("inf")

    def _reset_auth(self, count: str) -> None:
        req = urllib.request.Request(  # not form-encoded: moto reads the raw body
            f"{self.endpoint}/moto-api/reset-auth",
            data=count.encode(),
            headers={"Content-Type": "text/plain"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200


def start_s3() -> tuple[Any, S3]:
    """moto's S3 server on a free loopback port, with an empty bucket: (server, S3)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://localhost:{port}"  # a host name, as a MinIO service would have
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    return server, S3(endpoint, client)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """A moto S3 server with the bucket, a dataset and the tiny base model in it."""
    server, s3 = start_s3()
    client = s3.client
    rows = "".join(json.dumps(r) + "\n" for r in make_instruction_rows(96, seed=1))
    client.put_object(Bucket=BUCKET, Key="data/", Body=b"")  # a console-made "folder"
    client.put_object(Bucket=BUCKET, Key="data/train.jsonl", Body=rows.encode())
    client.put_object(
        Bucket=BUCKET, Key="data/more/extra.jsonl.gz", Body=gzip.compress(rows.encode()[:2000])
    )
    client.put_object(Bucket=BUCKET, Key="data/NOTES.txt", Body=b"not data")
    s3.upload_dir(cached_tiny_base(), "models/tiny")
    client.put_object(Bucket=BUCKET, Key="models/tiny/", Body=b"")
    client.put_object(Bucket=BUCKET, Key="models/tiny/extra/notes.md", Body=b"sub-folder")
    try:
        yield s3
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3, monkeypatch: pytest.MonkeyPatch) -> S3:
    """The server, with this process's environment set as a trainer pod's would be, and
    no s3fs instance (nor its listing cache) carried over from another test."""
    import s3fs

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(storage, "_secrets", None)  # no Secret named unless a test says so
    s3fs.S3FileSystem.clear_instance_cache()
    return s3_server


def _s3(uri: str) -> dict[str, Any]:
    return {"s3": {"uri": uri}}


# --------------------------------------------------------------------------- data
def test_dataset_prefix_loads_through_the_data_source(s3: S3, tmp_path: Path) -> None:
    source = DataSource.model_validate(_s3(f"s3://{BUCKET}/data"))
    urls = sources.list_files(sources.source_url(source))
    # the folder marker and NOTES.txt are not data; sub-prefixes are searched
    assert urls == [
        f"s3://{BUCKET}/data/more/extra.jsonl.gz",
        f"s3://{BUCKET}/data/train.jsonl",
    ]
    raw = sources.load_raw(source, cache_dir=str(tmp_path))
    expected = s3.keys("data/")["train.jsonl"].decode().splitlines()
    got = [r["raw"] for r in raw if r["file"].endswith("train.jsonl")]
    assert got == expected and len(got) == 96
    assert not any(raw["error"])
    assert sum(1 for f in raw["file"] if f.endswith(".gz")) > 0

    # one object, and a forced format over a prefix (the marker is still not a file)
    single = DataSource.model_validate(_s3(f"s3://{BUCKET}/data/train.jsonl"))
    assert len(sources.load_raw(single, cache_dir=str(tmp_path))) == 96
    s3.client.put_object(Bucket=BUCKET, Key="raw/", Body=b"")
    s3.client.put_object(Bucket=BUCKET, Key="raw/rows.txt", Body=expected[0].encode())
    assert sources.list_files(f"s3://{BUCKET}/raw", "jsonl") == [f"s3://{BUCKET}/raw/rows.txt"]


def test_missing_dataset_and_bucket_are_bad_input(s3: S3) -> None:
    for uri in (f"s3://{BUCKET}/nope/train.jsonl", "s3://no-such-bucket/train.jsonl"):
        with pytest.raises(sources.BadInputError, match="no such file"):
            sources.list_files(uri)


def test_undecodable_objects_are_bad_input_naming_the_object(s3: S3, tmp_path: Path) -> None:
    """Through s3fs as on a real store: bytes that are not what the key's name says are the
    user's to fix (exit 2), while the store itself answered fine."""
    rows = "".join(json.dumps(r) + "\n" for r in make_instruction_rows(200, seed=2)).encode()
    objects = {
        "bad/not-gzip.jsonl.gz": (rows, "the name says gzip-compressed but the file holds text"),
        "bad/cut.jsonl.gz": (gzip.compress(rows)[:-64], "not valid gzip data, or cut short"),
        "bad/not.parquet": (rows, "not a Parquet file: it holds text"),
        "bad/words.jsonl": (b"just words\n" * 3, ":1: line 1 is not valid JSON"),
    }
    for key, (body, says) in objects.items():
        s3.client.put_object(Bucket=BUCKET, Key=key, Body=body)
        source = DataSource.model_validate(_s3(f"s3://{BUCKET}/{key}"))
        with pytest.raises(sources.BadInputError) as err:
            raw = sources.load_raw(source, cache_dir=str(tmp_path))
            check_readable(raw)
        message = str(err.value)
        assert message.startswith(f"s3://{BUCKET}/{key}") and says in message, message
        assert classify(err.value)[0] == ExitCode.BAD_INPUT


# --------------------------------------------------------------------------- model
def test_model_prefix_downloads_whole(s3: S3, tmp_path: Path) -> None:
    base = cached_tiny_base()
    spec = ModelSpec.model_validate(_s3(f"s3://{BUCKET}/models/tiny"))
    where = Path(resolve_model_dir(spec, "/nonexistent", str(tmp_path / "trainer")))
    got = {p.relative_to(where).as_posix() for p in where.rglob("*") if p.is_file()}
    want = {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()}
    assert got == want | {"extra/notes.md"}
    for name in want:
        assert _sha(where / name) == _sha(base / name), name

    # the operator's config probe (inspect-model) reads just config.json the same way
    source = ModelSource.model_validate(_s3(f"s3://{BUCKET}/models/tiny/"))
    probe = model_source.resolve(source, tmp_path / "probe", files=["config.json"])
    assert [p.name for p in probe.iterdir()] == ["config.json"]
    assert (probe / "config.json").read_bytes() == (base / "config.json").read_bytes()
    whole = model_source.resolve(source, tmp_path / "probe-all")
    assert (whole / "extra" / "notes.md").read_bytes() == b"sub-folder"


def test_missing_model_is_bad_input(s3: S3, tmp_path: Path) -> None:
    spec = ModelSpec.model_validate(_s3(f"s3://{BUCKET}/models/nope"))
    with pytest.raises(BadInput, match="not found"):
        resolve_model_dir(spec, "/nonexistent", str(tmp_path))
    source = ModelSource.model_validate(_s3(f"s3://{BUCKET}/models/tiny"))
    with pytest.raises(BadInput, match="not found"):
        model_source.resolve(source, tmp_path, files=["no-such-file.json"])


# --------------------------------------------------------------------------- outputs
def test_outputs_push_every_file(s3: S3, tmp_path: Path) -> None:
    local = tmp_path / "publish"
    files = {
        "adapter/adapter_config.json": b'{"r": 8}',
        "adapter/adapter_model.safetensors": bytes(range(256)) * 1000,
        "report.json": b"{}",
        "deep/er/still.txt": b"x",
    }
    for name, body in files.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(body)
    uri = f"s3://{BUCKET}/runs/one/"
    assert outputs.push_fsspec(local, uri) == uri
    assert s3.keys("runs/one/") == files


def test_output_to_a_missing_bucket_is_bad_input_and_creates_nothing(
    s3: S3, tmp_path: Path
) -> None:
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(BadInput, match="not found") as err:
        outputs.push_fsspec(tmp_path, "s3://no-such-bucket/runs/one")
    assert classify(err.value)[0] == ExitCode.BAD_INPUT
    buckets = [b["Name"] for b in s3.client.list_buckets()["Buckets"]]
    assert buckets == [BUCKET]  # s3fs's makedirs would have created it


# --------------------------------------------------------------------------- failures
def test_wrong_credentials_are_bad_input(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with s3.auth():
        with pytest.raises(BadInput, match="access denied") as err:
            sources.list_files(f"s3://{BUCKET}/data/train.jsonl")
        assert classify(err.value)[0] == ExitCode.BAD_INPUT
        spec = ModelSpec.model_validate(_s3(f"s3://{BUCKET}/models/tiny"))
        with pytest.raises(BadInput, match="credentialsSecretRef"):
            resolve_model_dir(spec, "/nonexistent", str(tmp_path))
        (tmp_path / "report.json").write_text("{}")
        with pytest.raises(BadInput, match="access denied"):
            outputs.push_fsspec(tmp_path, f"s3://{BUCKET}/runs/denied")


def test_credential_refusals_name_the_secret_and_the_keys_it_lacks(
    s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: "check the credentialsSecretRef Secret", naming neither it nor its keys."""
    url = f"s3://{BUCKET}/data/train.jsonl"
    storage.use_credentials(
        [
            ObjectStoreSource.model_validate(
                {"uri": url, "credentialsSecretRef": {"name": "s3-creds"}}
            )
        ]
    )
    with s3.auth():
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with pytest.raises(BadInput) as err:
            sources.list_files(url)
        assert "access denied" in str(err.value)
        assert (
            "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the credentialsSecretRef"
            " Secret 's3-creds'" in str(err.value)
        )
        # A Secret without the keys (MinIO's accessKey/secretKey names, say): refused before
        # any request, which would otherwise fall back to the node's identity.
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        with pytest.raises(BadInput, match="Secret 's3-creds' lacks AWS_SECRET_ACCESS_KEY \\("):
            sources.list_files(url)
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        with pytest.raises(BadInput, match="lacks AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
            outputs.check_destinations(
                FineTuneJobSpec.model_validate(
                    {**SPEC, "output": {"s3": {"uri": f"s3://{BUCKET}/runs/x"}}}
                ),
                Path("/tmp"),
            )


SPEC = {"model": {"path": "/models/base"}, "dataset": {"train": {"path": "/data/t.jsonl"}}}


def test_output_stores_are_checked_writable_before_training(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def check(uri: str) -> None:
        spec = FineTuneJobSpec.model_validate({**SPEC, "output": {"s3": {"uri": uri}}})
        outputs.check_destinations(spec, tmp_path / "out")

    check(f"s3://{BUCKET}/runs/checked")
    assert s3.keys("runs/checked") == {}  # the test object is gone again
    with pytest.raises(BadInput, match=r"spec\.output\.s3: writing a test object to s3://nope-b"):
        check("s3://nope-bucket/runs/a")
    assert [b["Name"] for b in s3.client.list_buckets()["Buckets"]] == [BUCKET]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with s3.auth(), pytest.raises(BadInput, match="access denied"):
        check(f"s3://{BUCKET}/runs/denied")


def test_unreachable_store_is_retryable(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    start = time.monotonic()
    with pytest.raises(Retryable, match="EndpointConnectionError") as err:
        sources.list_files(f"s3://{BUCKET}/data/train.jsonl")
    assert classify(err.value)[0] == ExitCode.RETRYABLE
    print(f"unreachable endpoint reported after {time.monotonic() - start:.1f}s")


# --------------------------------------------------------------------------- trainer
def _s3_job(s3: S3, tmp_path: Path, data: str, output: str) -> Path:
    spec = job({"model": Path("/unused"), "data": Path("/unused")}, "lora", 1, LORA)
    spec["spec"]["model"] = _s3(f"s3://{BUCKET}/models/tiny")
    spec["spec"]["dataset"]["train"] = _s3(data)
    spec["spec"]["output"] = _s3(output)
    spec["spec"]["evaluation"]["maxTestSamples"] = 8
    plan = make_plan("lora", learningRate=3e-3, microBatchSize=16)
    cfg = make_config(spec, plan, tmp_path / "out")
    return dump_config(cfg, tmp_path / "cfg.json")


@pytest.mark.slow
def test_training_with_model_data_and_output_on_s3(s3: S3, tmp_path: Path) -> None:
    config = _s3_job(s3, tmp_path, f"s3://{BUCKET}/data/train.jsonl", f"s3://{BUCKET}/jobs/t1")
    code, summary = run_trainer(config, tmp_path, env=s3.env())
    assert code == 0, summary
    assert summary is not None and summary.reason == "Completed"
    pushed = s3.keys("jobs/t1/")
    for name in (
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer_config.json",
        "adapter/README.md",
        "report.json",
        "data-report.json",
        "README.md",
    ):
        assert name in pushed, sorted(pushed)
    out = tmp_path / "out"
    assert (
        pushed["adapter/adapter_model.safetensors"]
        == (out / "adapter" / "adapter_model.safetensors").read_bytes()
    )
    assert summary.output is not None
    assert summary.output.object_store == f"s3://{BUCKET}/jobs/t1"
    assert json.loads(pushed["data-report.json"])["counts"]
    assert not [k for k in pushed if k.startswith("checkpoint")]


def test_trainer_refuses_an_unwritable_output_before_training(s3: S3, tmp_path: Path) -> None:
    """Before: the whole run trained and evaluated, then failed copying the outputs."""
    config = _s3_job(s3, tmp_path, f"s3://{BUCKET}/data/train.jsonl", "s3://nope-bucket/jobs/t")
    code, summary = run_trainer(config, tmp_path, env=s3.env())
    assert code == ExitCode.BAD_INPUT and summary is not None, summary
    assert summary.message.startswith("spec.output.s3: writing a test object to s3://nope-bucket")
    assert summary.step is None and not (tmp_path / "out" / "checkpoints").exists()
    assert not (tmp_path / "out" / ".scratch" / "model").exists()  # not even downloaded


@pytest.mark.slow
def test_trainer_exit_codes_for_store_failures(s3: S3, tmp_path: Path) -> None:
    # a missing dataset object: bad input, named
    config = _s3_job(s3, tmp_path, f"s3://{BUCKET}/data/missing.jsonl", f"s3://{BUCKET}/x")
    code, summary = run_trainer(config, tmp_path, env=s3.env())
    assert code == ExitCode.BAD_INPUT and summary is not None, summary
    print(code, summary.message)
    assert "missing.jsonl" in summary.message and "no such file" in summary.message
    # wrong credentials: bad input, pointing at the Secret
    with s3.auth():
        code, summary = run_trainer(
            config, tmp_path, env=s3.env(AWS_SECRET_ACCESS_KEY="not-the-secret")
        )
    assert code == ExitCode.BAD_INPUT and summary is not None, summary
    print(code, summary.message)
    assert "credentialsSecretRef" in summary.message
    # an unreachable endpoint: retryable
    code, summary = run_trainer(
        config,
        tmp_path,
        env=s3.env(AWS_ENDPOINT_URL=f"http://127.0.0.1:{_free_port()}", AWS_MAX_ATTEMPTS="1"),
    )
    assert code == ExitCode.RETRYABLE and summary is not None, summary
    print(code, summary.message)
    assert summary.reason == "Retryable" and "127.0.0.1" in summary.message


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
