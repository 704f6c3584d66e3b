"""Paired significance tests for comparing two trained models on the same test items.

Pure functions of numbers (numpy and scipy only), shared by the study runner
(``engine.studies.compare_cells``) and the tests:

- ``paired_bootstrap``: the corpus-level difference of a ratio metric (WER = errors / words,
  accuracy = correct / items) between a method and a reference scored on the same items, with
  a 95 % percentile interval from resampling the items (paired: an item's two scores move
  together), a p-value from the same resamples, the bootstrap standard error and the smallest
  difference the test set can detect. numpy with a seeded ``Generator`` rather than
  ``scipy.stats.bootstrap(paired=True)``: the same resampling, checked against it in the
  tests, but scipy took 5-8 s per comparison on 2,000 items where this takes under one, and a
  study page compares every method each time it is drawn.
- ``paired_seed_test``: the paired t-test over seeds (the same seed gives both runs the same
  data order and initialisation), for when no per-item scores are at hand.
- ``holm``: Holm's step-down correction of a family of p-values.

    result = paired_bootstrap(method_errors, reference_errors, words)
    result["difference"], result["ci95"], result["p"], result["detectable"]
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

ALPHA = 0.05  # a difference counts when its (Holm-adjusted) p < ALPHA
POWER = 0.80  # the power the "detectable difference" line is worked out for
RESAMPLES = 9999  # bootstrap resamples: p-values down to 1e-4, intervals stable to ~1e-3
BOOTSTRAP_SEED = 20261201  # fixed: the same study gives the same interval every time it is read
BATCH = 1000  # resamples drawn at once: (BATCH, items) indices, 16 MB for 2,000 items


def pooled_difference(method_scores, reference_scores, weights) -> float:
    """(Σ method − Σ reference) / Σ weights: with errors and reference words the corpus WER
    difference (not the mean of per-item WERs, which weighs a two-word clip like a long one);
    with correct counts and item counts the accuracy difference."""
    total = float(np.sum(weights))
    if total <= 0:
        raise ValueError("the weights (reference words or items) sum to zero")
    return (float(np.sum(method_scores)) - float(np.sum(reference_scores))) / total


def resampled_differences(differences: np.ndarray, weights: np.ndarray, resamples: int,
                          seed: int) -> np.ndarray:
    """``pooled_difference`` of ``resamples`` bootstrap resamples of the items: each draws
    len(items) items with replacement (an item's difference and weight together), from a
    ``Generator`` seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    count, out = len(differences), np.empty(resamples)
    for start in range(0, resamples, BATCH):
        picks = rng.integers(0, count, size=(min(BATCH, resamples - start), count))
        out[start:start + len(picks)] = differences[picks].sum(axis=1) / weights[picks].sum(axis=1)
    return out


def detectable_difference(standard_error: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference a two-sided test at ``alpha`` finds with probability
    ``power``, for an estimate with this standard error (normal approximation):
    (z₁₋α/₂ + z_power) × SE, 2.80 × SE at α = 0.05 and 80 % power."""
    from scipy.stats import norm

    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * standard_error)


def bootstrap_p_value(distribution: np.ndarray) -> float:
    """Two-sided p of "no difference" from bootstrap resamples of the difference: twice the
    smaller share of resamples on either side of 0 (the smallest α whose percentile interval
    leaves 0 out, so p < 0.05 exactly when the 95 % interval excludes 0), each share counted
    with the observed sample ((k + 1) / (B + 1)), so it is never 0."""
    resamples = len(distribution)
    below = (np.count_nonzero(distribution <= 0) + 1) / (resamples + 1)
    above = (np.count_nonzero(distribution >= 0) + 1) / (resamples + 1)
    return float(min(1.0, 2 * min(below, above)))


def paired_bootstrap(method_scores, reference_scores, weights, *, resamples: int = RESAMPLES,
                     seed: int = BOOTSTRAP_SEED, confidence: float = 0.95) -> dict:
    """Paired per-item bootstrap of ``pooled_difference``. Each argument holds one number per
    test item, in the same item order: the method's score (errors, or correct answers), the
    reference's, and the item's weight (reference words, or 1 per item), each summed over the
    seeds being pooled. Items are resampled with replacement, an item's numbers together; the
    interval is the percentile interval; seeded, so reproducible (and remembered: a page draws
    the same comparison many times).

    Returns ``difference``, ``ci95`` ([low, high]), ``p`` (``bootstrap_p_value``),
    ``standard_error`` (of the resampled differences), ``detectable``
    (``detectable_difference`` of it), ``items`` and ``resamples``."""
    columns = tuple(tuple(float(v) for v in values) for values in (method_scores, reference_scores, weights))
    if len({len(values) for values in columns}) != 1 or not columns[0]:
        raise ValueError("method, reference and weights need one value per item, for one item or more")
    found = _paired_bootstrap(*columns, resamples, seed, confidence)
    return {**found, "ci95": list(found["ci95"])}


@functools.lru_cache(maxsize=512)
def _paired_bootstrap(method_scores: tuple, reference_scores: tuple, weights: tuple, resamples: int,
                      seed: int, confidence: float) -> dict:
    method, reference, weight = (np.asarray(values) for values in (method_scores, reference_scores, weights))
    difference = pooled_difference(method, reference, weight)
    distribution = resampled_differences(method - reference, weight, resamples, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = (float(v) for v in np.percentile(distribution, [tail, 100 - tail]))
    standard_error = float(np.std(distribution, ddof=1))
    return {"difference": difference, "ci95": (low, high), "p": bootstrap_p_value(distribution),
            "standard_error": standard_error, "detectable": detectable_difference(standard_error),
            "items": len(method), "resamples": resamples}


def paired_seed_test(method_values: list[float], reference_values: list[float]) -> dict | None:
    """The paired t-test (``scipy.stats.ttest_rel``) of per-seed results, ``method_values[i]``
    and ``reference_values[i]`` from the same seed: ``difference`` (mean of the per-seed
    differences), ``ci95`` (its t interval) and ``p``. None below two pairs. Every pair
    differing by the same amount (no spread to test against): p = 0 when it is not 0, 1 when
    it is, the interval that one value."""
    from scipy.stats import ttest_rel

    if len(method_values) != len(reference_values):
        raise ValueError("one method value per reference value (paired by seed)")
    if len(method_values) < 2:
        return None
    differences = np.asarray(method_values, dtype=float) - np.asarray(reference_values, dtype=float)
    mean = float(differences.mean())
    if np.allclose(differences, differences[0]):
        return {"difference": mean, "ci95": [mean, mean], "p": 1.0 if mean == 0 else 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = ttest_rel(method_values, reference_values)
        low, high = result.confidence_interval(0.95)
    return {"difference": mean, "ci95": [float(low), float(high)], "p": float(result.pvalue)}


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the order given (None stays None and does not
    count as a test). Sorted ascending, the k-th smallest of m is multiplied by (m − k + 1),
    capped at 1 and made non-decreasing. Written out because scipy has no Holm correction and
    statsmodels (``multipletests(method="holm")``) is not a dependency for ten lines."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[index] = running
    return adjusted
