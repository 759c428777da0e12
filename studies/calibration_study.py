"""Why the served model has no class weights: the comparison behind docs/model.md, on train.py's own split.

    python studies/calibration_study.py [--data PATH]

For balanced and no class weights: held-out calibration error and ROC AUC of the raw probabilities
and of an isotonic or Platt (logistic on the log-odds) calibrator fitted out of fold on training
days; the Platt fit's slope and intercept; and ROC AUC over four training seeds. Prints a table.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's modules, run as a script

import train
from models.config import CV_FOLDS, SEED
from models.data import DataError, calendar_days, held_out_split
from models.features import FlightColumns, Vocabulary
from models.quality import calibration_error, equal_count_bins, roc_auc

WEIGHTS = {"balanced": "balanced", "none": None}
SEEDS = (SEED, 1, 2, 3)  # training seeds (HistGradientBoosting's early-stopping split)


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="dataset CSV (default: as train.py)")
    args = parser.parse_args(argv)
    try:
        flights, _source = train.load_training_data(args.data)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    vocabulary = Vocabulary.learn(flights, train.MIN_VALUE_FLIGHTS)
    columns, delayed = FlightColumns.from_frame(flights, vocabulary), flights["delayed"].to_numpy()
    days = calendar_days(flights)
    fit_rows, test_rows = held_out_split(flights)
    fitting, held_out = train.subset(columns, fit_rows), train.subset(columns, test_rows)
    y_fit, y_test = delayed[fit_rows], delayed[test_rows]
    print(f"{'weights':<10}{'calibrator':<11}{'view':<15}{'ROC AUC':>8}{'calibration error':>19}")
    for weights, class_weight in WEIGHTS.items():
        classifier = train.make_classifier().set_params(class_weight=class_weight)
        out_of_fold = np.empty(2 * len(y_fit))  # both views, stacked as train.fit stacks them
        for inner_fit, inner_score in GroupKFold(n_splits=CV_FOLDS).split(y_fit, groups=days[fit_rows]):
            model = clone(classifier).fit(
                np.vstack(train.both_views(train.subset(fitting, inner_fit))), np.tile(y_fit[inner_fit], 2)
            )
            for stacked, matrix in enumerate(train.both_views(train.subset(fitting, inner_score))):
                out_of_fold[stacked * len(y_fit) + inner_score] = model.predict_proba(matrix)[:, 1]
        model = clone(classifier).fit(np.vstack(train.both_views(fitting)), np.tile(y_fit, 2))
        platt = LogisticRegression(C=1e6).fit(logit(out_of_fold)[:, None], np.tile(y_fit, 2))
        isotonic = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(out_of_fold, np.tile(y_fit, 2))
        calibrators = {
            "none": lambda p: p,
            "isotonic": isotonic.predict,
            "platt": lambda p: platt.predict_proba(logit(p)[:, None])[:, 1],  # noqa: B023
        }
        for name, calibrate in calibrators.items():
            for view, matrix in zip(train.VIEWS, train.both_views(held_out), strict=True):
                p = calibrate(model.predict_proba(matrix)[:, 1])
                error = calibration_error(*equal_count_bins(y_test, p))
                print(f"{weights:<10}{name:<11}{view:<15}{roc_auc(y_test, p):>8.4f}{error:>19.4f}")
        print(f"{weights:<10}Platt fit of the out-of-fold log-odds: slope {platt.coef_[0, 0]:.3f}, "
              f"intercept {platt.intercept_[0]:.3f}")  # fmt: skip
        seeded = [
            clone(classifier).set_params(random_state=seed).fit(np.vstack(train.both_views(fitting)), np.tile(y_fit, 2))
            for seed in SEEDS
        ]
        for view, matrix in zip(train.VIEWS, train.both_views(held_out), strict=True):
            aucs = np.array([roc_auc(y_test, model.predict_proba(matrix)[:, 1]) for model in seeded], dtype=float)
            print(f"{weights:<10}ROC AUC over seeds {SEEDS}, {view}: {aucs.min():.4f} to {aucs.max():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
