"""Clip scoring and selection: pure arithmetic on per-frame scores, no I/O.

A clip of length L and stride S starting at s uses frames and flows s + j*S, j < L. With n flow
frames, the starts whose whole clip exists are 0 .. n-1-(L-1)*S ("complete"). The candidates a
selection rule ranks are those (the pipeline's convention), or every start 0 .. n-1 including the
tail ones whose sums are cut short (the authors' `generate_mcl_samples.py`).

Scores are rounded to SIGNIFICANT_DIGITS before they are ranked or compared, and ties go to the
earlier start: the last bits of a float computation differ between CPUs and thread counts, and a
selection or a table must not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

SIGNIFICANT_DIGITS = 6  # float64 scores agree to ~15 digits across machines; 6 leaves a wide margin


@dataclass(frozen=True)
class ClipSpec:
    length: int = 8
    stride: int = 4

    @property
    def span(self) -> int:
        """Flow frames from a clip's first to its last, inclusive."""
        return (self.length - 1) * self.stride + 1


@dataclass(frozen=True)
class Threshold:
    """Which candidates to keep: above the video's median score (the authors' rule), above a
    quantile of it, above an absolute score, or the top k."""

    rule: Literal["median", "quantile", "absolute", "top_k"] = "median"
    quantile: float = 0.5
    absolute: float = 0.0
    top_k: int = 10
    min_keep: int = 1  # keep at least this many per video (the best), so no video silently drops out


def round_significant(values: np.ndarray, digits: int = SIGNIFICANT_DIGITS) -> np.ndarray:
    """float64 values rounded to `digits` significant decimal digits, by Python's correctly rounded
    formatting: the same result on every platform (numpy's log10 and power may not be, in the last bit)."""
    values = np.asarray(values, np.float64)
    flat = [float(f"{value:.{digits - 1}e}") for value in values.ravel().tolist()]
    return np.array(flat, np.float64).reshape(values.shape)


def clip_scores(frame_scores: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """score[i] = (1/L) * sum over j < L with i + j*S < n of s[i + j*S], for every start i, rounded
    to SIGNIFICANT_DIGITS.

    Exactly the authors' formula: starts near the end sum fewer terms but still divide by L.
    """
    frame_scores = np.asarray(frame_scores, np.float64)
    n = len(frame_scores)
    total = np.zeros(n)
    for j in range(spec.length):
        offset = j * spec.stride
        if offset >= n:
            break
        total[: n - offset] += frame_scores[offset:]
    return round_significant(total / spec.length)


def complete_starts(num_flows: int, spec: ClipSpec) -> np.ndarray:
    """Starts whose whole clip fits; empty for a video shorter than one clip."""
    return np.arange(max(0, num_flows - spec.span + 1))


def candidate_starts(num_flows: int, spec: ClipSpec, convention: Literal["pipeline", "authors"] = "pipeline") -> np.ndarray:
    """The starts a selection rule ranks: the complete ones (pipeline), or every start (authors).
    The authors' rule counts tail starts too, whose cut-short sums drag the median down; a video
    shorter than one clip has no candidate either way."""
    complete = complete_starts(num_flows, spec)
    if convention == "authors" and len(complete):
        return np.arange(num_flows)
    return complete


def select(scores: np.ndarray, candidates: np.ndarray, threshold: Threshold) -> np.ndarray:
    """Boolean mask over `candidates`; ties in "top_k" and "min_keep" go to the earlier start.

    The cut-off of "median" and "quantile" is taken over the candidates: with the pipeline's
    candidates (complete clips only) "median" keeps about the top half of the usable clips; with
    the authors' (every start) the cut-short tail starts drag the median down, and a short video
    keeps nearly every complete clip."""
    if len(candidates) == 0:
        return np.zeros(0, bool)
    values = scores[candidates]
    if threshold.rule == "median":
        keep = values > np.median(values)
    elif threshold.rule == "quantile":
        keep = values > np.quantile(values, threshold.quantile)
    elif threshold.rule == "absolute":
        keep = values > threshold.absolute
    elif threshold.rule == "top_k":
        keep = np.zeros(len(values), bool)
        keep[best_first(values)[: threshold.top_k]] = True
    else:
        raise ValueError(f"unknown threshold rule {threshold.rule!r}")
    if keep.sum() < threshold.min_keep:
        keep[best_first(values)[: threshold.min_keep]] = True
    return keep


def best_first(values: np.ndarray) -> np.ndarray:
    """Indices by descending value, earlier index first among equals (a stable order)."""
    return np.lexsort((np.arange(len(values)), -np.asarray(values)))


def rank_and_quantile(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank (1 = best) and quantile (share of candidates scoring strictly lower) of each value."""
    order = best_first(values)
    rank = np.empty(len(values), np.int64)
    rank[order] = np.arange(1, len(values) + 1)
    sorted_values = np.sort(values)
    below = np.searchsorted(sorted_values, values, side="left")
    return rank, below / max(1, len(values))
