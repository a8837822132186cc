"""Dedup, contamination, the deterministic split and the PII scanner."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetune_trainer.data import pii
from kubetune_trainer.data.cleaning import (
    NgramIndex,
    exact_duplicates,
    near_duplicates,
    text_hash,
)
from kubetune_trainer.data.split import split_indices

BASE = (
    "the quarterly report shows revenue grew by twelve percent while costs fell in "
    "every region except the north where a new warehouse opened in march"
)


def test_exact_dedup_ignores_case_width_and_whitespace() -> None:
    fullwidth = "".join(chr(0xFF00 + ord(c) - 0x20) for c in "HELLO")
    texts = ["Hello  World", "hello world", f"{fullwidth} world\n", "hello there"]
    assert exact_duplicates([text_hash(t) for t in texts]) == [1, 2]


def test_near_duplicates_by_minhash_threshold() -> None:
    near = BASE.replace("march", "april")
    far = "a completely different sentence about cooking pasta with garlic and olive oil"
    assert near_duplicates([BASE, near, far], threshold=0.8) == [1]
    assert near_duplicates([BASE, near, far], threshold=0.99) == []
    assert near_duplicates([BASE, BASE, near], threshold=0.8, skip=[1]) == [2]


def test_contamination_flags_eval_items_overlapping_train() -> None:
    index = NgramIndex([BASE, "short answer"])
    evals = [
        BASE.upper() + " and more words at the end",
        "short answer",
        "nothing in common with the training data at all, not one bit of it",
    ]
    assert index.contaminated(evals) == [0, 1]


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 500), st.floats(0, 0.45), st.floats(0, 0.45), st.integers(0, 2**32))
def test_split_is_a_partition_with_the_requested_sizes(
    n: int, val: float, test: float, seed: int
) -> None:
    train, v, t = split_indices(n, val, test, seed)
    assert sorted(train + v + t) == list(range(n))
    if n >= 20:
        expected = [max(round(n * f), 1 if f > 0 else 0) for f in (val, test)]
        assert [len(v), len(t)] == expected  # at least one row when a fraction is asked
    assert (train, v, t) == split_indices(n, val, test, seed)


def test_split_defaults_to_80_10_10_and_is_the_same_in_another_process() -> None:
    train, v, t = split_indices(1000, 0.1, 0.1, 42)
    assert (len(train), len(v), len(t)) == (800, 100, 100)
    code = (
        "from kubetune_trainer.data.split import split_indices as s;print(s(1000, 0.1, 0.1, 42)[2])"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PYTHONPATH": ":".join(sys.path)},
    )
    assert other.stdout.strip() == str(t)


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("mail me at jane.doe@example.co.uk today", ["email"]),
        ("call +44 20 7946 0958 or (555) 123-4567", ["phone", "phone"]),
        ("card 4111 1111 1111 1111 expires", ["creditCard"]),
        ("card 4111 1111 1111 1112 is not luhn-valid", []),
        ("IBAN DE89 3704 0044 0532 0130 00 please", ["iban"]),
        ("IBAN DE88 3704 0044 0532 0130 00 has a bad checksum", []),
        ("key sk-abcdefghijklmnopqrstuvwxyz123456 and AKIAABCDEFGHIJKLMNOP", ["apiKey", "apiKey"]),
        ("order 12345, version 1.2.3, year 2024, 3.14159", []),
    ],
)
def test_pii_detection(text: str, kinds: list[str]) -> None:
    assert [k for k, _, _ in pii.find(text)] == kinds


def test_pii_redaction_and_findings() -> None:
    text, kinds = pii.redact("write to a@b.io, card 4111-1111-1111-1111")
    assert text == "write to [EMAIL], card [CREDITCARD]"
    assert kinds == ["email", "creditCard"]
    findings = pii.PiiFindings("warn")
    findings.add("f.jsonl:3", kinds)
    findings.add("f.jsonl:9", ["email"])
    assert findings.to_report()["counts"] == {"email": 2, "creditCard": 1}
    assert findings.rows["email"] == ["f.jsonl:3", "f.jsonl:9"]
    assert pii.luhn_ok("79927398713") and not pii.luhn_ok("79927398710")
    assert pii.iban_ok("GB82 WEST 1234 5698 7654 32")
