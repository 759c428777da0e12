"""Drift and quality scores: one definition for the figures train.py stores with a model, the live
ones the service reports from counts, and the monitoring report's and tools/compare.py's. numpy only
(the image has neither scipy nor scikit-learn).

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
  informative where most flights sit (0.05 to 0.4);
- calibration error over CALIBRATION_BINS equal-count bins: of the flights' own probabilities on
  labelled flights (`labelled_quality`), of the training probabilities live (ten PROBABILITY_BINS
  each, `calibration_groups`); equal counts for the same reason.
"""

from typing import Any

import numpy as np

from models.config import CALIBRATION_BINS

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


def reliability(flights: np.ndarray, probability_sums: np.ndarray, delayed: np.ndarray) -> list[dict[str, float]]:
    """The points of a reliability diagram, from the same per-bin counts as `calibration_error`: mean
    probability, observed delay rate and flights of each bin that has flights."""
    return [
        {"predicted": float(s / n), "observed": float(d / n), "flights": int(n)}
        for n, s, d in zip(flights, probability_sums, delayed, strict=True)
        if n
    ]


def equal_count_bins(
    delayed: np.ndarray, probability: np.ndarray, bins: int = CALIBRATION_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flights, sum of probabilities and delayed flights in `bins` equal-count bins of the flights' own
    probabilities (ties kept in their order)."""
    parts = np.array_split(np.argsort(probability, kind="stable"), bins)
    return (
        np.array([len(rows) for rows in parts], dtype=np.float64),
        np.array([probability[rows].sum() for rows in parts], dtype=np.float64),
        np.array([delayed[rows].sum() for rows in parts], dtype=np.float64),
    )


def calibration_groups(*per_bin: np.ndarray) -> list[np.ndarray]:
    """Per-bin counts over the PROBABILITY_BINS bins of the training probabilities, summed into
    CALIBRATION_BINS groups of neighbours: equal-count bins of the training probabilities, as train.py's
    are of the held-out ones."""
    return [part.reshape(CALIBRATION_BINS, -1).sum(axis=1) for part in per_bin]


def roc_auc(delayed: np.ndarray, probability: np.ndarray, weights: np.ndarray | None = None) -> float | None:
    """ROC AUC of flights counted `weights` times each (default once): `binned_auc` with one bin per
    distinct probability, which is exactly scikit-learn's, ties counted half. None without a delayed
    or an on-time flight."""
    weights = np.ones(len(delayed)) if weights is None else weights
    values, group = np.unique(probability, return_inverse=True)
    late = np.bincount(group, weights * delayed, len(values))
    return binned_auc(late, np.bincount(group, weights * (1 - delayed), len(values)))


def brier(delayed: np.ndarray, probability: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Brier score: the mean squared gap between probability and outcome, flights counted `weights` times each."""
    return float(np.average((probability - delayed) ** 2, weights=weights))


def label_quality(actual: np.ndarray, flagged: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """Precision, recall, F1 and support of one class (`actual`: the flights of it, `flagged`: those
    labelled it), flights counted `weights` times each; a ratio without a denominator is 0, as
    scikit-learn's zero_division=0."""
    weights = np.ones(len(actual)) if weights is None else weights
    hits, said, support = (float(np.sum(weights * mask)) for mask in (actual & flagged, flagged, actual))
    return {
        "precision": hits / said if said else 0.0,
        "recall": hits / support if support else 0.0,
        "f1": 2 * hits / (said + support) if said + support else 0.0,
        "support": support,
    }


def labelled_quality(
    delayed: np.ndarray, probability: np.ndarray, threshold: float, weights: np.ndarray | None = None
) -> dict[str, Any]:
    """A model's figures on flights whose outcome is known, each counted `weights` times (a bootstrap
    resample; default once): delay rate, mean probability, ROC AUC, Brier, the calibration error and
    its reliability points, and precision, recall and F1 of delayed flights at the threshold. None
    where a figure has no meaning: ROC AUC without both outcomes, the calibration error with fewer
    flights than bins.

    The equal-count bins are of the flights written out, a flight counted twice being two rows: bins of
    weights would put a heavy flight in one bin and leave its neighbour's nearly empty."""
    weights = np.ones(len(delayed)) if weights is None else weights
    rows = np.repeat(np.arange(len(delayed)), weights.astype(np.int64))
    bins = equal_count_bins(delayed[rows], probability[rows]) if len(rows) >= CALIBRATION_BINS else None
    delayed_figures = label_quality(delayed == 1, probability >= threshold, weights)
    return {
        "flights": int(weights.sum()),
        "delay_rate": float(np.average(delayed, weights=weights)),
        "mean_probability": float(np.average(probability, weights=weights)),
        "roc_auc": roc_auc(delayed, probability, weights),
        "brier": brier(delayed, probability, weights),
        "calibration_error": None if bins is None else calibration_error(*bins),
        "reliability": [] if bins is None else reliability(*bins),
        **{key: delayed_figures[key] for key in ("precision", "recall", "f1")},
    }


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
    probabilities and the sum of squared errors: delay rate, Brier score, calibration error over
    `calibration_groups` of the bins, and the binned ROC AUC. Nones without outcomes."""
    n = int(flights.sum())
    if n == 0:
        return {"flights": 0, "delay_rate": None, "brier": None, "calibration_error": None, "roc_auc": None}
    return {
        "flights": n,
        "delay_rate": float(delayed.sum()) / n,
        "brier": squared_error / n,
        "calibration_error": calibration_error(*calibration_groups(flights, probability_sums, delayed)),
        "roc_auc": binned_auc(delayed, flights - delayed),
    }
