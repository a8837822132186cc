"""What a run leaves behind: adapter or model, merged weights, tokenizer and chat
template, model card, and copies to object stores or the Hugging Face Hub."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

from kubetune import contract as c
from kubetune.api.spec import FineTuneJobSpec

log = logging.getLogger(__name__)


def save_tokenizer(tokenizer: Any, out: Path, chat_template: str | None) -> Path:
    """The tokenizer beside the weights, with the chat template the data was rendered in."""
    out.mkdir(parents=True, exist_ok=True)
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(out))
    return out


def merge_adapter(
    base_dir: str, adapter_dir: Path, tokenizer: Any, out: Path, trust_remote_code: bool = False
) -> Path:
    """Fold the adapter into freshly loaded bf16 base weights (never the 4-bit ones:
    merging into quantised weights would round the update away)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.bfloat16, trust_remote_code=trust_remote_code
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def push_fsspec(local: Path, uri: str) -> str:
    """Copy the directory `local` to `uri` (s3://, gs://, memory://, file://) recursively.

    Credentials and endpoint come from the environment (`storage.filesystem`). Object
    stores get no `makedirs`: there is nothing to create, and s3fs's `makedirs` would
    *create a missing bucket*, turning a typo into a stray bucket. A missing bucket or
    refused credentials is bad input; an unreachable store is retryable.
    """
    from . import storage

    uri = storage.normalise(uri)
    fs, root = storage.filesystem(uri)
    root = root.rstrip("/")
    files = [p for p in sorted(local.rglob("*")) if p.is_file()]
    remote = [f"{root}/{p.relative_to(local).as_posix()}" for p in files]
    with storage.errors(f"copying the outputs to {uri}", uri):
        if not storage.is_object_store(fs):
            for parent in sorted({os.path.dirname(r) for r in remote}):
                fs.makedirs(parent, exist_ok=True)
        if files:
            fs.put([str(p) for p in files], remote)  # one batch: concurrent on s3fs/gcsfs
    return uri


WRITE_CHECK = ".kubetune-write-check"
"""The object or file written and removed to prove a destination writable."""
_USERS_TO_FIX = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}
)


def check_destinations(spec: FineTuneJobSpec, root: Path) -> None:
    """Prove every place the run writes to is writable, before anything expensive runs.

    The output directory (checkpoints; on `output.pvc` when set) gets a file written and
    removed, an object store an object, and the Hub a check of the push token. Otherwise a
    wrong bucket or a read-only token would only show after hours of training. A refusal is
    bad input naming the field and the place; a store or Hub that cannot be reached stays
    retryable (`storage.translate`, `hub_failure`).
    """
    from . import storage

    _check_directory(spec, root)
    out = spec.output
    if out is None:
        return
    for kind, store in (("s3", out.s3), ("gcs", out.gcs)):
        if store is None:
            continue
        uri = storage.normalise(store.uri)
        fs, prefix = storage.filesystem(uri)
        probe = f"{prefix.rstrip('/')}/{WRITE_CHECK}"
        with storage.errors(f"spec.output.{kind}: writing a test object to {uri}", uri):
            if not storage.is_object_store(fs):
                fs.makedirs(os.path.dirname(probe), exist_ok=True)
            fs.pipe_file(probe, b"kubetune checks that the outputs can be written\n")
        try:
            with storage.errors(f"removing {WRITE_CHECK} from {uri}", uri):
                fs.rm_file(probe)
        except Exception as err:  # writing is what matters; a policy may deny deleting
            log.warning("could not remove the write check object: %s", err)
    if out.hf is not None:
        _check_hub_token(spec)


def _check_directory(spec: FineTuneJobSpec, root: Path) -> None:
    from .failures import BadInput, Retryable

    pvc = spec.output.pvc if spec.output else None
    where = (
        f"spec.output.pvc (claim {pvc.claim_name}, path {pvc.path or '/'})"
        if pvc
        else "the output directory"
    )
    probe = root / f"{WRITE_CHECK}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"kubetune\n")
        probe.unlink()
    except OSError as err:
        message = (
            f"{where}: cannot write to {root} ({err.strerror or err}); checkpoints and outputs"
            " go there"
        )
        if err.errno in _USERS_TO_FIX:
            raise BadInput(message) from err
        raise Retryable(message) from err


def _check_hub_token(spec: FineTuneJobSpec) -> None:
    """A push token that exists, that the Hub accepts, and that is not read-only."""
    from huggingface_hub import HfApi

    from .failures import BadInput
    from .model_source import hub_failure

    hf = spec.output.hf if spec.output else None
    assert hf is not None
    token = hub_push_token()
    ref = hf.token_secret_ref
    source = (
        f"the token in Secret {ref.name!r} (key {ref.key!r}, spec.output.hf.tokenSecretRef)"
        if ref
        else "the token read with (spec.output.hf.tokenSecretRef is not set)"
    )
    if not token:
        raise BadInput(
            f"spec.output.hf: pushing to the Hub repo {hf.repo} needs a token that can write;"
            " set spec.output.hf.tokenSecretRef"
        )
    try:
        info = HfApi(token=token).whoami()
    except Exception as err:
        raise hub_failure(err, f"spec.output.hf: checking {source} for {hf.repo}") from err
    role = ((info.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise BadInput(
            f"spec.output.hf: {source} is read-only; pushing to {hf.repo} needs a write token"
        )


def hub_push_token() -> str | None:
    """The token for pushing: output.hf.tokenSecretRef's (a write token), else the one
    the model or data were read with."""
    return os.environ.get(c.ENV_HF_PUSH_TOKEN) or os.environ.get(c.ENV_HF_TOKEN) or None


def push_hub(local: Path, repo: str, revision: str, private: bool, token: str | None) -> str:
    """Upload `local` to a Hub model repository (created when missing).

    A refused or missing token, or a repo the token cannot write, is bad input (retrying
    would train nothing new and be refused again); a Hub that cannot be reached is
    retryable, and the retry resumes from the final checkpoint.
    """
    from huggingface_hub import HfApi

    from .model_source import hub_failure

    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(local),
            repo_id=repo,
            revision=revision,
            commit_message="kubetune fine-tune",
        )
    except Exception as err:
        raise hub_failure(err, f"pushing to the Hugging Face Hub repo {repo}") from err
    return f"hf://{repo}"


def model_card(
    spec: FineTuneJobSpec,
    plan: dict[str, Any],
    data_report: dict[str, Any] | None,
    evaluation: dict[str, Any],
    job: str,
) -> str:
    """README.md: what was trained, on what, how, and how it scores against the base."""
    model = spec.model
    store = model.s3 or model.gcs
    base = (
        model.hf.repo
        if model.hf
        else model.path
        if model.path
        else f"pvc:{model.pvc.claim_name}/{model.pvc.path}"
        if model.pvc
        else store.uri
        if store
        else "unknown"
    )
    lines = [
        "---",
        f"base_model: {base}",
        "library_name: " + ("peft" if plan.get("method") != "full" else "transformers"),
        "tags: [kubetune, fine-tuned]",
        "---",
        f"# {job}",
        "",
        f"Fine-tuned from `{base}` with **{plan.get('method')}** by kubetune.",
        "",
        "## Training configuration",
        "",
        "| setting | value |",
        "| --- | --- |",
    ]
    for key in (
        "method",
        "learningRate",
        "microBatchSize",
        "gradientAccumulationSteps",
        "globalBatchSize",
        "maxSeqLength",
        "precision",
        "gradientCheckpointing",
        "zeroStage",
        "nodes",
        "gpusPerNode",
    ):
        if key in plan:
            lines.append(f"| {key} | {plan[key]} |")
    t = spec.training
    lines += [
        f"| epochs | {t.epochs} |",
        f"| lrScheduler | {t.lr_scheduler} |",
        f"| seed | {t.seed} |",
    ]
    if spec.lora and plan.get("method") in ("lora", "qlora"):
        lines.append(
            f"| lora | r={spec.lora.r}, alpha={spec.lora.alpha},"
            f" targets={','.join(spec.lora.target_modules)} |"
        )
    if data_report:
        counts = data_report.get("counts", {})
        lines += [
            "",
            "## Data",
            "",
            f"Format `{data_report.get('format')}`; "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + ".",
            f"Training data sha256 `{data_report.get('sha256', '')[:16]}`.",
        ]
    base_m = evaluation.get("baseline") or {}
    final_m = evaluation.get("final") or {}
    names = [
        n
        for n in ("loss", "perplexity", "exactMatch", "rougeL", "accuracy")
        if n in base_m or n in final_m
    ]
    if names:
        lines += [
            "",
            "## Evaluation",
            "",
            "| metric | base model | fine-tuned |",
            "| --- | --- | --- |",
        ]
        for n in names:
            lines.append(f"| {n} | {_fmt(base_m.get(n))} | {_fmt(final_m.get(n))} |")
    forgetting = evaluation.get("forgetting")
    if forgetting:
        lines += [
            "",
            f"Forgetting check: general-text perplexity "
            f"{forgetting['baselinePerplexity']:.3f} → {forgetting['tunedPerplexity']:.3f}"
            f" ({forgetting['increasePercent']:+.2f} %, limit"
            f" {forgetting['limitPercent']} %): "
            + ("passed" if forgetting["passed"] else "**failed**")
            + ".",
        ]
    lines += ["", "## Use", "", "```python"]
    if plan.get("method") == "full":
        lines += [
            "from transformers import AutoModelForCausalLM",
            'model = AutoModelForCausalLM.from_pretrained("<this directory>")',
        ]
    else:
        lines += [
            "from peft import AutoPeftModelForCausalLM",
            'model = AutoPeftModelForCausalLM.from_pretrained("<this directory>")',
        ]
    lines += ["```", ""]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    """Write `doc` atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str, allow_nan=True))
    tmp.replace(path)
    return path
