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
        body: bytes = getattr(self.server, "body", b"{}")
        self.send_response(code)
        if code == 404:
            self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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


def _probe(
    model: dict[str, object] | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dataset: dict[str, object] | None = None,
) -> tuple:
    log = tmp_path / "termination-log"
    monkeypatch.setenv(c.ENV_TERMINATION_LOG, str(log))
    monkeypatch.setattr(c, "SCRATCH_DIR", str(tmp_path / "scratch"))
    args = argparse.Namespace(
        model=json.dumps(model) if model else None,
        dataset=json.dumps(dataset) if dataset else None,
    )
    code = inspect_model.run(args)
    return code, json.loads(log.read_text())


def test_probe_reports_config_or_why_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: http.server.ThreadingHTTPServer
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    code, out = _probe({"path": str(model)}, tmp_path, monkeypatch)
    assert code == 0 and out == {"config": {"model_type": "llama", "hidden_size": 64}}

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


def _whoami(role: str) -> bytes:
    """What the Hub's /api/whoami-v2 answers for a user access token of `role`."""
    token = {"displayName": "ci", "role": role}
    return json.dumps({"type": "user", "name": "me", "auth": {"accessToken": token}}).encode()


PUSH_JOB = {
    "model": {"path": "/models/base"},
    "dataset": {"train": {"path": "/data/train.jsonl"}},
    "output": {"hf": {"repo": "org/tuned", "tokenSecretRef": {"name": "hub-write"}}},
}


@pytest.mark.parametrize(
    ("answer", "role", "expected", "says"),
    [
        (200, "write", None, ""),
        (200, "read", BadInput, "Secret 'hub-write' .* is read-only; pushing to org/tuned needs"),
        (401, "", BadInput, "spec.output.hf: checking the token in Secret 'hub-write'"),
        (503, "", Retryable, "cannot reach the Hub"),
    ],
)
def test_the_push_token_is_checked_before_training(
    hub: http.server.ThreadingHTTPServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    answer: int,
    role: str,
    expected: type[Exception] | None,
    says: str,
) -> None:
    """Before, a read-only or refused token showed only when pushing, after training."""
    from kubetune.api.spec import FineTuneJobSpec
    from kubetune_trainer import outputs

    hub.answer, hub.body = answer, _whoami(role)  # type: ignore[attr-defined]
    monkeypatch.setenv(c.ENV_HF_PUSH_TOKEN, "hf_x")
    spec = FineTuneJobSpec.model_validate(PUSH_JOB)
    if expected is None:
        outputs.check_destinations(spec, tmp_path / "out")
        assert (tmp_path / "out").is_dir() and not list((tmp_path / "out").iterdir())
        return
    with pytest.raises(expected, match=says):
        outputs.check_destinations(spec, tmp_path / "out")


def test_no_push_token_is_bad_input_without_asking_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune.api.spec import FineTuneJobSpec
    from kubetune_trainer import outputs

    monkeypatch.delenv(c.ENV_HF_PUSH_TOKEN, raising=False)
    monkeypatch.delenv(c.ENV_HF_TOKEN, raising=False)
    job = {**PUSH_JOB, "output": {"hf": {"repo": "org/tuned"}}}
    with pytest.raises(BadInput, match=r"set spec\.output\.hf\.tokenSecretRef"):
        outputs.check_destinations(FineTuneJobSpec.model_validate(job), tmp_path)


def test_an_unwritable_output_directory_is_bad_input_naming_the_claim(tmp_path: Path) -> None:
    from kubetune.api.spec import FineTuneJobSpec
    from kubetune_trainer import outputs

    (tmp_path / "claim").write_text("a file where the claim's directory should be")
    job = {**PUSH_JOB, "output": {"pvc": {"claimName": "results", "path": "runs/a"}}}
    with pytest.raises(BadInput, match=r"spec.output.pvc \(claim results, path runs/a\): cannot"):
        outputs.check_destinations(FineTuneJobSpec.model_validate(job), tmp_path / "claim" / "a")


MOE_CONFIGS = {
    # Qwen1.5-MoE-A2.7B's shape: routed experts plus an always-on shared expert.
    "qwen2_moe": {
        "model_type": "qwen2_moe",
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632,
        "num_experts": 60,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "vocab_size": 151936,
        "max_position_embeddings": 8192,
        "rope_theta": 1000000.0,
    },
    # DeepSeek-style keys: n_routed_experts and num_experts_per_token.
    "deepseek_style": {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 10944,
        "moe_intermediate_size": 1408,
        "n_routed_experts": 64,
        "num_experts_per_token": 6,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "vocab_size": 102400,
        "tie_word_embeddings": False,
    },
}


@pytest.mark.parametrize("name", sorted(MOE_CONFIGS))
def test_probe_keeps_every_key_the_planner_reads(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe sends only what the planner reads (4 KiB): the in-cluster plan of an MoE
    model must equal `kubetune plan --model-config` of its config.json."""
    from kubetune.planner.architecture import from_config

    config = MOE_CONFIGS[name]
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    code, out = _probe({"path": str(model)}, tmp_path, monkeypatch)
    assert code == 0
    assert "max_position_embeddings" not in out["config"]  # dropped: nobody reads it
    assert from_config(out["config"], name="m") == from_config(config, name="m")


def test_probe_counts_the_training_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"instruction": "say hi " * 10, "output": "hi"} for _ in range(30)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    code, out = _probe(None, tmp_path, monkeypatch, dataset={"train": {"path": str(data)}})
    assert code == 0 and "config" not in out
    # 31 lines, every one a row as the pipeline reads them (it drops the bad one later);
    # tokens: (70 + 2 characters of text per row) / 4
    assert out["dataset"]["rows"] == 31 and out["dataset"]["complete"] is True
    assert out["dataset"]["tokens"] == int((30 * 72 + len("not json")) / 4)
    capped = {"train": {"path": str(data)}, "maxSamples": 10}
    code, out = _probe(None, tmp_path, monkeypatch, dataset=capped)
    assert out["dataset"]["rows"] == 10
    code, out = _probe(
        None, tmp_path, monkeypatch, dataset={"train": {"path": str(tmp_path / "gone.jsonl")}}
    )
    assert code == 0 and "no such file" in out["dataset"]["error"]  # best effort
