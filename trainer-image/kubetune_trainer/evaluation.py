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


def score(
    model: Any,
    tokenizer: Any,
    splits: Any,
    metrics: Sequence[str],
    max_new_tokens: int,
    max_test_samples: int,
    sample_generations: int,
    synced: bool = False,
) -> Scores:
    """Validation loss/perplexity plus test-set generation metrics (and general ppl)."""
    pad = tokenizer.pad_token_id
    result: dict[str, float] = {}
    result.update(loss_and_perplexity(model, splits.get("validation"), pad))
    samples: list[dict[str, str]] = []
    wanted = [m for m in metrics if m in GENERATION_METRICS]
    test = splits.get("test")
    if wanted and test is not None and len(test):
        rows = test.select(range(min(len(test), max_test_samples)))
        prompts, refs = list(rows["prompt_text"]), list(rows["reference"])
        preds = generate(model, tokenizer, prompts, max_new_tokens, synced)
        result.update(task_metrics(preds, refs, wanted))
        samples = [
            {"prompt": p[-500:], "reference": r[:500], "prediction": g[:500]}
            for p, r, g in list(zip(prompts, refs, preds, strict=True))[:sample_generations]
        ]
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
