"""Tokenizer fertility on the training text: how many of the domain's frequent words the
base model's tokenizer cuts into many pieces.

A word split into 4+ subword tokens is one the base model has rarely seen whole; when
more than ~10 % of a domain's frequent words split like that, fine-tuning must also teach
the vocabulary, and continued pre-training on domain text (or extending the tokenizer)
usually pays off first. Words are tokenised in context (the whole text, with character
offsets), so a word counts the tokens it gets mid-sentence, leading space included.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

WORD = re.compile(r"[^\W\d_]{3,}")
"""A word: three or more letters (numbers and short function words say nothing of the
domain's vocabulary)."""
FREQUENT = 1000
"""The most frequent words considered."""
MIN_COUNT = 2
"""A word must occur this often to count as frequent."""
SPLIT_TOKENS = 4
"""A word split into at least this many tokens counts as fragmented."""
MAX_SHARE = 0.10
"""Above this share of fragmented frequent words, the advice fires."""
MAX_CHARS = 2_000_000
"""Characters of training text examined (a sample; fertility settles quickly)."""


def fertility(tokenizer: Any, texts: Iterable[str]) -> dict[str, Any]:
    """The share of frequent words split into >= SPLIT_TOKENS tokens, with examples.

    Returns {words, fragmented, share, tokensPerWord, examples, threshold}; `words` is 0
    when the text has no word occurring MIN_COUNT times.
    """
    counts: Counter[str] = Counter()
    pieces: dict[str, list[int]] = defaultdict(list)
    budget = MAX_CHARS
    batch: list[str] = []
    for text in texts:
        if budget <= 0:
            break
        batch.append(text[:budget])
        budget -= len(batch[-1])
        if len(batch) >= 256:
            _count(tokenizer, batch, counts, pieces)
            batch = []
    if batch:
        _count(tokenizer, batch, counts, pieces)
    frequent = [w for w, n in counts.most_common(FREQUENT) if n >= MIN_COUNT]
    per_word = {w: sorted(pieces[w])[len(pieces[w]) // 2] for w in frequent}  # median
    fragmented = sorted(
        (w for w in frequent if per_word[w] >= SPLIT_TOKENS), key=lambda w: -counts[w]
    )
    return {
        "words": len(frequent),
        "fragmented": len(fragmented),
        "share": round(len(fragmented) / len(frequent), 4) if frequent else 0.0,
        "tokensPerWord": (round(sum(per_word.values()) / len(frequent), 3) if frequent else 0.0),
        "splitTokens": SPLIT_TOKENS,
        "threshold": MAX_SHARE,
        "examples": [{"word": w, "tokens": per_word[w]} for w in fragmented[:10]],
    }


def _count(
    tokenizer: Any, texts: list[str], counts: Counter[str], pieces: dict[str, list[int]]
) -> None:
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    for text, offsets in zip(texts, enc["offset_mapping"], strict=True):
        ends = [e for _, e in offsets]
        starts = [s for s, _ in offsets]
        first = 0
        for match in WORD.finditer(text):
            a, b = match.span()
            while first < len(ends) and ends[first] <= a:
                first += 1
            last = first
            while last < len(starts) and starts[last] < b:
                last += 1
            word = match.group().lower()
            counts[word] += 1
            if len(pieces[word]) < 9:  # a few occurrences settle the median
                pieces[word].append(max(last - first, 1))


def advice(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The fertility rule of thumb as report advice (empty when it does not fire)."""
    if not report.get("words") or report["share"] <= MAX_SHARE:
        return []
    examples = ", ".join(f"{e['word']} ({e['tokens']})" for e in report["examples"][:5])
    return [
        {
            "level": "warning",
            "code": "tokenizerFertility",
            "message": (
                f"{report['share']:.0%} of the {report['words']} most frequent words in the"
                f" training text split into {SPLIT_TOKENS}+ tokens (more than"
                f" {MAX_SHARE:.0%}; e.g. {examples}): the base model has rarely seen this"
                " vocabulary; consider continued pre-training on domain text or extending"
                " the tokenizer before fine-tuning"
            ),
            "value": report["share"],
            "threshold": MAX_SHARE,
        }
    ]
