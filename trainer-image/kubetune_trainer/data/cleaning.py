"""Duplicate removal and train/eval contamination checks.

Duplicates inflate the weight of some examples and, when they straddle the split, turn
evaluation into a memory test; both checks therefore run before splitting (dedup) and
right after it (contamination). System prompts are left out of the compared text: one
shared system prompt would otherwise make every row look alike.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence

from datasketch import MinHash, MinHashLSH

WORD = re.compile(r"\w+")
NUM_PERM = 128
LSH_MAX_THRESHOLD = 0.9
SHINGLE = 3
"""Word n-gram size for near-duplicate MinHash."""
CONTAMINATION_NGRAM = 8
"""Word n-gram size for the contamination check (short items use their whole text)."""
CONTAMINATION_FRACTION = 0.5
"""An eval item is contaminated when at least this share of its n-grams occur in train."""


def normalise(text: str) -> str:
    """Case-, width- and whitespace-insensitive form of `text`."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_hash(text: str) -> str:
    """Stable (cross-process) hash of the normalised text."""
    return hashlib.blake2b(normalise(text).encode(), digest_size=16).hexdigest()


def exact_duplicates(hashes: Sequence[str]) -> list[int]:
    """Indices of rows whose hash appeared earlier (the first occurrence is kept)."""
    seen: set[str] = set()
    dropped = []
    for i, h in enumerate(hashes):
        if h in seen:
            dropped.append(i)
        seen.add(h)
    return dropped


def _words(text: str) -> list[str]:
    return WORD.findall(normalise(text))


def _grams(words: list[str], n: int) -> list[str]:
    if len(words) <= n:
        return [" ".join(words)]
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def near_duplicates(texts: Iterable[str], threshold: float, skip: Iterable[int] = ()) -> list[int]:
    """Indices of rows whose MinHash-estimated Jaccard similarity (word 3-grams) to an
    earlier kept row reaches `threshold`; rows in `skip` are ignored entirely.

    LSH finds candidates (its banding needs a threshold below ~0.95 at 128 permutations);
    each candidate is then confirmed against the exact threshold on the signatures.
    """
    skipped = set(skip)
    lsh = MinHashLSH(threshold=min(threshold, LSH_MAX_THRESHOLD), num_perm=NUM_PERM)
    kept: dict[int, MinHash] = {}
    dropped = []
    for i, text in enumerate(texts):
        if i in skipped:
            continue
        sig = MinHash(num_perm=NUM_PERM, seed=1)
        sig.update_batch([g.encode() for g in _grams(_words(text), SHINGLE)])
        if any(sig.jaccard(kept[int(k)]) >= threshold for k in lsh.query(sig)):
            dropped.append(i)
        else:
            lsh.insert(str(i), sig, check_duplication=False)
            kept[i] = sig
    return dropped


class NgramIndex:
    """The set of word n-grams of a reference corpus (the training split)."""

    def __init__(self, texts: Iterable[str], n: int = CONTAMINATION_NGRAM) -> None:
        self.n = n
        self.grams: set[int] = set()
        for text in texts:
            self.grams.update(hash(g) for g in _grams(_words(text), n))

    def overlap(self, text: str) -> float:
        """Share of `text`'s n-grams present in the reference corpus."""
        grams = _grams(_words(text), self.n)
        return sum(hash(g) in self.grams for g in grams) / len(grams)

    def contaminated(
        self, texts: Iterable[str], fraction: float = CONTAMINATION_FRACTION
    ) -> list[int]:
        """Indices of `texts` overlapping the reference corpus by at least `fraction`."""
        return [i for i, t in enumerate(texts) if self.overlap(t) >= fraction]
