"""Drift and quality scores computed from counts, for the reference train.py stores with a model and
for the live figures the service reports: one definition on both sides. numpy only (the image has
neither scipy nor scikit-learn).

Why these methods (docs/monitoring.md):
- drift: Jensen-Shannon distance (base 2, 0 to 1) per input, as Evidently uses for categorical data
  above 1,000 reference rows, with its threshold 0.1; every monitored input is categorical here
  (codes, hours, days), so one method serves all;
- no verdict below `min_flights()`: with k values and n flights drawn from the training distribution
  itself, the distance is about sqrt((k - 1) / (8 n ln 2)) by chance alone, so 100 flights per value
  keep that noise near 0.04, well under the threshold (1,200 flights of the real data scored 0.12 on
  day_of_month, 32 values, with no drift at all); never fewer than 1,000;
- probabilities counted in PROBABILITY_BINS equal-count bins of the training probabilities: the
  expected ROC AUC and realized calibration come from these bins, and equal counts keep every bin
  informative where most flights sit (0.05 to 0.4).
"""

from typing import Any

import numpy as np

DRIFT_THRESHOLD = 0.1
MIN_FLIGHTS = 1_000
FLIGHTS_PER_VALUE = 100
PROBABILITY_BINS = 100


def min_flights(values: int) -> int:
    """Live flights an input with this many values needs before its drift is judged."""
    return max(MIN_FLIGHTS, FLIGHTS_PER_VALUE * values)


def js_distance(live: np.ndarray, reference: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, from 0 to 1) between two histograms over the same categories."""
    p, q = live / live.sum(), reference / reference.sum()
    m = (p + q) / 2

    def divergence(a: np.ndarray) -> float:
        seen = a > 0
        return float(np.sum(a[seen] * np.log2(a[seen] / m[seen])))

    return float(np.sqrt(max(0.0, (divergence(p) + divergence(q)) / 2)))


def input_drift(live: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """One input's drift as the service reports it, from its live and training flights per value (the
    last slot of each: flights without the input, left out): no score below `min_flights()`."""
    seen = np.asarray(live[:-1], dtype=np.float64)
    needed = min_flights(len(seen))
    score = js_distance(seen, np.asarray(reference[:-1], dtype=np.float64)) if seen.sum() >= needed else None
    return {
        "score": None if score is None else round(score, 4),
        "threshold": DRIFT_THRESHOLD,
        "drifted": None if score is None else score > DRIFT_THRESHOLD,
        "flights": int(seen.sum()),
        "missing": int(live[-1]),
        "min_flights": needed,
    }


def binned_auc(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """ROC AUC of scores known only by their bin (bins in ascending order of score): the chance that a
    positive is in a higher bin than a negative, plus half the chance that both share a bin.
    None without a positive or a negative."""
    total = float(positives.sum()) * float(negatives.sum())
    if total == 0:
        return None
    negatives_below = np.cumsum(negatives) - negatives
    return float(np.sum(positives * (negatives_below + negatives / 2)) / total)


def calibration_error(flights: np.ndarray, probability_sums: np.ndarray, delayed: np.ndarray) -> float | None:
    """Flight-weighted mean gap between mean probability and observed delay rate over bins, from each
    bin's flights, sum of probabilities and delayed flights; None without flights."""
    total = float(flights.sum())
    if total == 0:
        return None
    return float(np.sum(np.abs(probability_sums - delayed)) / total)


def probability_edges(probabilities: np.ndarray, bins: int = PROBABILITY_BINS) -> np.ndarray:
    """The inner edges of `bins` equal-count bins of the given probabilities (bins - 1 values)."""
    return np.quantile(probabilities, np.arange(1, bins) / bins)


def probability_bins(edges: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The bin of each probability among the bins of the inner `edges`."""
    return np.searchsorted(edges, probabilities, side="right")


def expected_quality(
    flights: np.ndarray, probability_sums: np.ndarray, squares: float, flagged: float, flagged_sum: float
) -> dict[str, float | None]:
    """Quality expected from calibrated probabilities alone, before any outcome (NannyML's CBPE): each
    flight is delayed with its probability p. From the per-bin flights and sums of p, the sum of p
    squared, and the flights at or above the threshold with their sum of p."""
    n = float(flights.sum())
    if n == 0:
        return {key: None for key in ("delay_rate", "brier", "roc_auc", "precision", "recall", "f1")}
    positives = float(probability_sums.sum())
    return {
        "delay_rate": positives / n,
        "brier": (positives - squares) / n,  # the mean of p(1 - p)
        "roc_auc": binned_auc(probability_sums, flights - probability_sums),
        "precision": flagged_sum / flagged if flagged else None,
        "recall": flagged_sum / positives if positives else None,
        "f1": 2 * flagged_sum / (flagged + positives) if flagged + positives else None,
    }


def realized_quality(
    flights: np.ndarray, delayed: np.ndarray, probability_sums: np.ndarray, squared_error: float
) -> dict[str, Any]:
    """Quality measured against outcomes, from per-bin flights, delayed flights and sums of
    probabilities and the sum of squared errors: delay rate, Brier score, calibration error over the
    bins grouped ten by ten (ten equal-count bins of the training probabilities, as train.py's), and
    the binned ROC AUC. Nones without outcomes."""
    n = int(flights.sum())
    if n == 0:
        return {"flights": 0, "delay_rate": None, "brier": None, "calibration_error": None, "roc_auc": None}
    deciles = [part.reshape(10, -1).sum(axis=1) for part in (flights, probability_sums, delayed)]
    return {
        "flights": n,
        "delay_rate": float(delayed.sum()) / n,
        "brier": squared_error / n,
        "calibration_error": calibration_error(*deciles),
        "roc_auc": binned_auc(delayed, flights - delayed),
    }
