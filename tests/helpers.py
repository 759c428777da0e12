"""What the tests share besides fixtures: the test vocabulary, assertions, and starting a served service."""

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import pytest

import train
from loadtest.servers import server  # how the service is started, everywhere
from models.config import MODEL_NAME
from models.data import STATS_PATH
from models.features import FlightColumns, Vocabulary
from models.predictor import MAX_PROBABILITY_GAP, DelayPredictor
from models.schema import request_models

SAMPLE_ROWS = 4_000
# The 2017 data's 23 airlines and 62 cities (its routes in sample_stats.json): what a model trained on
# the synthetic sample learns (each route is in it), and so what the test service accepts.
_ROUTES = json.loads(STATS_PATH.read_text())["route"]
VOCABULARY = Vocabulary(tuple(sorted({route[0] for route in _ROUTES})), tuple(sorted({route[1] for route in _ROUTES})))
REQUESTS = request_models(VOCABULARY.airlines, VOCABULARY.destinations)


@dataclass(frozen=True)
class TrainingRun:
    """What train.train did: what it returned (predictor, held-out metrics, monitoring reference), the
    flights it chose the threshold on with their outcomes, and the flights it evaluated on."""

    result: tuple[DelayPredictor, dict[str, Any], dict[str, Any]]
    training: FlightColumns
    training_delayed: np.ndarray
    held_out: FlightColumns


def recorded_training(flights: pd.DataFrame) -> TrainingRun:
    """train.train on `flights`, recording the flights on each side of its split as it goes."""
    seen: dict[str, Any] = {}
    choose_threshold, evaluate = train.choose_threshold, train.evaluate

    def recording_choose_threshold(columns: FlightColumns, delayed: np.ndarray, days: np.ndarray) -> float:
        seen["training"], seen["training_delayed"] = columns, delayed
        return choose_threshold(columns, delayed, days)

    def recording_evaluate(predictor: DelayPredictor, columns: FlightColumns, *args: Any) -> dict[str, Any]:
        seen["held_out"] = columns
        return evaluate(predictor, columns, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "choose_threshold", recording_choose_threshold)
        patch.setattr(train, "evaluate", recording_evaluate)
        result = train.train(flights)
    return TrainingRun(result, **seen)


def varied_flights(count: int) -> list[dict[str, Any]]:
    """Deterministic, mostly different flights, half of them with the optional fields."""
    flights = []
    for i in range(count):
        month = i % 12 + 1
        airlines, destinations = VOCABULARY.airlines, VOCABULARY.destinations
        entry: dict[str, Any] = {"OPERA": airlines[i % len(airlines)], "TIPOVUELO": "IN"[i % 2], "MES": month}
        if i % 2:
            entry["Fecha-I"] = f"2017-{month:02d}-{i % 28 + 1:02d} {i % 24:02d}:{(i * 7) % 60:02d}"
            entry["SIGLADES"] = destinations[i % len(destinations)]
        flights.append(entry)
    return flights


def assert_same_answers(served: DelayPredictor, reference: DelayPredictor, columns: FlightColumns) -> None:
    """The served predictor answers as the scikit-learn reference, with and without the optional fields:
    probabilities within MAX_PROBABILITY_GAP, labels equal except where the reference's probability
    lies within that gap of the threshold."""
    for view in (columns.without_optional(), columns):
        expected, got = reference.probabilities(view), served.probabilities(view)
        assert np.abs(got - expected).max() <= MAX_PROBABILITY_GAP
        decided = np.abs(expected - reference.threshold) > MAX_PROBABILITY_GAP
        assert (served.labels(got)[decided] == reference.labels(expected)[decided]).all()
        assert decided.mean() > 0.99  # the exception is rare, or the check would say little


def assert_calibrated(metrics: dict[str, Any]) -> None:
    """One view's held-out metrics show calibrated probabilities: a Brier score below the no-skill
    forecast's and a calibration error of at most 0.02."""
    assert metrics["brier"] < metrics["base_rate_brier"]
    assert metrics["calibration_error"] <= 0.02


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip a test whose tool or data is missing here; under CI (CI set), fail instead: CI runs every test."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


def stand_in_reference() -> dict[str, Any]:
    """A monitoring reference of the right shape (one flight per value, even probability bins), for
    the models the tests make by hand."""
    return {
        "flights": 100,
        "inputs": {name: [1] * (size + 1) for name, size in VOCABULARY.monitored().items()},
        "probability_edges": [round(edge, 2) for edge in np.linspace(0.01, 0.99, 99)],
        "probability_counts": [1] * 100,
        "held_out": {"delay_rate": 0.2, "brier": 0.15, "roc_auc": 0.7},
    }


def log_records(directory: Path) -> list[dict[str, Any]]:
    """Every record of a prediction log directory (FLIGHT_DELAY_LOG_DIR), each worker's data files and
    their rotated ones."""
    files = sorted((directory / MODEL_NAME / "data").glob("data.*.log*"))
    return [json.loads(line) for path in files for line in path.read_text().splitlines()]


SESSION_MODEL: list[str] = []  # the tag trained_model made: what bentoml_serve serves unless told otherwise


def pin_model(home: Path, tag: str) -> None:
    """Make `home` a BentoML home whose only model, and so its latest, is `tag` of the test store: other
    tests train models into that store (train.py, compare), and a service serves the latest."""
    name, version = tag.split(":")
    models = home / "models" / name
    models.mkdir(parents=True, exist_ok=True)
    if not (models / version).exists():
        (models / version).symlink_to(Path(os.environ["BENTOML_HOME"]) / "models" / name / version)
    (models / "latest").write_text(version)


@contextmanager
def bentoml_serve(log: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`bentoml serve` of the store's latest model on a free port, its output in log: (URL, process) once ready.

    env: variables to set for it. Unless it names a BENTOML_HOME, the service gets one of its own
    beside the log, holding the session's model (trained_model) as its latest: BentoML keeps the
    Prometheus files of all workers under it and clears them at start, which would blank another
    running service's /metrics. Its prediction log goes beside the log too (prediction-log/), not
    into the project.
    """
    # /metrics made for every request: the tests read it right after acting (test_internals.py tests the
    # page cache). One worker unless env asks for more: each more costs about 1.1 s of CPU a start, and
    # the tests of what crosses workers (monitoring, the prediction log, outcomes, shutdown) ask for two.
    env = {
        "FLIGHT_DELAY_LOG_DIR": str(log.parent / "prediction-log"),
        "FLIGHT_DELAY_METRICS_PAGE_S": "0",
        "FLIGHT_DELAY_WORKERS": "1",
        **(env or {}),
    }
    if "BENTOML_HOME" not in env:
        assert SESSION_MODEL, "request the trained_model fixture before serving it"
        home = log.parent / "bentoml-home"
        pin_model(home, SESSION_MODEL[0])
        env["BENTOML_HOME"] = str(home)
    try:
        with server("service", env, log) as (url, process):  # the drills' own start and stop
            yield url, process
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; its log: {log.read_text()[-3000:]}") from exc
