"""The data pipeline: a FineTuneJob's dataset in, tokenised splits and a report out.

Stages, in order (each one's counts go to the report):
load -> normalise (drop malformed, fail above maxBadFraction) -> PII -> exact dedup ->
near dedup -> split -> contamination (eval rows overlapping train are removed) ->
maxSamples -> few-shot draw -> replay mixing -> tokenise and mask -> fit to maxSeqLength
-> pack -> decision rules (size, empty evaluation splits, tokenizer fertility) -> save.
Preference pairs (prompt/chosen/rejected) skip masking and packing: TRL's preference
trainers tokenise them; the pipeline checks their lengths and renders the test prompts.
Dedup runs before the split so a duplicate can never sit on both sides of it.
Rows live in memory-mapped Arrow files throughout; only per-row scalars (hashes, lengths)
are held in memory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, Features, List, Value, concatenate_datasets

from kubetune.api.common import DataSource
from kubetune.api.spec import FineTuneJobSpec

from . import cleaning, fertility, fewshot, pii, report, sources, split
from .errors import BadInputError, RowProblem
from .formats import (
    DETECT_SAMPLE,
    KIND_OF_FORMAT,
    Fields,
    RowError,
    check_readable,
    detect_format,
    example_text,
    is_chat_preference,
    normalise,
)
from .masking import IGNORE_INDEX, encode, fit_length, preference_parts, prompt_and_reference
from .packing import column, pack
from .templates import TemplateInfo, resolve_template, write_template

log = logging.getLogger("kubetune_trainer.data")
MAX_LISTED = 100
"""Malformed/contaminated rows listed individually in the report."""


TOKENISED = Features(
    {
        "input_ids": List(Value("int32")),
        "labels": List(Value("int32")),
        "status": Value("string"),
        "file": Value("string"),
        "line": Value("int64"),
        "prompt_messages": Value("string"),
        "prompt_text": Value("string"),
        "reference": Value("string"),
        "cut": Value("int64"),
        "length": Value("int64"),
    }
)
"""Columns of a tokenised split before the bookkeeping columns are dropped."""

PROMPT_COLUMNS = ["prompt_messages", "prompt_text", "reference"]
"""What evaluation generates from: the prompt (messages JSON and rendered) and the answer."""

PREFERENCE = Features(
    {
        "prompt": Value("string"),
        "chosen": Value("string"),
        "rejected": Value("string"),
        "prompt_messages": Value("string"),
        "prompt_text": Value("string"),
        "reference": Value("string"),
        "chosen_text": Value("string"),
        "rejected_text": Value("string"),
        "status": Value("string"),
        "file": Value("string"),
        "line": Value("int64"),
        "length": Value("int64"),
        "trainable": Value("int64"),
    }
)
"""Columns of a preference split: the pair as JSON (TRL's layout: strings, or message
lists), the rendered prompt and continuations, and the bookkeeping columns."""


@dataclass
class Prepared:
    """The processed splits and the report describing them."""

    splits: DatasetDict
    report: dict[str, Any]
    template: TemplateInfo
    shots: list[dict[str, Any]] = field(default_factory=list)
    """The few-shot baseline's shots (fewshot.json)."""


@dataclass
class _State:
    """Counters and findings accumulated across stages."""

    problems: list[RowProblem] = field(default_factory=list)
    raw: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    contaminated_rows: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    """Rows of each evaluation split after each stage, to name the one that emptied it."""
    shots: list[dict[str, Any]] = field(default_factory=list)


def _fp(*parts: Any) -> str:
    """A datasets fingerprint for a stage: its input's fingerprint plus its settings."""
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]


class Pipeline:
    """One preparation run; `run()` returns the splits and report (see the module doc)."""

    def __init__(
        self, spec: FineTuneJobSpec, tokenizer: Any, cache_dir: str, num_proc: int | None = None
    ) -> None:
        self.spec = spec
        self.data = spec.dataset
        self.tokenizer = tokenizer
        self.cache_dir = cache_dir
        self.num_proc = num_proc if num_proc and num_proc > 1 else None
        self.fields = Fields.from_mapping(self.data.field_mapping)
        self.max_len = spec.training.max_seq_length
        self.state = _State()
        self.template = resolve_template(tokenizer)
        self.findings = pii.PiiFindings(self.data.pii)

    # ----------------------------------------------------------------- loading
    def load(self, source: DataSource, role: str, count: bool = True) -> tuple[Dataset, str]:
        """Raw rows of one source, normalised; malformed rows recorded and removed."""
        raw = sources.load_raw(source, self.cache_dir)
        sample = raw.select(range(min(len(raw), DETECT_SAMPLE)))
        check_readable(sample)
        fmt: str = self.data.format
        if fmt == "auto":
            fmt = detect_format([r for r in column(sample, "raw") if r], self.fields)
        fields, system = self.fields, self.data.system_prompt
        kind = KIND_OF_FORMAT[fmt]

        def norm(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            examples, errors = [], []
            for text, error in zip(batch["raw"], batch["error"], strict=True):
                if error:
                    examples.append("")
                    errors.append(error)
                    continue
                try:
                    examples.append(
                        json.dumps(normalise(text, fmt, fields, system), ensure_ascii=False)
                    )
                    errors.append("")
                except RowError as err:
                    examples.append("")
                    errors.append(str(err))
            return {"example": examples, "error": errors, "kind": [kind] * len(errors)}

        ds = raw.map(
            norm,
            batched=True,
            remove_columns=["raw"],
            num_proc=self.num_proc,
            new_fingerprint=_fp(raw._fingerprint, "norm", fmt, fields, system),
            desc=f"normalising {role}",
        )
        errors = column(ds, "error")
        bad = [i for i, e in enumerate(errors) if e]
        if bad:
            meta = ds.select(bad).select_columns(["file", "line", "error"])
            self.state.problems += [RowProblem(r["file"], r["line"], r["error"]) for r in meta]
        if count:
            self.state.raw += len(ds)
        self.check_bad_fraction()
        good = ds.select([i for i, e in enumerate(errors) if not e]) if bad else ds
        return good.remove_columns(["error"]), fmt

    def check_bad_fraction(self) -> None:
        bad, total = len(self.state.problems), max(self.state.raw, 1)
        if bad and bad / total > self.data.max_bad_fraction:
            raise BadInputError(
                f"{bad} of {self.state.raw} rows ({bad / total:.1%}) are malformed, more than "
                f"spec.dataset.maxBadFraction={self.data.max_bad_fraction}; fix them or raise "
                "the limit",
                problems=self.state.problems,
            )

    # ----------------------------------------------------------------- cleaning
    def scan_pii(self, ds: Dataset) -> Dataset:
        """Find PII (and redact it in `redact` mode); adds `clean_text` for the later stages."""
        mode = self.data.pii

        def scan(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            out_examples, texts, found = [], [], []
            for kind, text in zip(batch["kind"], batch["example"], strict=True):
                example = json.loads(text)
                kinds: list[str] = []
                if mode != "off":
                    for value, setter in _strings(example):
                        if mode == "redact":
                            value, hits = pii.redact(value)
                            setter(value)
                        else:
                            hits = [k for k, _, _ in pii.find(value)]
                        kinds += hits
                out_examples.append(
                    json.dumps(example, ensure_ascii=False) if mode == "redact" else text
                )
                texts.append(example_text(kind, example))
                found.append(kinds)
            return {"example": out_examples, "clean_text": texts, "pii": found}

        ds = ds.map(
            scan,
            batched=True,
            num_proc=self.num_proc,
            new_fingerprint=_fp(ds._fingerprint, "pii", mode),
            desc="scanning for PII",
        )
        hits = column(ds, "pii")
        rows = [i for i, h in enumerate(hits) if h]
        if rows:
            for r, i in zip(ds.select(rows).select_columns(["file", "line"]), rows, strict=True):
                self.findings.add(f"{r['file']}:{r['line']}", hits[i])
        if mode == "fail" and rows:
            where = ", ".join(
                f"{k}: {', '.join(v[:5])}" for k, v in sorted(self.findings.rows.items())
            )
            raise BadInputError(
                f"{len(rows)} rows contain personal data or secrets ({where}); "
                "spec.dataset.pii is fail — remove them, or use redact"
            )
        return ds.remove_columns(["pii"])

    def dedup(self, ds: Dataset) -> Dataset:
        spec = self.data.dedup
        texts = column(ds, "clean_text")
        drop: list[int] = []
        if spec.exact:
            exact = cleaning.exact_duplicates([cleaning.text_hash(t) for t in texts])
            self.state.counts["exactDuplicates"] += len(exact)
            drop += exact
        if spec.near_duplicate:
            near = cleaning.near_duplicates(texts, spec.threshold, skip=drop)
            self.state.counts["nearDuplicates"] += len(near)
            drop += near
        if not drop:
            return ds
        dropped = set(drop)
        return ds.select([i for i in range(len(ds)) if i not in dropped])

    def decontaminate(self, index: cleaning.NgramIndex, ds: Dataset, role: str) -> Dataset:
        hits = index.contaminated(column(ds, "clean_text"))
        self.state.counts["contaminated"] += len(hits)
        self.state.counts[f"contaminated:{role}"] += len(hits)
        if not hits:
            return ds
        for r in ds.select(hits).select_columns(["file", "line"]):
            if len(self.state.contaminated_rows) < MAX_LISTED:
                self.state.contaminated_rows.append({"split": role, **r})
        hit = set(hits)
        return ds.select([i for i in range(len(ds)) if i not in hit])

    # ----------------------------------------------------------------- tokenising
    def tokenise(self, ds: Dataset, role: str, keep_prompt: bool = False) -> Dataset:
        """input_ids/labels per example, fitted to maxSeqLength; drops what cannot train."""
        tokenizer, max_len = self.tokenizer, self.max_len

        def enc(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            examples = [json.loads(e) for e in batch["example"]]
            out: dict[str, list[Any]] = {
                k: []
                for k in (
                    "input_ids",
                    "labels",
                    "status",
                    "file",
                    "line",
                    "prompt_messages",
                    "prompt_text",
                    "reference",
                    "cut",
                    "length",
                )
            }
            results = encode(tokenizer, batch["kind"], examples)
            for kind, example, file, line, result in zip(
                batch["kind"], examples, batch["file"], batch["line"], results, strict=True
            ):
                pieces: list[tuple[list[int], list[int]]]
                if isinstance(result, str):
                    pieces, status, cut = [([], [])], "error:" + result, 0
                else:
                    ids, labels = result
                    fitted = fit_length(kind, ids, labels, max_len)
                    kept = sum(len(p[0]) for p in fitted)
                    cut = len(ids) - kept
                    status = ("truncated" if cut else "ok") if fitted else "truncatedAway"
                    pieces = fitted or [([], [])]
                prompt = (
                    prompt_and_reference(tokenizer, kind, example)
                    if keep_prompt and not status.startswith("error")
                    else ("[]", "", "")
                )
                for ids, labels in pieces:
                    out["input_ids"].append(ids)
                    out["labels"].append(labels)
                    out["status"].append(status)
                    out["file"].append(file)
                    out["line"].append(line)
                    out["cut"].append(cut)
                    out["length"].append(len(ids))
                    for key, value in zip(
                        ("prompt_messages", "prompt_text", "reference"), prompt, strict=True
                    ):
                        out[key].append(value)
                    cut = 0  # count lost tokens once per example
            return out

        settings = (max_len, keep_prompt, tokenizer.name_or_path, len(tokenizer))
        ds = self.rows_to(ds, enc, TOKENISED, ("tok", *settings), f"tokenising {role}")
        self.state.counts["tokensCutOff"] += sum(column(ds, "cut"))
        ds = self.keep_usable(ds)
        drop = ["status", "file", "line", "cut"]
        if not keep_prompt:
            drop += ["prompt_messages", "prompt_text", "reference"]
        return ds.remove_columns(drop)

    def rows_to(
        self,
        ds: Dataset,
        enc: Callable[[dict[str, list[Any]]], dict[str, list[Any]]],
        features: Features,
        settings: tuple[Any, ...],
        desc: str,
    ) -> Dataset:
        """`ds` mapped by `enc` into `features` (cached by `settings` and the template),
        or an empty split with those columns."""
        if len(ds) == 0:
            return Dataset.from_dict({k: [] for k in features}, features=features)
        return ds.map(
            enc,
            batched=True,
            remove_columns=ds.column_names,
            num_proc=self.num_proc,
            features=features,
            new_fingerprint=_fp(ds._fingerprint, *settings, self.template.sha256),
            desc=desc,
        )

    def keep_usable(self, ds: Dataset) -> Dataset:
        """Count the `status` column (truncated, truncated away, errors with file:line),
        fail above maxBadFraction, and keep the rows that can train or be scored."""
        status = column(ds, "status")
        counts = Counter(s if not s.startswith("error:") else "error" for s in status)
        self.state.counts["truncated"] += counts["truncated"]
        self.state.counts["truncatedAway"] += counts["truncatedAway"]
        errors = [i for i, s in enumerate(status) if s.startswith("error:")]
        if errors:
            for r in ds.select(errors).select_columns(["file", "line", "status"]):
                self.state.problems.append(
                    RowProblem(r["file"], r["line"], r["status"].removeprefix("error:"))
                )
            self.check_bad_fraction()
        keep = [i for i, s in enumerate(status) if s in ("ok", "truncated")]
        return ds.select(keep) if len(keep) != len(ds) else ds

    # ----------------------------------------------------------------- preference pairs
    def preference_split(self, ds: Dataset, role: str) -> Dataset:
        """Pairs as TRL's preference trainers read them, with the rendered test columns;
        a pair whose prompt alone fills maxSeqLength is dropped (nothing left to compare),
        one whose prompt + answer is longer is counted as truncated (TRL keeps its start).
        """
        tokenizer, max_len = self.tokenizer, self.max_len

        def enc(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            out: dict[str, list[Any]] = {k: [] for k in PREFERENCE}
            for text, file, line in zip(
                batch["example"], batch["file"], batch["line"], strict=True
            ):
                example = json.loads(text)
                try:
                    messages, head, good, bad = preference_parts(tokenizer, example)
                    chat = messages != "[]"
                    n = [
                        len(tokenizer(t, add_special_tokens=not chat)["input_ids"])
                        for t in (head, head + good, head + bad)
                    ]
                    status = (
                        "truncatedAway"
                        if n[0] >= max_len
                        else "truncated"
                        if max(n[1:]) > max_len
                        else "ok"
                    )
                    _, _, reference = prompt_and_reference(tokenizer, "preference", example)
                except RowError as err:
                    messages, head, good, bad, reference = "[]", "", "", "", ""
                    n, status = [0, 0, 0], f"error:{err}"
                for key in ("prompt", "chosen", "rejected"):
                    out[key].append(json.dumps(example[key], ensure_ascii=False))
                values = (messages, head, reference, good, bad, status, file, line)
                for key, value in zip(
                    (
                        "prompt_messages",
                        "prompt_text",
                        "reference",
                        "chosen_text",
                        "rejected_text",
                        "status",
                        "file",
                        "line",
                    ),
                    values,
                    strict=True,
                ):
                    out[key].append(value)
                out["length"].append(min(n[1], max_len))
                out["trainable"].append(max(min(n[1], max_len) - n[0], 0))
            return out

        ds = self.rows_to(ds, enc, PREFERENCE, ("pref", max_len), f"checking {role} pairs")
        return self.keep_usable(ds).remove_columns(["status", "file", "line"])

    def check_objective(self, kind: str, ds: Dataset) -> None:
        """Preference rows need a preference objective and one layout throughout."""
        objective = self.spec.objective
        if (kind == "preference") != (objective in ("dpo", "orpo")):
            raise BadInputError(
                f"spec.objective is {objective} but the training data is {kind} rows:"
                + (
                    " preference objectives need prompt/chosen/rejected rows"
                    if kind != "preference"
                    else " preference rows (chosen/rejected) need objective dpo or orpo"
                )
            )
        if kind != "preference" or len(ds) == 0:
            return
        chat = [is_chat_preference(json.loads(e)) for e in column(ds, "example")]
        if len(set(chat)) > 1:
            odd = chat.index(not chat[0])
            row = ds[odd]
            raise BadInputError(
                "preference rows mix plain-text and message-list answers; use one layout"
                f" (first differing row: {row['file']}:{row['line']})"
            )

    # ----------------------------------------------------------------- few-shot shots
    def pick_shots(self, train: Dataset) -> None:
        """Draw the few-shot baseline's shots from the cleaned training split."""
        few = self.spec.evaluation.few_shot
        if few is None or len(train) == 0:
            return
        picked = fewshot.pick_shots(
            column(train, "kind"), column(train, "example"), few.shots, few.seed
        )
        rows = train.select(picked).select_columns(["kind", "example", "file", "line"])
        self.state.shots = [
            fewshot.shot_record(r["kind"], r["example"], r["file"], r["line"]) for r in rows
        ]

    def track(self, role: str, stage: str, rows: int) -> None:
        self.state.stages.setdefault(role, []).append((stage, rows))

    # ----------------------------------------------------------------- the run
    def run(self) -> Prepared:
        started = time.monotonic()
        data = self.data
        ds, fmt = self.load(data.train, "train")
        if len(ds) == 0:
            raise BadInputError("the training data holds no usable rows")
        kind = KIND_OF_FORMAT[fmt]
        self.check_objective(kind, ds)
        given: dict[str, Dataset] = {}
        for role in ("validation", "test"):
            src = getattr(data, role)
            if src is not None:
                given[role], _ = self.load(src, role)
                self.track(role, "load", len(given[role]))

        ds = self.scan_pii(ds)
        given = {k: self.scan_pii(v) for k, v in given.items()}
        ds = self.dedup(ds)

        val_frac = 0.0 if "validation" in given else data.split.validation
        test_frac = 0.0 if "test" in given else data.split.test
        train_idx, val_idx, test_idx = split.split_indices(
            len(ds), val_frac, test_frac, data.split.seed
        )
        parts = {
            "validation": given.get("validation", ds.select(val_idx)),
            "test": given.get("test", ds.select(test_idx)),
        }
        for role in ("validation", "test"):
            if role not in given:
                self.track(role, "split", len(parts[role]))
        train = ds.select(train_idx)

        index = cleaning.NgramIndex(column(train, "clean_text"))
        parts = {k: self.decontaminate(index, v, k) for k, v in parts.items()}
        for role, part in parts.items():
            self.track(role, "contamination", len(part))
        forgetting = self.forgetting_set(index)

        if data.max_samples is not None and len(train) > data.max_samples:
            train = train.select(split.sample(len(train), data.max_samples, data.split.seed))
        self.pick_shots(train)
        domain = train  # before replay: the fertility check is about the user's text
        train = self.mix_replay(train)

        if kind == "preference":
            train_tok = self.preference_split(train, "train")
            val_tok = self.preference_split(parts["validation"], "validation")
            test_tok = self.preference_split(parts["test"], "test")
        else:
            train_tok = self.tokenise(train, "train")
            val_tok = self.tokenise(parts["validation"], "validation", keep_prompt=True)
            test_tok = self.tokenise(parts["test"], "test", keep_prompt=True)
        self.track("validation", "tokenisation", len(val_tok))
        self.track("test", "tokenisation", len(test_tok))
        tokens = {
            name: report.length_stats(column(d, "length"), _trainable(d))
            for name, d in (("train", train_tok), ("validation", val_tok), ("test", test_tok))
        }

        packing: dict[str, Any] = {"enabled": False}
        if kind == "preference":
            sha = report.content_hash_strings(train_tok, ("prompt", "chosen", "rejected"))
            packing["reason"] = "preference pairs are not packed"
            splits = DatasetDict(
                {
                    "train": train_tok.remove_columns(PROMPT_COLUMNS),
                    "validation": val_tok,
                    "test": test_tok,
                }
            )
        else:
            sha = report.content_hash(train_tok)
            val_prompts = val_tok.select_columns(PROMPT_COLUMNS)
            val_tok = val_tok.remove_columns(PROMPT_COLUMNS)
            if self.spec.training.packing:
                train_out, stats = pack(train_tok, self.max_len)
                val_out, _ = pack(val_tok, self.max_len)
                packing = stats.to_report()
            else:
                train_out, val_out = (_with_attention_mask(d) for d in (train_tok, val_tok))
            splits = DatasetDict(
                {
                    "train": train_out,
                    "validation": val_out,
                    "test": _with_attention_mask(test_tok),
                    "validation_prompts": val_prompts,
                }
            )
        if forgetting is not None:
            splits["forgetting"] = _with_attention_mask(forgetting)
        splits = DatasetDict(
            {
                k: v.remove_columns([c for c in ("length", "trainable") if c in v.column_names])
                for k, v in splits.items()
            }
        )

        rep = self.build_report(fmt, tokens, packing, sha, train_tok, val_tok, test_tok, forgetting)
        rep["fertility"] = fertility.fertility(self.tokenizer, _texts(domain))
        rep["advice"] = [
            *rep["advice"],
            *fertility.advice(rep["fertility"]),
            *report.split_advice(self.state.stages, self.relied_on(), dict(self.state.counts)),
        ]
        self.refuse_without_validation(rep["advice"])
        if self.state.shots:
            rep["fewShot"] = {
                "shots": len(self.state.shots),
                "seed": self.spec.evaluation.few_shot.seed if self.spec.evaluation.few_shot else 0,
                "rows": [f"{s['file']}:{s['line']}" for s in self.state.shots],
            }
        rep["seconds"] = round(time.monotonic() - started, 2)
        return Prepared(splits, rep, self.template, self.state.shots)

    def relied_on(self) -> dict[str, str]:
        """The evaluation splits this job uses, and what for."""
        spec = self.spec
        ev, es = spec.evaluation, spec.training.early_stopping
        out: dict[str, str] = {}
        uses = []
        if ev.strategy != "no":
            uses.append("per-epoch validation")
        if es is not None:
            uses.append("early stopping" if es.enabled else "best-checkpoint selection")
        elif spec.training.load_best_at_end and ev.strategy != "no":
            uses.append("best-checkpoint selection")
        if {"loss", "perplexity"} & set(ev.metrics):
            uses.append("validation loss")
        if uses:
            out["validation"] = ", ".join(uses)
        task = [m for m in ev.metrics if m not in ("loss", "perplexity")]
        if task:
            out["test"] = f"task metrics ({', '.join(task)}) and no gate task-metric check"
        return out

    def refuse_without_validation(self, advice: list[dict[str, Any]]) -> None:
        """Early stopping cannot run without validation rows: fail before training."""
        es = self.spec.training.early_stopping
        if es is None or not es.enabled:
            return
        for item in advice:
            if item["code"] == "evaluationSplitEmpty" and item.get("split") == "validation":
                raise BadInputError(
                    f"spec.training.earlyStopping needs a validation split, but {item['message']}"
                )

    def forgetting_set(self, index: cleaning.NgramIndex) -> Dataset | None:
        forgetting = self.spec.evaluation.forgetting
        if forgetting is None or forgetting.source is None:
            return None
        ds, _ = self.load(forgetting.source, "forgetting", count=False)
        ds = ds.map(
            lambda b: {
                "clean_text": [
                    example_text(k, json.loads(e))
                    for k, e in zip(b["kind"], b["example"], strict=True)
                ]
            },
            batched=True,
            new_fingerprint=_fp(ds._fingerprint, "clean_text"),
        )
        ds = self.decontaminate(index, ds, "forgetting")
        if len(ds) > forgetting.max_samples:
            ds = ds.select(split.sample(len(ds), forgetting.max_samples, self.data.split.seed))
        return self.tokenise(ds, "forgetting")

    def mix_replay(self, train: Dataset) -> Dataset:
        replay = self.data.replay
        if replay is None or len(train) == 0:
            return train
        ds, _ = self.load(replay.source, "replay", count=False)
        want = round(len(train) * replay.ratio / (1 - replay.ratio))
        take = min(want, len(ds))
        self.state.counts["replay"] = take
        self.state.counts["replayWanted"] = want
        picked = ds.select(split.sample(len(ds), take, self.data.split.seed + 1))
        picked = picked.map(
            lambda b: {"clean_text": [""] * len(b["kind"])},
            batched=True,
            new_fingerprint=_fp(picked._fingerprint, "no_clean_text"),
        )
        mixed = concatenate_datasets([train.select_columns(picked.column_names), picked])
        return mixed.shuffle(seed=self.data.split.seed)

    def build_report(
        self,
        fmt: str,
        tokens: dict[str, Any],
        packing: dict[str, Any],
        sha: str,
        train: Dataset,
        val: Dataset,
        test: Dataset,
        forgetting: Dataset | None,
    ) -> dict[str, Any]:
        state, data = self.state, self.data
        c = state.counts
        reasons = Counter(p.reason for p in state.problems)
        counts = {
            "raw": state.raw,
            "malformed": len(state.problems),
            "piiRows": self.findings.rows_with_pii,
            "exactDuplicates": c["exactDuplicates"],
            "nearDuplicates": c["nearDuplicates"],
            "contaminated": c["contaminated"],
            "truncated": c["truncated"],
            "truncatedAway": c["truncatedAway"],
            "replay": c["replay"],
            "train": len(train),
            "validation": len(val),
            "test": len(test),
        }
        if forgetting is not None:
            counts["forgetting"] = len(forgetting)
        return {
            "format": fmt,
            "kind": KIND_OF_FORMAT[fmt],
            "template": self.template.to_report(),
            "counts": counts,
            "malformed": {
                "maxBadFraction": data.max_bad_fraction,
                "byReason": dict(reasons.most_common()),
                "rows": [
                    {"file": p.file, "line": p.line, "reason": p.reason}
                    for p in state.problems[:MAX_LISTED]
                ],
            },
            "tokens": tokens,
            "truncation": {
                "maxSeqLength": self.max_len,
                "truncated": c["truncated"],
                "truncatedAway": c["truncatedAway"],
                "tokensCutOff": c["tokensCutOff"],
            },
            "packing": packing,
            "dedup": {
                "exact": data.dedup.exact,
                "nearDuplicate": data.dedup.near_duplicate,
                "threshold": data.dedup.threshold,
                "exactDuplicates": c["exactDuplicates"],
                "nearDuplicates": c["nearDuplicates"],
            },
            "contamination": {
                "ngram": cleaning.CONTAMINATION_NGRAM,
                "minOverlap": cleaning.CONTAMINATION_FRACTION,
                "validation": c["contaminated:validation"],
                "test": c["contaminated:test"],
                "forgetting": c["contaminated:forgetting"],
                "rows": state.contaminated_rows,
            },
            "pii": self.findings.to_report(),
            "replay": (
                {"ratio": data.replay.ratio, "examples": c["replay"], "wanted": c["replayWanted"]}
                if data.replay
                else None
            ),
            "split": {
                "seed": data.split.seed,
                "validation": "source" if data.validation else data.split.validation,
                "test": "source" if data.test else data.split.test,
            },
            "advice": report.size_advice(len(train), self.spec.method, self.spec.objective),
            "sha256": sha,
        }


def _strings(example: dict[str, Any]) -> list[tuple[str, Callable[[str], None]]]:
    """Every user-visible string of a canonical example, with a setter to replace it."""
    if "messages" in example:
        holders, keys = example["messages"], ["content"]
    elif isinstance(example.get("chosen"), list):  # chat preference pairs
        holders = [m for key in ("prompt", "chosen", "rejected") for m in example[key]]
        keys = ["content"]
    else:
        holders, keys = [example], ["prompt", "completion", "text", "chosen", "rejected"]
    return [
        (holder[key], functools.partial(holder.__setitem__, key))
        for holder in holders
        for key in keys
        if key in holder and isinstance(holder[key], str)
    ]


def _texts(ds: Dataset) -> Iterator[str]:
    """The training split's words (system prompts left out), for the fertility check."""
    for kind, text in zip(column(ds, "kind"), column(ds, "example"), strict=True):
        yield example_text(kind, json.loads(text))


def _trainable(ds: Dataset) -> list[int]:
    if "trainable" in ds.column_names:
        return [int(x) for x in column(ds, "trainable")]
    return [sum(1 for x in labels if x != IGNORE_INDEX) for labels in column(ds, "labels")]


def _with_attention_mask(ds: Dataset) -> Dataset:
    return ds.map(
        lambda b: {"attention_mask": [[1] * n for n in b["length"]]},
        batched=True,
        features=Features({**ds.features, "attention_mask": List(Value("int8"))}),
        new_fingerprint=_fp(ds._fingerprint, "attention_mask"),
    )


def prepare(
    spec: FineTuneJobSpec,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    num_proc: int | None = None,
) -> Prepared:
    """Run the pipeline and write the splits, the template and data-report.json to `out_dir`.

    The trainer calls this too; it raises BadInputError for problems with the input.
    """
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / ".cache"
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(tokenizer_dir), trust_remote_code=spec.model.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise BadInputError(f"cannot load the tokenizer: {err}", file=str(tokenizer_dir)) from err
    if not getattr(tokenizer, "is_fast", False):
        raise BadInputError(
            "the tokenizer has no fast (Rust) version; character offsets are "
            "needed to mask prompts",
            file=str(tokenizer_dir),
        )
    try:
        prepared = Pipeline(spec, tokenizer, str(cache), num_proc).run()
        # datasets cannot load a split saved with zero shards, which is what empty ones get
        empty = {k: 1 for k, v in prepared.splits.items() if len(v) == 0}
        prepared.splits.save_to_disk(str(out), num_shards=empty or None)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    write_template(out, prepared.template)
    (out / fewshot.FEWSHOT_FILE).write_text(json.dumps(prepared.shots, ensure_ascii=False))
    report.write_report(out, prepared.report)
    for line in report.summary(prepared.report).splitlines():
        log.info(line)
    return prepared
