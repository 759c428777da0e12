"""Train the flight-delay classifier, evaluate it on held-out days and save it to the BentoML model store.

    python train.py [--data PATH] [--plot PATH]

Without --data it reads data/dataset_SCL.csv when present, otherwise the embedded synthetic sample.
"""

import argparse
import itertools
import math
import platform
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score
from sklearn.model_selection import GroupKFold

from models.config import (
    CALIBRATION_BINS,
    CV_FOLDS,
    DEFAULT_DATA_PATH,
    MODEL_NAME,
    SEED,
    TARGET_RECALL,
    TEST_SIZE,
)
from models.data import DataError, calendar_days, embedded_sample, file_sha256, held_out_split, load_flights
from models.features import MONITORED, FlightColumns, Vocabulary, category_counts, encode
from models.predictor import MAX_PROBABILITY_GAP, DelayPredictor, expected_spec, probability_gap
from models.quality import brier, label_quality, labelled_quality, probability_bins, probability_edges

# A value (airline or destination) must have this many flights in the data to be learned. 1: every
# value the data holds, so the 2017 data keeps all 23 airlines and 62 cities (4 of them with a single
# flight, which the API accepted before). --min-flights raises it: rarer values' flights are left out
# of training and refused by the service, rather than answered from a handful of examples.
MIN_VALUE_FLIGHTS = 1
VIEWS = ("required_only", "all_fields")  # (a) OPERA, TIPOVUELO, MES; (b) plus Fecha-I and SIGLADES
PACKAGES = ("bentoml", "scikit-learn", "onnx", "onnxruntime", "numpy", "pandas", "pydantic")
RELIABILITY_PLOT = "reliability.png"  # the reliability diagram, kept in the model's directory


def progress(message: str) -> None:
    """One timestamped line on stderr, so long steps show where training is."""
    print(f"[train {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_classifier() -> HistGradientBoostingClassifier:
    """Gradient-boosted trees: they route missing optional fields natively and beat a linear model here."""
    return HistGradientBoostingClassifier(
        max_iter=100,  # fewer, larger trees: same ROC AUC as 200 x 15 leaves, half the serving cost
        learning_rate=0.1,
        max_leaf_nodes=31,
        l2_regularization=1.0,
        # Every training flight fits the trees, in any order of the file's rows: scikit-learn's default
        # ("auto") sets a random tenth of them aside above 10,000 rows to stop early by, chosen by
        # position, so reordering the file changed the threshold and the model (it never stopped early here).
        early_stopping=False,
        # No class weights: balanced weights shifted every log-odds by about +1.4 (a mean probability
        # of 0.47 where 18% of flights are late) for no gain in ROC AUC; unweighted, the trees' own
        # probabilities are calibrated (docs/model.md), and the threshold still sets the label's recall.
        random_state=SEED,
    )


def fewest_days() -> int:
    """The fewest calendar days that leave CV_FOLDS training days once TEST_SIZE of them are held out."""
    return next(days for days in itertools.count(2) if days - math.ceil(TEST_SIZE * days) >= CV_FOLDS)


MIN_DAYS = fewest_days()


def both_views(columns: FlightColumns) -> list[np.ndarray]:
    """Feature matrices of the flights as callers send them: required fields only, and all fields."""
    return [encode(columns.without_optional()), encode(columns)]


def fit(columns: FlightColumns, delayed: np.ndarray) -> HistGradientBoostingClassifier:
    """Fit on every flight twice, with and without its optional fields, so one model serves both."""
    return make_classifier().fit(np.vstack(both_views(columns)), np.concatenate([delayed, delayed]))


def choose_threshold(columns: FlightColumns, delayed: np.ndarray, days: np.ndarray) -> float:
    """The highest threshold that catches TARGET_RECALL of delayed flights out of fold, in both views.

    Out-of-fold predictions, grouped by day, keep the choice on training data and free of the
    optimism of in-sample scores.
    """
    scores = [np.empty(len(delayed)) for _ in VIEWS]
    for fold, (fit_rows, score_rows) in enumerate(GroupKFold(n_splits=CV_FOLDS).split(delayed, groups=days)):
        progress(f"choosing the threshold: fold {fold + 1}/{CV_FOLDS}")
        if len(set(delayed[fit_rows])) < 2:
            raise DataError(
                f"fold {fold + 1} of the training days has only {'delayed' if delayed[fit_rows][0] else 'on-time'} "
                "flights to fit on: give more days, or more delayed and on-time flights"
            )
        model = fit(subset(columns, fit_rows), delayed[fit_rows])
        for score, matrix in zip(scores, both_views(subset(columns, score_rows)), strict=True):
            score[score_rows] = model.predict_proba(matrix)[:, 1]
    # the threshold at which each view's recall is TARGET_RECALL; the lower one meets it in both
    return float(min(np.quantile(score[delayed == 1], 1 - TARGET_RECALL) for score in scores))


def subset(columns: FlightColumns, rows: np.ndarray) -> FlightColumns:
    """The given rows of every column."""
    return FlightColumns(**{name: values[rows] for name, values in vars(columns).items()})


def evaluate(
    predictor: DelayPredictor, columns: FlightColumns, delayed: np.ndarray, base_rate: float
) -> dict[str, Any]:
    """Ranking, calibration and per-class precision, recall and F1 at the served threshold, per view
    (models.quality's figures, as tools/compare.py's, rounded for the metadata).

    base_rate: the delay rate of the training days, the no-skill forecast the Brier score is compared with.
    """
    report: dict[str, Any] = {}
    for view, view_columns in zip(VIEWS, (columns.without_optional(), columns), strict=True):
        probability = predictor.probabilities(view_columns)
        own = labelled_quality(delayed, probability, predictor.threshold)
        flagged = predictor.labels(probability) == 1
        classes = {"on_time": label_quality(delayed == 0, ~flagged), "delayed": label_quality(delayed == 1, flagged)}
        report[view] = {
            "roc_auc": round(own["roc_auc"], 4),
            "pr_auc": round(float(average_precision_score(delayed, probability)), 4),
            **{key: round(own[key], 4) for key in ("mean_probability", "delay_rate", "brier")},
            "base_rate_brier": round(brier(delayed, np.full(len(delayed), base_rate)), 4),
            "calibration_error": round(own["calibration_error"], 4),
            "reliability": [{key: round(value, 4) for key, value in b.items()} for b in own["reliability"]],
            **{
                name: {"precision": round(c["precision"], 4), "recall": round(c["recall"], 4),
                       "f1": round(c["f1"], 4), "support": int(c["support"])}
                for name, c in classes.items()
            },
        }  # fmt: skip
    return report


def format_report(metrics: dict[str, Any], threshold: float) -> str:
    """The evaluation as small plain-text tables: labels at the threshold, then the probabilities' calibration."""
    lines = [f"threshold {threshold:.4f} (out-of-fold recall of delayed flights {TARGET_RECALL} on training days)"]
    lines.append(f"{'view':<14}{'ROC AUC':>8}{'PR AUC':>8}  {'class':<9}{'precision':>10}{'recall':>8}{'F1':>7}")
    for view in VIEWS:
        for name in ("on_time", "delayed"):
            row = metrics[view][name]
            aucs = f"{metrics[view]['roc_auc']:>8.3f}{metrics[view]['pr_auc']:>8.3f}" if name == "on_time" else " " * 16
            lines.append(
                f"{view if name == 'on_time' else '':<14}{aucs}  {name:<9}"
                f"{row['precision']:>10.3f}{row['recall']:>8.3f}{row['f1']:>7.3f}"
            )
    lines.append(f"{'view':<14}{'mean p':>8}{'delayed':>8}{'Brier':>8}{'base-rate Brier':>17}{'calibration error':>19}")
    for view in VIEWS:
        m = metrics[view]
        lines.append(
            f"{view:<14}{m['mean_probability']:>8.3f}{m['delay_rate']:>8.3f}{m['brier']:>8.4f}"
            f"{m['base_rate_brier']:>17.4f}{m['calibration_error']:>19.4f}"
        )
    gaps = ", ".join(f"{view} {metrics[view]['served_probability_gap']:.1e}" for view in VIEWS)
    lines.append(f"served by ONNX Runtime; largest gap to scikit-learn's probabilities: {gaps}")
    return "\n".join(lines)


def plot_reliability(metrics: dict[str, Any], path: Path) -> None:
    """The reliability diagram: predicted probability against observed delay rate per bin, both views."""
    import matplotlib  # training-only (requirements-train.txt); the serving image does not carry it

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 5))
    top = max(max(b["predicted"], b["observed"]) for view in VIEWS for b in metrics[view]["reliability"])
    axes.plot([0, top], [0, top], color="grey", linestyle=":", label="perfect calibration")
    for view, marker in zip(VIEWS, ("o", "s"), strict=True):
        bins = metrics[view]["reliability"]
        axes.plot(
            [b["predicted"] for b in bins],
            [b["observed"] for b in bins],
            marker=marker,
            label=f"{view.replace('_', ' ')} (calibration error {metrics[view]['calibration_error']:.3f})",
        )
    axes.set(
        xlabel="mean predicted probability of delay (bin)",
        ylabel="observed share of delayed flights (bin)",
        title=f"Held-out days, {CALIBRATION_BINS} equal-count bins per view",
    )
    axes.legend(loc="upper left", fontsize="small")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def load_training_data(path: Path | None, sample: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The checked flights and a description of where they came from: `path`, else the default
    dataset if present, else (or with `sample`) the embedded synthetic sample."""
    path = None if sample else path or (DEFAULT_DATA_PATH if DEFAULT_DATA_PATH.is_file() else None)
    if path is None:
        progress(f"no dataset at {DEFAULT_DATA_PATH}: training on the embedded synthetic sample")
        flights, sha256 = embedded_sample()
        return flights, {"source": "embedded synthetic sample", "sha256": sha256, "rows": len(flights)}
    progress(f"reading {path}")
    flights = load_flights(path)
    return flights, {"source": path.name, "sha256": file_sha256(path), "rows": len(flights)}  # the name: no path


def reference(predictor: DelayPredictor, columns: FlightColumns, metrics: dict[str, Any]) -> dict[str, Any]:
    """What live traffic is compared with (serving/monitoring.py): the training flights' monitored
    inputs and probabilities, counted as the service counts them, and the held-out quality."""
    features = encode(columns)
    probabilities = predictor.scores(features)
    edges = probability_edges(probabilities)
    held_out = metrics[VIEWS[-1]]  # all fields given, as the training flights
    counts = category_counts(features, predictor.vocabulary.monitored())
    return {
        "flights": len(probabilities),
        "inputs": {name: input_counts.tolist() for name, input_counts in zip(MONITORED, counts, strict=True)},
        "probability_edges": [round(float(edge), 6) for edge in edges],
        "probability_counts": np.bincount(probability_bins(edges, probabilities), minlength=len(edges) + 1).tolist(),
        "held_out": {key: held_out[key] for key in ("delay_rate", "brier", "roc_auc")},
    }


def train(
    flights: pd.DataFrame, min_flights: int = MIN_VALUE_FLIGHTS
) -> tuple[DelayPredictor, dict[str, Any], dict[str, Any]]:
    """Learn the vocabulary, split by day, choose the threshold, fit, and evaluate on the held-out
    days; the predictor, its held-out metrics and its reference for monitoring.

    The vocabulary is every airline and destination with at least `min_flights` flights in the whole
    data, held-out days included (a value seen only there is still one the model was shown, as an
    unseen code); flights of rarer values are left out, and the service will refuse them."""
    vocabulary = Vocabulary.learn(flights, min_flights)
    if not (vocabulary.airlines and vocabulary.destinations):
        raise DataError(
            f"no airline or no destination has {min_flights} flights (--min-flights): nothing is left to train on"
        )
    known = vocabulary.known(flights)
    if not known.all():
        rare = flights.loc[~known]
        values = sorted(set(rare["OPERA"]) - set(vocabulary.airlines)) + sorted(
            set(rare["SIGLADES"]) - set(vocabulary.destinations)
        )
        progress(f"leaving out {len(rare)} flights of values with fewer than {min_flights} flights: {values}")
        flights = flights.loc[known].reset_index(drop=True)
    progress(f"vocabulary: {len(vocabulary.airlines)} airlines, {len(vocabulary.destinations)} destinations")
    columns, delayed = FlightColumns.from_frame(flights, vocabulary), flights["delayed"].to_numpy()
    days = calendar_days(flights)
    if len(set(days)) < MIN_DAYS:
        raise DataError(
            f"the data spans {len(set(days))} calendar day(s): training needs at least {MIN_DAYS}, since "
            f"{TEST_SIZE:.0%} of the days are held out and the threshold is chosen over {CV_FOLDS} folds of the rest"
        )
    train_rows, test_rows = held_out_split(flights)
    for side, rows in (("training", train_rows), ("held-out", test_rows)):
        late = int(delayed[rows].sum())
        if late in (0, len(rows)):
            raise DataError(
                f"the {side} days' {len(rows)} flights are all {'delayed' if late else 'on time'}: training and "
                "evaluating need both delayed and on-time flights on each side of the split by day"
            )
    progress(f"{len(train_rows)} training and {len(test_rows)} held-out flights, split by calendar day")
    threshold = choose_threshold(subset(columns, train_rows), delayed[train_rows], days[train_rows])
    progress("fitting the final model")
    predictor = DelayPredictor(fit(subset(columns, train_rows), delayed[train_rows]), threshold, vocabulary)
    progress("evaluating on the held-out days")
    base_rate = float(delayed[train_rows].mean())
    held_out = subset(columns, test_rows)
    metrics = evaluate(predictor, held_out, delayed[test_rows], base_rate)
    progress("checking the served evaluator (ONNX Runtime) against scikit-learn on every held-out flight")
    served = predictor.compiled()
    for view, view_columns in zip(VIEWS, (held_out.without_optional(), held_out), strict=True):
        metrics[view]["served_probability_gap"] = probability_gap(served, predictor, view_columns)
    return predictor, metrics, reference(served, subset(columns, train_rows), metrics)


def monthly_delay_rate(flights: pd.DataFrame) -> dict[str, float]:
    """The delay rate of each month of the scheduled departure in the data, kept with the model so the
    next training can say what moved."""
    rates = flights.groupby(flights["Fecha-I"].dt.month)["delayed"].mean()
    return {str(int(month)): round(float(rate), 4) for month, rate in rates.items()}


def changes_from_latest(vocabulary: Vocabulary, flights: pd.DataFrame) -> str:
    """What is new or gone against the store's latest model: airlines, destinations, and the delay
    rate of each month (this data's against that model's training data, from its reference)."""
    try:
        latest = bentoml.models.get(f"{MODEL_NAME}:latest")
    except bentoml.exceptions.NotFound:
        return "no model in the store to compare with: this is the first"
    metadata: dict[str, Any] = dict(latest.info.metadata)
    lines = [f"against the store's latest model, {latest.tag}:"]
    before = Vocabulary.from_metadata(metadata["vocabularies"])
    for name, now, then in (
        ("airlines", vocabulary.airlines, before.airlines),
        ("destinations", vocabulary.destinations, before.destinations),
    ):
        new, gone = sorted(set(now) - set(then)), sorted(set(then) - set(now))
        lines.append(f"  {name}: {len(now)} ({len(then)} before); new: {new or 'none'}; gone: {gone or 'none'}")
    counts = flights.groupby(flights["Fecha-I"].dt.month)["delayed"].count()
    previous = {int(month): rate for month, rate in metadata.get("monthly_delay_rate", {}).items()}
    lines.append("  delay rate by month, this data (that model's data):")
    for month, rate in monthly_delay_rate(flights).items():
        then_rate = previous.get(int(month))
        was = "not in its data" if then_rate is None else f"{then_rate:.3f}"
        lines.append(f"    {int(month):2d}: {rate:.3f} of {counts[int(month)]} flights ({was})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Train, report and save; a bad dataset ends with one clear line and exit code 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data", type=Path, help=f"dataset CSV (default: {DEFAULT_DATA_PATH} if present, else the embedded sample)"
    )
    source.add_argument(
        "--sample",
        action="store_true",
        help=f"train on the embedded synthetic sample even if {DEFAULT_DATA_PATH} exists",
    )
    parser.add_argument(
        "--plot", type=Path, help=f"also write the reliability diagram here (the model store keeps {RELIABILITY_PLOT})"
    )
    parser.add_argument(
        "--min-flights",
        type=int,
        default=MIN_VALUE_FLIGHTS,
        help=f"flights an airline or destination needs to be learned (default {MIN_VALUE_FLIGHTS}: every one)",
    )
    args = parser.parse_args(argv)
    if args.min_flights < 1:
        parser.error("--min-flights must be at least 1")
    if args.plot and not args.plot.parent.is_dir():  # found now, not after the model is saved
        parser.error(f"--plot {args.plot}: no directory {args.plot.parent}")
    started = time.monotonic()
    try:
        flights, training_data = load_training_data(args.data, args.sample)
        predictor, metrics, monitoring_reference = train(flights, args.min_flights)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The flights trained and evaluated on: those of airlines and cities with --min-flights flights.
    flights = flights.loc[predictor.vocabulary.known(flights)]
    training_data["flights"] = len(flights)
    print(format_report(metrics, predictor.threshold))
    print(changes_from_latest(predictor.vocabulary, flights))
    gap = max(metrics[view]["served_probability_gap"] for view in VIEWS)
    if gap > MAX_PROBABILITY_GAP:  # a converter or runtime that evaluates the trees differently
        print(
            f"error: ONNX Runtime's probabilities differ from scikit-learn's by {gap:.2e}; not saved", file=sys.stderr
        )
        return 2
    metadata = {
        "threshold": predictor.threshold,
        "metrics": metrics,
        "training_data": training_data,
        "evaluation": {"hold_out": TEST_SIZE, "grouped_by": "calendar day of Fecha-I", "seed": SEED},
        "versions": {"python": platform.python_version(), **{name: version(name) for name in PACKAGES}},
        "evaluator": {"served": "onnxruntime", "reference": "scikit-learn", "max_probability_gap": MAX_PROBABILITY_GAP},
        "reference": monitoring_reference,
        "vocabularies": predictor.vocabulary.metadata(),
        "monthly_delay_rate": monthly_delay_rate(flights),
        **expected_spec(),
    }
    labels = {"data": "real" if training_data["source"] != "embedded synthetic sample" else "synthetic"}
    with bentoml.models.create(MODEL_NAME, labels=labels, metadata=metadata) as model_ref:
        predictor.save(model_ref.path)
        plot_reliability(metrics, Path(model_ref.path) / RELIABILITY_PLOT)
    if args.plot:
        shutil.copyfile(Path(model_ref.path) / RELIABILITY_PLOT, args.plot)
    progress(f"done in {time.monotonic() - started:.0f} s")
    print(f"saved model {model_ref.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
