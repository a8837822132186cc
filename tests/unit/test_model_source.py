"""Finding the base model: what is the user's to fix (bad input) and what may pass on a
retry, for the trainer and the operator's config probe alike.

The Hub cases talk HTTP to a stand-in Hub on loopback (huggingface_hub's real client,
pointed at it), answering what the Hub answers: 404 with `X-Error-Code: RepoNotFound`,
401, 503, or nothing at all.
"""

from __future__ import annotations

import argparse
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune import contract as c
from kubetune.api.common import ModelSource
from kubetune_trainer import inspect_model, model_source
from kubetune_trainer.failures import BadInput, Retryable


class _Hub(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code: int = self.server.answer  # type: ignore[attr-defined]
        self.send_response(code)
        if code == 404:
            self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_HEAD = do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[http.server.ThreadingHTTPServer]:
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield server
    server.shutdown()


HF = ModelSource.model_validate({"hf": {"repo": "org/model"}})


@pytest.mark.parametrize(("answer", "expected"), [(404, BadInput), (401, BadInput)])
def test_missing_or_refused_repo_is_bad_input(
    hub: http.server.ThreadingHTTPServer, tmp_path: Path, answer: int, expected: type
) -> None:
    hub.answer = answer  # type: ignore[attr-defined]
    with pytest.raises(expected, match="tokenSecretRef"):
        model_source.resolve(HF, tmp_path, files=["config.json"])


def test_hub_server_error_is_retryable(
    hub: http.server.ThreadingHTTPServer, tmp_path: Path
) -> None:
    hub.answer = 503  # type: ignore[attr-defined]
    with pytest.raises(Retryable, match="cannot reach the Hub"):
        model_source.resolve(HF, tmp_path, files=["config.json"])


def test_unreachable_hub_is_retryable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")  # nobody listens
    with pytest.raises(Retryable, match="cannot reach the Hub"):
        model_source.resolve(HF, tmp_path, files=["config.json"])


def test_missing_directory_is_bad_input(tmp_path: Path) -> None:
    missing = ModelSource.model_validate({"path": str(tmp_path / "nope")})
    with pytest.raises(BadInput, match="no such directory"):
        model_source.resolve(missing, tmp_path)
    pvc = ModelSource.model_validate({"pvc": {"claimName": "models", "path": "/llama"}})
    with pytest.raises(BadInput, match="pvc models:/llama"):
        model_source.resolve(pvc, tmp_path, pvc_root_dir=str(tmp_path))


def _probe(model: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple:
    log = tmp_path / "termination-log"
    monkeypatch.setenv(c.ENV_TERMINATION_LOG, str(log))
    monkeypatch.setattr(c, "SCRATCH_DIR", str(tmp_path / "scratch"))
    code = inspect_model.run(argparse.Namespace(model=json.dumps(model)))
    return code, json.loads(log.read_text())


def test_probe_reports_config_or_why_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: http.server.ThreadingHTTPServer
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    code, out = _probe({"path": str(model)}, tmp_path, monkeypatch)
    assert code == 0 and out == {"model_type": "llama", "hidden_size": 64}

    code, out = _probe({"path": str(tmp_path / "nope")}, tmp_path, monkeypatch)
    assert code == c.ExitCode.BAD_INPUT and out["reason"] == "ModelConfigUnreadable"
    # Said once: the operator puts "spec.model: cannot read config.json:" in front.
    assert out["message"] == f"{tmp_path / 'nope'}: no such directory"

    code, out = _probe({"pvc": {"claimName": "models", "path": "m"}}, tmp_path, monkeypatch)
    assert out["message"].startswith("pvc models:/m: no such directory (")
    assert "config.json" not in out["message"]

    (tmp_path / "empty").mkdir()
    code, out = _probe({"path": str(tmp_path / "empty")}, tmp_path, monkeypatch)
    assert out["message"].count(str(tmp_path / "empty")) == 1, out["message"]

    hub.answer = 503  # type: ignore[attr-defined]
    code, out = _probe({"hf": {"repo": "org/model"}}, tmp_path, monkeypatch)
    assert code == c.ExitCode.RETRYABLE and out["reason"] == "ModelSourceUnreachable"
    assert "503" in out["message"]


@pytest.mark.parametrize(("answer", "expected"), [(401, BadInput), (503, Retryable)])
def test_hub_push_refused_is_bad_input_unreachable_retryable(
    hub: http.server.ThreadingHTTPServer, tmp_path: Path, answer: int, expected: type
) -> None:
    from kubetune_trainer import outputs

    hub.answer = answer  # type: ignore[attr-defined]
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(expected, match="org/tuned"):
        outputs.push_hub(tmp_path, "org/tuned", "main", private=True, token="hf_x")


def test_push_uses_the_output_token_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune_trainer import outputs

    monkeypatch.setenv(c.ENV_HF_TOKEN, "read")
    monkeypatch.delenv(c.ENV_HF_PUSH_TOKEN, raising=False)
    assert outputs.hub_push_token() == "read"
    monkeypatch.setenv(c.ENV_HF_PUSH_TOKEN, "write")
    assert outputs.hub_push_token() == "write"
