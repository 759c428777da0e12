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

from dataclasses import dataclass
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
    probabilities. Flights of one probability that straddle two bins are shared between them in
    proportion, as the mean over every order of those flights: split in the rows' order, the figures
    moved with the order of the data file (the trees give many flights the same probability)."""
    values, group, counts = np.unique(probability, return_inverse=True, return_counts=True)
    late = np.bincount(group, weights=delayed, minlength=len(values))
    ends = np.cumsum(counts).astype(np.float64)  # each value's flights take positions [end - count, end)
    sizes = len(probability) // bins + (np.arange(bins) < len(probability) % bins)  # as np.array_split's
    bounds = np.concatenate([[0], np.cumsum(sizes)])  # bin k takes positions [bounds[k], bounds[k + 1])
    overlap = np.minimum(ends, bounds[1:, None]) - np.maximum(ends - counts, bounds[:-1, None])
    share = np.clip(overlap, 0, None) / counts  # bins x values: the share of each value's flights in each bin
    return share @ counts, share @ (values * counts), share @ late


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


@dataclass(frozen=True)
class Margin:
    """How much worse than the baseline the candidate may be on one metric, and why."""

    metric: str  # key of `judged`'s figures
    label: str
    higher_is_better: bool
    margin: float
    reason: str


# The non-inferiority margins. The candidate is refused on a metric when the one-sided 95% bound of
# its difference from the baseline (bootstrap, below) is worse than the margin: a margin is the
# largest loss we accept for a model that is otherwise better (a new airline, newer data).
MARGINS: tuple[Margin, ...] = (
    Margin(
        "roc_auc",
        "ROC AUC",
        True,
        0.01,
        "retraining alone moves it by up to 0.006 (four seeds on the real data: 0.7123 to 0.7179 with every "
        "field, docs/model.md); 0.01 allows that, and refuses the loss of a real input (the optional fields "
        "add 0.04)",
    ),
    Margin(
        "brier",
        "Brier",
        False,
        0.003,
        "a fifth of the model's skill over answering the base rate for every flight (0.1484 - 0.1329 = 0.0155 "
        "on the held-out days, docs/model.md): a larger loss gives back a real share of what the model adds",
    ),
    Margin(
        "calibration_error",
        "calibration error",
        False,
        0.02,
        "the bound tests/test_train.py and tests/test_real_data.py set on held-out days, and about the noise "
        "of the realized calibration error at the alert's 2,000 outcomes; the candidate's own must also stay "
        "under the alert's bound (MAX_CALIBRATION_ERROR)",
    ),
    Margin(
        "f1",
        "F1 (delayed)",
        True,
        0.02,
        "about 5% of the served model's 0.410; the label depends on one cut of the probabilities, chosen anew "
        "at each training from out-of-fold recall, so it moves more than the ranking does",
    ),
)
# Below this many flights scored by both models with their outcome, no verdict: 2,000 is the
# calibration alert's minimum of outcomes, where the calibration error's own noise is about 0.02, the
# size of its margin.
MIN_SHARED_FLIGHTS = 2_000
CONFIDENCE = 0.95  # one-sided
Z = 1.6449  # the standard normal's 95% quantile: the one-sided bound of a normal interval
LIVE_MARGINS = {m.metric: m for m in MARGINS if m.metric in ("brier", "calibration_error")}
VERDICTS = ("worse", "undecided", "non-inferior", "better")


def verdict(shared: int, bounds: dict[str, tuple[float, float]]) -> str:
    """The judgement of a candidate against the model it would replace, on `shared` flights both
    scored, from the one-sided CONFIDENCE bounds (lower, upper) of each judged metric's difference
    (candidate minus baseline, in MARGINS): `worse` when a bound shows it worse by more than its
    margin, `non-inferior` when every bound keeps within its margin, `better` when also better on
    Brier, else (or with too few flights) `undecided`. tools/compare.py and the live comparison of
    GET /v1/monitoring both judge with it."""
    if shared < MIN_SHARED_FLIGHTS:
        return "undecided"
    margins = {m.metric: m for m in MARGINS if m.metric in bounds}

    def beyond(metric: str, lower: float, upper: float) -> tuple[bool, bool]:
        """(shown worse by more than the margin, kept within the margin)."""
        m = margins[metric]
        if m.higher_is_better:
            return upper < -m.margin, lower >= -m.margin
        return lower > m.margin, upper <= m.margin

    judged = [beyond(metric, lower, upper) for metric, (lower, upper) in bounds.items()]
    if any(worse for worse, _within in judged):
        return "worse"
    if not all(within for _worse, within in judged):
        return "undecided"
    return "better" if "brier" in bounds and bounds["brier"][1] < 0 else "non-inferior"


def paired_comparison(
    shared: int,
    squared_errors: tuple[float, float],
    difference_squares: float,
    champion: list[np.ndarray],
    challenger: list[np.ndarray],
) -> dict[str, Any]:
    """Challenger against champion on the `shared` flights both scored whose outcome is known, from
    counts a service (and Prometheus, deploy/k8s/alerts/flight-delay.rules.yml) can sum: each model's
    sum of squared errors (champion's, challenger's), the sum of squares of each flight's Brier
    difference (challenger's squared error minus the champion's), and each model's per-bin flights,
    delayed flights and sums of probabilities (its own PROBABILITY_BINS). Each model's own Brier score
    and calibration error on these flights come with the differences: each model's block of
    GET /v1/monitoring covers all the flights it scored, which are not the same flights.

    The intervals are normal, one-sided at CONFIDENCE: tools/compare.py's bootstrap by day needs each
    flight, a live count keeps sums. The Brier difference is a mean of paired differences, its standard
    error from their squares. The calibration error's variance is the binomial one of each group's
    delayed count, sum(d (1 - d / n)) / N^2; for the difference the two models' variances are added,
    as if independent: on the same flights they are correlated, so the interval is wider than it need
    be and leans to `undecided`, never to a false `worse` or `better`."""
    if shared == 0:
        empty = {"brier": None, "calibration_error": None}
        return {"flights": 0, "champion": empty, "challenger": empty, **empty, "verdict": "undecided"}
    mean = (squared_errors[1] - squared_errors[0]) / shared
    spread = float(np.sqrt(max(difference_squares / shared - mean**2, 0.0) / shared))
    figures: dict[str, dict[str, float]] = {"brier": interval(mean, spread)}
    errors: list[float | None] = []
    variances = []
    for flights, delayed, probability_sums in (champion, challenger):
        groups = calibration_groups(flights, delayed, probability_sums)
        total = float(groups[0].sum())
        errors.append(calibration_error(groups[0], groups[2], groups[1]))
        with np.errstate(divide="ignore", invalid="ignore"):
            binomial = np.where(groups[0] > 0, groups[1] * (1 - groups[1] / groups[0]), 0.0)
        variances.append(float(binomial.sum()) / total**2 if total else 0.0)
    figures["calibration_error"] = interval((errors[1] or 0.0) - (errors[0] or 0.0), float(np.sqrt(sum(variances))))
    bounds = {metric: (figure["lower"], figure["upper"]) for metric, figure in figures.items()}
    return {
        "flights": shared,
        **{
            role: {"brier": squared_error / shared, "calibration_error": error}
            for role, squared_error, error in zip(("champion", "challenger"), squared_errors, errors, strict=True)
        },
        **{metric: {**figure, "margin": LIVE_MARGINS[metric].margin} for metric, figure in figures.items()},
        "verdict": verdict(shared, bounds),
    }


def interval(difference: float, standard_error: float) -> dict[str, float]:
    """A difference with its one-sided CONFIDENCE bounds on either side."""
    return {
        "difference": difference,
        "lower": difference - Z * standard_error,
        "upper": difference + Z * standard_error,
    }
