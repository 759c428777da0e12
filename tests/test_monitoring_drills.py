"""The monitoring drills' pieces (loadtest/monitoring_drills.py), and their committed results.

The pure pieces run on made-up counts and the embedded synthetic sample. The committed results in
loadtest/results/monitoring/ are checked against their own counts; the tests that also need the real
CSV are skipped without it (failed under CI), as in tests/test_real_data.py.
"""

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import skip_unless_ci

from loadtest.monitoring_drills import (
    CALIBRATION_BOUND,
    CLUSTER_TOLERANCE,
    PER_REQUEST,
    RESULTS,
    as_requests,
    cluster_markdown,
    cluster_outcome,
    combined,
    compare,
    figures,
    held_out_days,
    pod_counts,
    reference_shares,
    verdicts,
)
from loadtest.probes import metric_samples
from models.config import DEFAULT_DATA_PATH, TEST_SIZE
from models.data import embedded_sample, file_sha256, load_flights
from models.quality import js_distance, min_flights

REAL_DATA = Path(os.environ.get("FLIGHT_DELAY_DATA", DEFAULT_DATA_PATH))
MODEL = "flight_delay:test"
BINS = 100
AIRLINES = 23  # as the real data's: 2,300 flights before airline is judged
INPUTS = ("airline", "international", "hour")


@pytest.fixture(scope="module")
def sample_flights() -> pd.DataFrame:
    """The embedded synthetic sample's first 3,000 checked flights."""
    return embedded_sample(3_000)[0]


def counts(airline: Sequence[float], outcomes: float = 0.0, delayed: float = 0.0) -> dict[str, Any]:
    """A pod's counts with the given flights per airline (the other inputs all of their first value) and
    `outcomes` outcomes in bin 0, `delayed` of them delayed, at probability 0.2 each."""
    total = float(sum(airline))
    inputs = {name: {f"{name} 0": total} for name in INPUTS}
    inputs["airline"] = {f"airline {i}": float(n) for i, n in enumerate(airline)}
    nothing = [0.0] * (BINS - 1)
    return {
        "predictions": total,
        "inputs": inputs,
        "outcome_flights": [outcomes, *nothing],
        "outcome_delayed": [delayed, *nothing],
        "outcome_probability_sum": [0.2 * outcomes, *nothing],
        "outcome_squared_error": 0.0,
    }


def shares() -> dict[str, dict[str, float]]:
    """Reference shares with every value of every input equally often: AIRLINES airlines, 2 values of
    the other inputs."""
    sizes = {name: AIRLINES if name == "airline" else 2 for name in INPUTS}
    return {name: {f"{name} {i}": 1 / size for i in range(size)} for name, size in sizes.items()}


def test_held_out_days_keeps_each_day_whole(sample_flights: pd.DataFrame) -> None:
    held_out = held_out_days(sample_flights)
    days = sample_flights["Fecha-I"].dt.date
    assert days[held_out].nunique() + days[~held_out].nunique() == days.nunique()  # no day on both sides
    assert days[held_out].nunique() == math.ceil(TEST_SIZE * days.nunique())  # GroupShuffleSplit's rounding


def test_as_requests_sends_fecha_o_only_with_outcomes(sample_flights: pd.DataFrame) -> None:
    flights = sample_flights.head(PER_REQUEST + 3)
    predictions, outcomes = as_requests(flights, outcomes=False), as_requests(flights, outcomes=True)
    assert [len(body["flights"]) for body in predictions] == [PER_REQUEST, 3]
    first = flights.iloc[0]
    assert predictions[0]["flights"][0] == {
        "OPERA": first["OPERA"],
        "TIPOVUELO": first["TIPOVUELO"],
        "MES": first["Fecha-I"].month,
        "Fecha-I": f"{first['Fecha-I']:%Y-%m-%d %H:%M}",
        "SIGLADES": first["SIGLADES"],
    }
    assert outcomes[0]["flights"][0] == {
        **predictions[0]["flights"][0],
        "Fecha-O": f"{first['Fecha-O']:%Y-%m-%d %H:%M}",
    }


def test_metric_samples_reads_counters_by_name_and_labels() -> None:
    text = (
        "# HELP flight_delay_input_flights_total Flights per input value.\n"
        "# TYPE flight_delay_input_flights_total counter\n"
        f'flight_delay_input_flights_total{{input="airline",model="{MODEL}",value="Sky Airline"}} 7.0\n'
    )
    samples = metric_samples(text)
    key = (("input", "airline"), ("model", MODEL), ("value", "Sky Airline"))
    assert samples["flight_delay_input_flights_total"] == {key: 7.0}


def test_pod_counts_keeps_one_model_and_leaves_missing_out() -> None:
    text = "\n".join(
        [
            "# TYPE flight_delay_input_flights_total counter",
            f'flight_delay_input_flights_total{{input="airline",model="{MODEL}",value="Sky Airline"}} 5.0',
            f'flight_delay_input_flights_total{{input="airline",model="{MODEL}",value="missing"}} 9.0',
            "# TYPE flight_delay_probability_bin_flights_total counter",
            f'flight_delay_probability_bin_flights_total{{bin="1",model="{MODEL}"}} 3.0',
            "# TYPE flight_delay_outcome_delayed_total counter",
            f'flight_delay_outcome_delayed_total{{bin="99",model="{MODEL}"}} 2.0',
            'flight_delay_outcome_delayed_total{bin="98",model="flight_delay:other"} 50.0',
            "# TYPE flight_delay_reference_share gauge",
            f'flight_delay_reference_share{{input="airline",model="{MODEL}",pid="7",value="Sky Airline"}} 0.25',
            'flight_delay_reference_share{input="airline",model="flight_delay:other",pid="7",value="Sky Airline"} 1.0',
        ]
    )
    samples = metric_samples(text + "\n")
    pod = pod_counts(samples, MODEL, BINS)
    assert pod["inputs"] == {"airline": {"Sky Airline": 5.0}}
    assert pod["predictions"] == 3.0
    assert pod["outcome_delayed"] == [2.0 if b == 99 else 0.0 for b in range(BINS)]  # the other model's left out
    assert reference_shares(samples, MODEL) == {"airline": {"Sky Airline": 0.25}}


def test_combined_adds_every_count_of_the_pods() -> None:
    first, second = counts([1000, 0, 200], 10, 4), counts([0, 3000, 200], 30, 2)
    del second["inputs"]["airline"]["airline 0"]  # a value one pod never exported counts 0 there
    both = combined(first, second)
    assert both["inputs"]["airline"] == {"airline 0": 1000.0, "airline 1": 3000.0, "airline 2": 400.0}
    assert both["predictions"] == 4400.0
    assert both["outcome_flights"][0] == 40.0 and both["outcome_delayed"][0] == 6.0


def test_figures_of_combined_pods_are_not_the_mean_of_their_scores() -> None:
    halves = [[300.0 * (i % 2 == half) for i in range(AIRLINES)] for half in (0, 1)]  # each pod half the airlines
    pods = [counts(airlines, 100, 20) for airlines in halves]
    both = figures(combined(*pods), shares())
    alone = [figures(pod, shares())["drift airline"] for pod in pods]
    assert both["drift airline"] == pytest.approx(js_distance(np.sum(halves, axis=0), np.ones(AIRLINES)), abs=1e-6)
    assert all(score is not None and score > 0.5 for score in alone)  # about 0.56 each
    assert both["drift airline"] is not None and both["drift airline"] < 0.05
    assert both["realized delay_rate"] == pytest.approx(0.2) and both["expected delay_rate"] == pytest.approx(0.2)


def test_figures_leave_an_input_unjudged_below_its_minimum() -> None:
    needed = min_flights(AIRLINES)
    below = figures(counts([needed - 1] + [0] * (AIRLINES - 1)), shares())
    assert below["drift airline"] is None and below["drift international"] is not None  # 1,000 flights needed
    assert below["realized delay_rate"] is None and below["realized calibration_error"] is None
    assert figures(counts([needed] + [0] * (AIRLINES - 1)), shares())["drift airline"] is not None


@pytest.mark.parametrize(
    ("recorded", "counted", "agrees"),
    [
        (0.1234, 0.1234 + CLUSTER_TOLERANCE / 2, True),
        (0.1234, 0.1234 + CLUSTER_TOLERANCE * 2, False),
        (None, None, True),  # neither judged the input
        (None, 0.1234, False),  # the rule did not record what the counts judge
        (0.1234, None, False),
    ],
)
def test_compare_agrees_within_tolerance_only(recorded: float | None, counted: float | None, agrees: bool) -> None:
    (row,) = compare({"drift airline": recorded}, {"drift airline": counted})
    assert row["agrees"] is agrees


def test_verdicts_hold_the_calibration_condition_over_its_bound() -> None:
    report: dict[str, Any] = {
        "drift": {"airline": {"drifted": True}, "hour": {"drifted": True}, "destination": {"drifted": None}},
        "estimated": {"delay_rate": 0.18},
        "outcomes": {"flights": 2000, "delay_rate": 0.25, "calibration_error": CALIBRATION_BOUND + 0.001},
    }
    verdict = verdicts(report)
    assert verdict["inputs_drifted_alerted"] == ["airline"]  # hour drifts by construction: not alerted
    assert verdict["calibration_alert_condition"] and verdict["estimate_alert_condition"]
    report["outcomes"]["calibration_error"] = CALIBRATION_BOUND
    assert not verdicts(report)["calibration_alert_condition"]


def test_cluster_markdown_shows_recorded_beside_combined_and_each_pod() -> None:
    pods = [counts([2000] * AIRLINES, 100, 20), counts([1000] * AIRLINES, 100, 18)]
    both = figures(combined(*pods), shares())
    recorded = {figure: value for figure, value in both.items() if value is not None}
    monitoring = {
        "drift": {name[6:]: {"score": 0.5} for name in both if name.startswith("drift ")},
        "outcomes": {"delay_rate": 0.2, "calibration_error": 0.01},
    }
    result: dict[str, Any] = {
        "image": "flight-delay:test",
        "model": MODEL,
        "training_data": {"sha256": "ab" * 32},
        "reference": {"flights": 45_539, "shares": shares()},
        "sent": {"predictions": 70_000, "outcomes": 200},
        "seconds_since_first_scrape": 90.0,
        "pods": {f"r{slot}": {"counts": pod, "monitoring": monitoring} for slot, pod in enumerate(pods, 1)},
        "raw_counters_in_prometheus_equal_pods_combined": True,
        "extrapolated_counts": {"inputs": {"airline": 70_100.0}, "outcomes": 201.0},
        "alerts": [],
        "recorded": recorded,
    }
    outcome = cluster_outcome(result)
    assert outcome["all_agree"] and outcome["largest_difference"] == 0.0
    page = cluster_markdown("drill cluster", "2026-12-03 12:00", "this machine", result, outcome)
    assert f"| drift airline | {both['drift airline']:.4f} | {both['drift airline']:.4f} | 0.0e+00 | 0.5000 |" in page
    assert "| expected delay_rate | 0.2000 | 0.2000 | 0.0e+00 | - | - | - |" in page
    assert "r1 46,000 predictions and 100 outcomes" in page


def committed(drill: str) -> dict[str, Any]:
    """A drill's committed JSON result."""
    return dict(json.loads((RESULTS / f"{drill}.json").read_text()))


def test_cluster_result_recorded_figures_equal_its_pods_counts_combined() -> None:
    result = committed("cluster")["run"]
    both = combined(*(pod["counts"] for pod in result["pods"].values()))
    assert both["predictions"] == sum(both["outcome_flights"]) == result["sent"]["predictions"]
    assert all(pod["counts"]["predictions"] > 0 for pod in result["pods"].values())  # both pods served
    rows = compare(result["recorded"], figures(both, result["reference"]["shares"]))
    assert all(row["agrees"] for row in rows), [row for row in rows if not row["agrees"]]
    assert all(row["recorded"] is not None for row in rows)  # every input judged: 22,667 flights
    assert result["raw_counters_in_prometheus_equal_pods_combined"]


def test_cluster_result_pod_reports_match_their_counts() -> None:
    for pod in committed("cluster")["run"]["pods"].values():
        assert pod["monitoring"]["predictions"]["flights"] == pod["counts"]["predictions"]
        assert pod["monitoring"]["outcomes"]["flights"] == sum(pod["counts"]["outcome_flights"])


@pytest.mark.parametrize("drill", ["same", "season", "world"])
def test_drill_result_verdict_follows_its_figures(drill: str) -> None:
    result = committed(drill)
    assert verdicts(result["monitoring"]) == result["verdict"]


@pytest.fixture(scope="module")
def real_flights() -> pd.DataFrame:
    """The checked real dataset; skipped without it, failed without it in CI."""
    if not REAL_DATA.is_file():
        skip_unless_ci(f"real dataset not found at {REAL_DATA} (set FLIGHT_DELAY_DATA or copy it there)")
    return load_flights(REAL_DATA)


def test_cluster_result_model_was_trained_on_the_real_training_days(real_flights: pd.DataFrame) -> None:
    result = committed("cluster")["run"]
    held_out = held_out_days(real_flights)
    assert result["training_data"]["sha256"] == file_sha256(REAL_DATA)
    assert result["sent"]["predictions"] == held_out.sum() == committed("same")["monitoring"]["predictions"]["flights"]
    airlines = real_flights.loc[~held_out, "OPERA"].value_counts(normalize=True)
    exported = result["reference"]["shares"]["airline"]
    assert exported == pytest.approx({name: airlines.get(name, 0.0) for name in exported})
    assert set(airlines.index) <= set(exported)
