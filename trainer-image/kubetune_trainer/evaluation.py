"""Scoring a model: loss and perplexity, task metrics by generation, forgetting, overfitting.

The same functions score the base model before training (the baseline) and the tuned
model after, on the same rows with the same settings, so the two are comparable.
"""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .collate import Collator, training_view

GENERATION_BATCH = 16


def loss_and_perplexity(
    model: Any, dataset: Any, pad_token_id: int, batch_size: int = 8
) -> dict[str, float]:
    """Token-weighted mean loss over `dataset` (labels -100 ignored) and exp(loss)."""
    import torch

    if dataset is None or len(dataset) == 0:
        return {}
    collate = Collator(pad_token_id)
    rows = training_view(dataset)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            # Virtual-token methods prepend positions: score the last len(labels) only.
            logits = logits[:, -labels.shape[1] :, :]
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]),
                shift_labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += float(loss)
            tokens += int((shift_labels != -100).sum())
    model.train(was_training)
    if tokens == 0:
        return {}
    mean = total / tokens
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0))}


def normalise_answer(text: str) -> str:
    """Lower-case, trimmed, single-spaced: formatting differences are not errors."""
    return " ".join(text.strip().lower().split())


def _label(text: str) -> str:
    first = normalise_answer(text).split("\n")[0]
    return first.strip(string.punctuation + " ")


def generate(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, synced: bool = False
) -> list[str]:
    """Greedy completions of `prompts` (already rendered with the chat template).

    `synced`: every rank generates in step (ZeRO-3 gathers weights collectively). Always
    passed, since transformers turns it on by itself under ZeRO-3 and a lone rank would
    then wait forever for its peers.
    """
    import torch

    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge
    outputs: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), GENERATION_BATCH):
            chunk = list(prompts[start : start + GENERATION_BATCH])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    synced_gpus=synced,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def task_metrics(
    predictions: Sequence[str], references: Sequence[str], metrics: Sequence[str]
) -> dict[str, float]:
    """exactMatch, rougeL (F1, rouge-score) and accuracy (first line as a label), 0..1."""
    out: dict[str, float] = {}
    n = max(len(references), 1)
    if "exactMatch" in metrics:
        out["exactMatch"] = (
            sum(
                normalise_answer(p) == normalise_answer(r)
                for p, r in zip(predictions, references, strict=True)
            )
            / n
        )
    if "rougeL" in metrics:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        out["rougeL"] = (
            sum(
                scorer.score(r, p)["rougeL"].fmeasure
                for p, r in zip(predictions, references, strict=True)
            )
            / n
        )
    if "accuracy" in metrics:
        out["accuracy"] = (
            sum(_label(p) == _label(r) for p, r in zip(predictions, references, strict=True)) / n
        )
    return out


GENERATION_METRICS = ("exactMatch", "rougeL", "accuracy")


@dataclass
class Scores:
    """One model's figures on validation, test and general text."""

    metrics: dict[str, float]
    samples: list[dict[str, str]]
    general_perplexity: float | None = None


@dataclass(frozen=True)
class Settings:
    """How task metrics are scored (the spec's evaluation block, resolved)."""

    metrics: Sequence[str]
    max_new_tokens: int
    max_samples: int
    sample_generations: int
    synced: bool = False


def generation_scores(
    model: Any, tokenizer: Any, prompts: Sequence[str], refs: Sequence[str], s: Settings
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Task metrics of greedy generations from `prompts` against `refs`, and samples."""
    wanted = [m for m in s.metrics if m in GENERATION_METRICS]
    if not wanted or not prompts:
        return {}, []
    prompts, refs = list(prompts)[: s.max_samples], list(refs)[: s.max_samples]
    preds = generate(model, tokenizer, prompts, s.max_new_tokens, s.synced)
    samples = [
        {"prompt": p[-500:], "reference": r[:500], "prediction": g[:500]}
        for p, r, g in list(zip(prompts, refs, preds, strict=True))[: s.sample_generations]
    ]
    return task_metrics(preds, refs, wanted), samples


def preference_scores(model: Any, tokenizer: Any, split: Any, s: Settings) -> dict[str, float]:
    """preferenceAccuracy (chosen more likely than rejected) and preferenceMargin (mean
    log-likelihood difference) over a preference split's pairs."""
    from .benchmarks import loglikelihoods

    if (
        "preferenceAccuracy" not in s.metrics
        or split is None
        or "chosen_text" not in (split.column_names)
    ):
        return {}
    rows = split.select(range(min(len(split), s.max_samples)))
    if len(rows) == 0:
        return {}
    chat = rows[0]["prompt_messages"] != "[]"
    prompts = list(rows["prompt_text"])
    pairs = [(p, c) for p, c in zip(prompts, rows["chosen_text"], strict=True)]
    pairs += [(p, r) for p, r in zip(prompts, rows["rejected_text"], strict=True)]
    lls = loglikelihoods(model, tokenizer, pairs, s.synced, special=not chat)
    good, bad = lls[: len(prompts)], lls[len(prompts) :]
    n = len(prompts)
    return {
        "preferenceAccuracy": sum(g > b for g, b in zip(good, bad, strict=True)) / n,
        "preferenceMargin": sum(g - b for g, b in zip(good, bad, strict=True)) / n,
    }


def score(model: Any, tokenizer: Any, splits: Any, s: Settings) -> Scores:
    """Validation loss/perplexity plus the test split's task metrics (generation, and
    preference pairs) and the general text's perplexity."""
    pad = tokenizer.pad_token_id
    result: dict[str, float] = {}
    validation = splits.get("validation")
    if validation is not None and "input_ids" in validation.column_names:
        result.update(loss_and_perplexity(model, validation, pad))
    test = splits.get("test")
    samples: list[dict[str, str]] = []
    if test is not None and len(test):
        rows = test.select(range(min(len(test), s.max_samples)))
        found, samples = generation_scores(
            model, tokenizer, rows["prompt_text"], rows["reference"], s
        )
        result.update(found)
        result.update(preference_scores(model, tokenizer, test, s))
    general = None
    if splits.get("forgetting") is not None:
        general = loss_and_perplexity(model, splits["forgetting"], pad).get("perplexity")
    return Scores(result, samples, general)


def forgetting(baseline_ppl: float, tuned_ppl: float, limit_percent: float) -> dict[str, Any]:
    """The forgetting gate: fails (the evaluation, not the job) above the limit."""
    increase = (tuned_ppl - baseline_ppl) / baseline_ppl * 100.0
    return {
        "baselinePerplexity": baseline_ppl,
        "tunedPerplexity": tuned_ppl,
        "increasePercent": increase,
        "limitPercent": limit_percent,
        "passed": increase <= limit_percent,
    }


def overfitting(history: Sequence[dict[str, Any]], window: int) -> dict[str, Any] | None:
    """Train loss falling while validation loss rises for `window` evaluations in a row.

    `history` is the Trainer's log history; the train loss at each evaluation is the
    mean of the training losses logged since the previous one.
    """
    points: list[tuple[float, float, int]] = []
    pending: list[float] = []
    for entry in history:
        if "loss" in entry and "eval_loss" not in entry:
            pending.append(float(entry["loss"]))
        if "eval_loss" in entry and pending:
            points.append(
                (sum(pending) / len(pending), float(entry["eval_loss"]), int(entry.get("step", 0)))
            )
            pending = []
    run = 0
    for (t0, v0, _), (t1, v1, step) in itertools.pairwise(points):
        run = run + 1 if (t1 < t0 and v1 > v0) else 0
        if run >= window:
            return {
                "detected": True,
                "sinceStep": step,
                "evaluations": run,
                "message": f"train loss fell while validation loss rose for {run}"
                f" evaluations (up to step {step}); the best checkpoint is kept",
            }
    return None
