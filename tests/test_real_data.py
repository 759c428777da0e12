"""Model quality on the real SCL 2017 dataset; skipped, with the reason, where the CSV is absent,
except under CI (CI set), where they fail.

The CSV is looked for at FLIGHT_DELAY_DATA, else data/dataset_SCL.csv (where .ci/run links it).
"""

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import assert_calibrated, assert_same_answers, skip_unless_ci

import train
from models.config import DEFAULT_DATA_PATH
from models.data import STATS_PATH, compute_stats, load_flights
from models.features import FlightColumns
from models.predictor import DelayPredictor

REAL_DATA = Path(os.environ.get("FLIGHT_DELAY_DATA", DEFAULT_DATA_PATH))


@pytest.fixture(scope="module", autouse=True)
def real_data_present() -> None:
    """Every test here needs the CSV: skipped without it, failed without it in CI."""
    if not REAL_DATA.is_file():
        skip_unless_ci(f"real dataset not found at {REAL_DATA} (set FLIGHT_DELAY_DATA or copy it there)")


@pytest.fixture(scope="module")
def real_flights() -> pd.DataFrame:
    """The checked real dataset."""
    return load_flights(REAL_DATA)


@pytest.fixture(scope="module")
def real_model(real_flights: pd.DataFrame) -> tuple[DelayPredictor, dict[str, Any], dict[str, Any]]:
    """The predictor and hold-out metrics of train.py's procedure on the real data."""
    return train.train(real_flights)


def test_real_data_has_documented_shape(real_flights: pd.DataFrame) -> None:
    assert len(real_flights) == 68_206
    assert real_flights["delayed"].sum() == 12_614


def test_committed_stats_are_those_of_real_data(real_flights: pd.DataFrame) -> None:
    assert compute_stats(real_flights) == json.loads(STATS_PATH.read_text())


def test_required_fields_only_meet_targets(real_model: tuple[DelayPredictor, dict[str, Any], dict[str, Any]]) -> None:
    metrics = real_model[1]["required_only"]
    assert metrics["roc_auc"] >= 0.67
    assert metrics["delayed"]["recall"] >= 0.60


def test_all_fields_meet_targets(real_model: tuple[DelayPredictor, dict[str, Any], dict[str, Any]]) -> None:
    metrics = real_model[1]["all_fields"]
    assert metrics["roc_auc"] >= 0.70
    assert metrics["delayed"]["recall"] >= 0.60
    assert metrics["delayed"]["f1"] >= 0.40


@pytest.mark.parametrize("view", train.VIEWS)
def test_real_probabilities_are_calibrated_on_held_out_days(
    real_model: tuple[DelayPredictor, dict[str, Any], dict[str, Any]], view: str
) -> None:
    assert_calibrated(real_model[1][view])


# The balanced-class-weights model this calibrated one replaced, on the same split (docs/model.md):
# ROC AUC 0.6744 / 0.7131, F1 of delayed flights 0.368 / 0.406. Its required-only 0.6744 was the best
# of four training seeds (0.6728 to 0.6744; `python studies/calibration_study.py --data ...` prints them), so that
# floor is 0.673: the seeds' spread, not a loss.
NO_WORSE_THAN = {"required_only": (0.673, 0.368), "all_fields": (0.713, 0.406)}


@pytest.mark.parametrize("view", train.VIEWS)
def test_real_ranking_and_labels_no_worse_than_balanced_weights(
    real_model: tuple[DelayPredictor, dict[str, Any], dict[str, Any]], view: str
) -> None:
    metrics = real_model[1][view]
    roc_auc, f1 = NO_WORSE_THAN[view]
    assert metrics["roc_auc"] >= roc_auc
    assert metrics["delayed"]["f1"] >= f1


def test_served_model_answers_as_scikit_learn_on_every_real_flight(
    real_flights: pd.DataFrame, real_model: tuple[DelayPredictor, dict[str, Any], dict[str, Any]]
) -> None:
    reference = real_model[0]
    assert_same_answers(reference.compiled(), reference, FlightColumns.from_frame(real_flights, reference.vocabulary))


def test_sample_model_ranks_airlines_like_real_model(
    real_flights: pd.DataFrame,
    real_model: tuple[DelayPredictor, dict[str, Any], dict[str, Any]],
    sample_model: tuple[DelayPredictor, dict[str, Any], dict[str, Any]],
) -> None:
    real, sample = real_model[0], sample_model[0]
    assert real.vocabulary == sample.vocabulary  # both learn the 2017 data's 23 airlines and 62 cities
    columns = FlightColumns.from_frame(real_flights, real.vocabulary).without_optional()
    by_airline = (
        pd.DataFrame(
            {
                "airline": real_flights["OPERA"].to_numpy(),
                "real": real.probabilities(columns),
                "sample": sample.probabilities(columns),
            }
        )
        .groupby("airline")[["real", "sample"]]
        .mean()
    )
    assert by_airline["real"].corr(by_airline["sample"], method="spearman") >= 0.8
    assert np.isfinite(by_airline.to_numpy()).all()
