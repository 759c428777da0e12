"""Train the flight-delay classifier, evaluate it on held-out days and save it to the BentoML model store.

    python train.py [--data PATH]

Without --data it reads data/dataset_SCL.csv when present, otherwise the embedded synthetic sample.
"""

import argparse
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score
from sklearn.model_selection import GroupKFold, GroupShuffleSplit

from models.config import CV_FOLDS, DEFAULT_DATA_PATH, MODEL_NAME, SEED, TARGET_RECALL, TEST_SIZE
from models.data import DataError, embedded_sample, file_sha256, load_flights
from models.features import FlightColumns, encode
from models.predictor import DelayPredictor, expected_spec

VIEWS = ("required_only", "all_fields")  # (a) OPERA, TIPOVUELO, MES; (b) plus Fecha-I and SIGLADES
PACKAGES = ("bentoml", "scikit-learn", "numpy", "pandas", "pydantic")


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
        class_weight="balanced",
        random_state=SEED,
    )


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
        model = fit(subset(columns, fit_rows), delayed[fit_rows])
        for score, matrix in zip(scores, both_views(subset(columns, score_rows)), strict=True):
            score[score_rows] = model.predict_proba(matrix)[:, 1]
    # the threshold at which each view's recall is TARGET_RECALL; the lower one meets it in both
    return float(min(np.quantile(score[delayed == 1], 1 - TARGET_RECALL) for score in scores))


def subset(columns: FlightColumns, rows: np.ndarray) -> FlightColumns:
    """The given rows of every column."""
    return FlightColumns(**{name: values[rows] for name, values in vars(columns).items()})


def evaluate(predictor: DelayPredictor, columns: FlightColumns, delayed: np.ndarray) -> dict[str, Any]:
    """ROC AUC, PR AUC and per-class precision, recall and F1 at the served threshold, per view."""
    report: dict[str, Any] = {}
    for view, view_columns in zip(VIEWS, (columns.without_optional(), columns), strict=True):
        probability = predictor.probabilities(view_columns)
        precision, recall, f1, support = precision_recall_fscore_support(
            delayed, predictor.labels(probability), labels=[0, 1], zero_division=0
        )
        report[view] = {
            "roc_auc": round(float(roc_auc_score(delayed, probability)), 4),
            "pr_auc": round(float(average_precision_score(delayed, probability)), 4),
            **{
                name: {"precision": round(float(p), 4), "recall": round(float(r), 4),
                       "f1": round(float(f), 4), "support": int(s)}
                for name, p, r, f, s in zip(("on_time", "delayed"), precision, recall, f1, support, strict=True)
            },
        }  # fmt: skip
    return report


def format_report(metrics: dict[str, Any], threshold: float) -> str:
    """The evaluation as a small plain-text table."""
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
    return "\n".join(lines)


def load_training_data(path: Path | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The checked flights and a description of where they came from."""
    path = path or (DEFAULT_DATA_PATH if DEFAULT_DATA_PATH.is_file() else None)
    if path is None:
        progress(f"no dataset at {DEFAULT_DATA_PATH}: training on the embedded synthetic sample")
        flights, sha256 = embedded_sample()
        return flights, {"source": "embedded synthetic sample", "sha256": sha256, "rows": len(flights)}
    progress(f"reading {path}")
    flights = load_flights(path)
    return flights, {"source": str(path), "sha256": file_sha256(path), "rows": len(flights)}


def train(flights: pd.DataFrame) -> tuple[DelayPredictor, dict[str, Any]]:
    """Split by day, choose the threshold, fit, and evaluate on the held-out days."""
    columns, delayed = FlightColumns.from_frame(flights), flights["delayed"].to_numpy()
    days = flights["Fecha-I"].dt.strftime("%Y-%m-%d").to_numpy()
    splitter = GroupShuffleSplit(n_splits=1, test_size=TEST_SIZE, random_state=SEED)
    train_rows, test_rows = next(splitter.split(delayed, groups=days))
    progress(f"{len(train_rows)} training and {len(test_rows)} held-out flights, split by calendar day")
    threshold = choose_threshold(subset(columns, train_rows), delayed[train_rows], days[train_rows])
    progress("fitting the final model")
    predictor = DelayPredictor(fit(subset(columns, train_rows), delayed[train_rows]), threshold)
    progress("evaluating on the held-out days")
    return predictor, evaluate(predictor, subset(columns, test_rows), delayed[test_rows])


def main(argv: list[str] | None = None) -> int:
    """Train, report and save; a bad dataset ends with one clear line and exit code 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, help=f"dataset CSV (default: {DEFAULT_DATA_PATH} if present, else the embedded sample)"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        flights, training_data = load_training_data(args.data)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    predictor, metrics = train(flights)
    print(format_report(metrics, predictor.threshold))
    metadata = {
        "threshold": predictor.threshold,
        "metrics": metrics,
        "training_data": training_data,
        "evaluation": {"hold_out": TEST_SIZE, "grouped_by": "calendar day of Fecha-I", "seed": SEED},
        "versions": {"python": platform.python_version(), **{name: version(name) for name in PACKAGES}},
        **expected_spec(),
    }
    labels = {"data": "real" if training_data["source"] != "embedded synthetic sample" else "synthetic"}
    with bentoml.models.create(MODEL_NAME, labels=labels, metadata=metadata) as model_ref:
        predictor.save(model_ref.path)
    progress(f"done in {time.monotonic() - started:.0f} s")
    print(f"saved model {model_ref.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
