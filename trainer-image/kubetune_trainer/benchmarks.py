"""Multiple-choice benchmarks scored by log-likelihood, the way lm-evaluation-harness does.

A benchmark row has a question, its choices and the right answer (the layout MMLU, ARC
and HellaSwag use). Each choice is scored by the summed log-probability of its tokens
after the question; the highest-scoring choice is the model's answer (`accuracy`), and
with the score divided by the choice's length in characters, `accuracyNorm`.

The encoding follows EleutherAI's harness (`lm_eval.api.model.LM._encode_pair` and
`HFLM._loglikelihood_tokens`): trailing whitespace of the context moves to the
continuation, context + continuation is tokenised whole with the tokenizer's default
special tokens, the continuation is what follows the context's tokens, and the last
token is not fed. `tests/integration/test_benchmarks.py` checks every style against the
harness's own numbers on the same rows.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import Any

from kubetune.api.spec import BenchmarkSpec

from .failures import BadInput

BATCH = 16


@dataclass(frozen=True)
class Item:
    """One scored question: its context, the continuations (one per choice), the answer."""

    context: str
    continuations: list[str]
    choices: list[str]
    gold: int
    where: str


def load(spec: BenchmarkSpec, cache_dir: str, seed: int) -> list[Item]:
    """The benchmark's rows as items (the first maxSamples of a seeded shuffle)."""
    from .data import split
    from .data.errors import BadInputError
    from .data.sources import load_raw

    try:
        raw = load_raw(spec.source, cache_dir)
    except BadInputError as err:
        raise BadInput(f"benchmark {spec.name}: {err}") from err
    picked = split.sample(len(raw), min(spec.max_samples, len(raw)), seed)
    items = []
    for row in raw.select(picked):
        where = f"{row['file']}:{row['line']}"
        if row["error"]:
            raise BadInput(f"benchmark {spec.name}: {where}: {row['error']}")
        items.append(_item(spec, json.loads(row["raw"]), where))
    if not items:
        raise BadInput(
            f"benchmark {spec.name}: no rows in {spec.source.model_dump(exclude_none=True)}"
        )
    return items


def _item(spec: BenchmarkSpec, row: Any, where: str) -> Item:
    f = spec.fields

    def bad(why: str) -> BadInput:
        return BadInput(f"benchmark {spec.name}: {where}: {why}")

    if not isinstance(row, dict):
        raise bad("row is not an object")
    question = row.get(f.question)
    if not isinstance(question, str) or not question.strip():
        raise bad(f"field {f.question!r} is missing or not text")
    raw_choices = row.get(f.choices)
    if isinstance(raw_choices, str):  # CSV cells hold the list as JSON
        try:
            raw_choices = json.loads(raw_choices)
        except json.JSONDecodeError:
            raise bad(f"field {f.choices!r} is not a list") from None
    labels: list[str] = []
    if isinstance(raw_choices, dict):  # ARC: {"text": [...], "label": [...]}
        labels = [str(x) for x in raw_choices.get("label") or []]
        raw_choices = raw_choices.get("text")
    if (
        not isinstance(raw_choices, list)
        or len(raw_choices) < 2
        or not all(isinstance(c, str) for c in raw_choices)
    ):
        raise bad(f"field {f.choices!r} must list at least two choices as text")
    choices = list(raw_choices)
    gold = _gold(row.get(f.answer), choices, labels)
    if gold is None:
        raise bad(f"field {f.answer!r} ({row.get(f.answer)!r}) names none of the choices")
    letters = string.ascii_uppercase[: len(choices)]
    if spec.style == "question":
        context, continuations = f"Question: {question}\nAnswer:", [f" {c}" for c in choices]
    elif spec.style == "completion":
        context, continuations = question, [f" {c}" for c in choices]
    else:  # letters (MMLU)
        listed = "".join(f"\n{letter}. {c}" for letter, c in zip(letters, choices, strict=True))
        context = f"{question.strip()}{listed}\nAnswer:"
        continuations = [f" {letter}" for letter in letters]
        choices = list(letters)
    return Item(context, continuations, choices, gold, where)


def _gold(answer: Any, choices: list[str], labels: list[str]) -> int | None:
    """The answer as a choice index: an index, a digit string, a label, a letter, or the
    choice's text."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int):
        return answer if 0 <= answer < len(choices) else None
    if not isinstance(answer, str):
        return None
    text = answer.strip()
    if text in labels:
        return labels.index(text)
    if text.isdigit() and int(text) < len(choices):
        return int(text)
    if len(text) == 1 and text.upper() in string.ascii_uppercase[: len(choices)]:
        return string.ascii_uppercase.index(text.upper())
    return choices.index(text) if text in choices else None


def encode_pair(
    tokenizer: Any, context: str, continuation: str, special: bool = True
) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as the harness splits them. `special`: add the
    tokenizer's special tokens (False for text a chat template rendered, which has them)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer(context + continuation, add_special_tokens=special)["input_ids"]
    head = tokenizer(context, add_special_tokens=special)["input_ids"]
    return list(head), list(whole[len(head) :])


def loglikelihoods(
    model: Any,
    tokenizer: Any,
    pairs: list[tuple[str, str]],
    synced: bool = False,
    max_length: int | None = None,
    special: bool = True,
) -> list[float]:
    """Summed log-probability of each continuation given its context.

    `synced`: every rank runs the same forward passes (ZeRO-3 gathers weights
    collectively), so callers on every rank must pass the same pairs.
    """
    import torch

    limit = max_length or getattr(model.config, "max_position_embeddings", None) or 2048
    encoded = [encode_pair(tokenizer, c, x, special) for c, x in pairs]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]) - len(encoded[i][1]))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = [0.0] * len(pairs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), BATCH):
                chunk = order[start : start + BATCH]
                inputs = [(encoded[i][0] + encoded[i][1])[-(limit + 1) :][:-1] for i in chunk]
                width = max(len(x) for x in inputs)
                ids = torch.full((len(inputs), width), pad, dtype=torch.long)
                mask = torch.zeros((len(inputs), width), dtype=torch.long)
                for row, tokens in enumerate(inputs):
                    ids[row, : len(tokens)] = torch.tensor(tokens)
                    mask[row, : len(tokens)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                logits = logits[:, -width:, :]  # virtual-token methods prepend positions
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                for row, i in enumerate(chunk):
                    cont = encoded[i][1]
                    end = len(inputs[row])
                    picked = logprobs[row, end - len(cont) : end]
                    target = torch.tensor(cont, device=picked.device).unsqueeze(-1)
                    out[i] = float(picked.gather(-1, target).sum())
    finally:
        model.train(was_training)
    return out


def score(model: Any, tokenizer: Any, items: list[Item], synced: bool = False) -> dict[str, Any]:
    """accuracy and accuracyNorm (0..1) over `items`, with the per-row log-likelihoods."""
    pairs = [(it.context, c) for it in items for c in it.continuations]
    lls = loglikelihoods(model, tokenizer, pairs, synced)
    right = right_norm = 0
    rows = []
    at = 0
    for it in items:
        scores = lls[at : at + len(it.continuations)]
        at += len(it.continuations)
        normed = [s / max(len(c), 1) for s, c in zip(scores, it.choices, strict=True)]
        pick = max(range(len(scores)), key=lambda k: (scores[k], -k))
        pick_norm = max(range(len(normed)), key=lambda k: (normed[k], -k))
        right += pick == it.gold
        right_norm += pick_norm == it.gold
        rows.append(scores)
    n = max(len(items), 1)
    return {
        "accuracy": right / n,
        "accuracyNorm": right_norm / n,
        "rows": len(items),
        "loglikelihoods": rows,
    }


def verdict(
    name: str, metric: str, baseline: float, tuned: float, rows: int, limit: float
) -> dict[str, Any]:
    """One benchmark's forgetting check (status.evaluation.benchmarks[])."""
    drop = (baseline - tuned) * 100.0
    return {
        "name": name,
        "rows": rows,
        "metric": metric,
        "baseline": baseline,
        "tuned": tuned,
        "dropPoints": round(drop, 4),
        "limitPoints": limit,
        "passed": drop <= limit,
    }
