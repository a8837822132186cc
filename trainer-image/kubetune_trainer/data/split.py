"""Deterministic train/validation/test split.

The split is a seeded permutation of row positions (numpy's PCG64), so it depends only
on the seed and the row order — which the loader fixes (files sorted, read in order) —
and is the same in every run and every process, whatever PYTHONHASHSEED is.
"""

from __future__ import annotations

import numpy as np


def split_indices(
    n: int, validation: float, test: float, seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Sorted (train, validation, test) row indices with the given eval fractions.

    Each eval split gets round(n * fraction) rows, at least one when its fraction is
    positive and there are rows to spare, so tiny datasets still evaluate.
    """
    sizes: list[int] = []
    for fraction in (test, validation):
        k = round(n * fraction)
        if fraction > 0 and k == 0 and n - sum(sizes) > 2:
            k = 1
        sizes.append(k)
    n_test, n_val = sizes
    if n_test + n_val >= n:
        n_test, n_val = 0, 0
    perm = np.random.default_rng(seed).permutation(n)
    test_idx = sorted(int(i) for i in perm[:n_test])
    val_idx = sorted(int(i) for i in perm[n_test : n_test + n_val])
    train_idx = sorted(int(i) for i in perm[n_test + n_val :])
    return train_idx, val_idx, test_idx


def sample(n: int, k: int, seed: int) -> list[int]:
    """k of n row positions, seeded (for maxSamples and replay draws)."""
    return sorted(int(i) for i in np.random.default_rng(seed).permutation(n)[:k])
