"""Finding personal data and secrets in training text, so they are not memorised.

Patterns are deliberately conservative and, where the data has a checksum, verified:
card numbers must pass Luhn and IBANs mod-97, which removes most false hits on order
numbers and IDs. Phone numbers need a leading + or separators in a phone-like layout.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\b\d{3}[.-]\d{3}[.-]\d{4})\b"
)
API_KEY = re.compile(
    r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"
    r"|AKIA[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|hf_[A-Za-z]{30,})\b"
)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a card number (digits only)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616 mod-97 check of an IBAN (spaces ignored)."""
    s = iban.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


DETECTORS: list[tuple[str, re.Pattern[str], Callable[[str], bool] | None]] = [
    ("apiKey", API_KEY, None),
    ("email", EMAIL, None),
    ("iban", IBAN, iban_ok),
    ("creditCard", CARD, _card),
    ("phone", PHONE, None),
]
"""Checked in this order; a span claimed by one kind is not counted again by a later one."""


def find(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of each PII hit in `text`, non-overlapping, in text order."""
    hits: list[tuple[str, int, int]] = []
    for kind, pattern, check in DETECTORS:
        for m in pattern.finditer(text):
            if check is not None and not check(m.group()):
                continue
            if any(m.start() < e and s < m.end() for _, s, e in hits):
                continue
            hits.append((kind, m.start(), m.end()))
    return sorted(hits, key=lambda h: h[1])


def redact(text: str) -> tuple[str, list[str]]:
    """`text` with each hit replaced by `[KIND]`, and the kinds found."""
    hits = find(text)
    out, last = [], 0
    for kind, start, end in hits:
        out += [text[last:start], f"[{kind.upper()}]"]
        last = end
    out.append(text[last:])
    return "".join(out), [k for k, _, _ in hits]


@dataclass
class PiiFindings:
    """Counts per kind and where they were (file:line), for the report."""

    mode: str
    counts: dict[str, int] = field(default_factory=dict)
    rows: dict[str, list[str]] = field(default_factory=dict)
    rows_with_pii: int = 0
    max_rows_listed: int = 100

    def add(self, where: str, kinds: list[str]) -> None:
        if not kinds:
            return
        self.rows_with_pii += 1
        for kind in kinds:
            self.counts[kind] = self.counts.get(kind, 0) + 1
        for kind in sorted(set(kinds)):
            listed = self.rows.setdefault(kind, [])
            if len(listed) < self.max_rows_listed:
                listed.append(where)

    def to_report(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "rowsWithPii": self.rows_with_pii,
            "counts": self.counts,
            "rows": self.rows,
            "redacted": self.mode == "redact" and self.rows_with_pii > 0,
        }
