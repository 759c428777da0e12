"""Monitoring: each score against hand-computed values, the binned ROC AUC against the exact one, and
GET /v1/monitoring of a two-worker service against the flights sent to it."""

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bentoml
import httpx
import numpy as np
import pytest
from helpers import REQUESTS, VOCABULARY, bentoml_serve
from sklearn.metrics import roc_auc_score

from loadtest.probes import fresh
from models.data import embedded_sample
from models.features import MONITORED, FlightColumns, Vocabulary, category_counts, encode
from models.predictor import DelayPredictor
from models.quality import (
    binned_auc,
    calibration_error,
    expected_quality,
    input_drift,
    js_distance,
    min_flights,
    probability_bins,
)
from models.schema import EXAMPLE_REQUEST
from serving import routes
from serving.metrics import Recent
from serving.monitoring import Monitor
from serving.settings import MONITORING_OFF


@pytest.mark.parametrize(
    ("live", "reference", "distance"),
    [
        ([5, 5], [1, 1], 0.0),  # same shares
        ([1, 0], [0, 1], 1.0),  # nothing in common
        # p = (.5, .5), q = (.25, .75), m = (.375, .625): sqrt((0.0465547 + 0.0510352) / 2)
        ([1, 1], [1, 3], 0.220896),
    ],
)
def test_js_distance_matches_hand_computed_values(live: list[int], reference: list[int], distance: float) -> None:
    assert js_distance(np.array(live, float), np.array(reference, float)) == pytest.approx(distance, abs=1e-6)


@pytest.mark.parametrize(
    ("positives", "negatives", "auc"),
    [
        ([0, 1], [1, 0], 1.0),
        ([1, 0], [0, 1], 0.0),
        ([3], [2], 0.5),  # one bin: all ties
        ([0, 2, 2], [2, 2, 0], 0.875),  # 8 + 4 wins and 4 ties of 16 pairs
    ],
)
def test_binned_auc_matches_hand_computed_values(positives: list[int], negatives: list[int], auc: float) -> None:
    assert binned_auc(np.array(positives, float), np.array(negatives, float)) == pytest.approx(auc)


def test_binned_auc_is_none_without_both_classes() -> None:
    assert binned_auc(np.array([0.0, 0.0]), np.array([1.0, 2.0])) is None


@pytest.mark.parametrize(("values", "flights"), [(2, 1_000), (12, 1_200), (62, 6_200)])
def test_min_flights_is_100_per_value_and_never_under_1000(values: int, flights: int) -> None:
    assert min_flights(values) == flights


def test_js_distance_of_same_distribution_samples_stays_well_under_the_threshold_at_min_flights() -> None:
    """The reason for min_flights: at 100 flights per value, chance alone gives about
    sqrt((k - 1) / (8 n ln 2)) = 0.042, and no draw of 50 reaches three quarters of the threshold."""
    rng = np.random.default_rng(7)
    reference = rng.dirichlet(np.ones(32)) * 50_000
    distances = [
        js_distance(
            np.bincount(rng.choice(32, min_flights(32), p=reference / reference.sum()), minlength=32), reference
        )
        for _ in range(50)
    ]
    assert np.median(distances) == pytest.approx(np.sqrt(31 / (8 * min_flights(32) * np.log(2))), abs=0.005)
    assert max(distances) < 0.075


def test_input_drift_is_judged_from_the_minimum_count_with_missing_flights_left_out() -> None:
    reference = np.array([500.0, 500.0, 7.0])  # two values, then flights without the input
    below = input_drift(np.array([999.0, 0.0, 40.0]), reference)
    assert below == {"score": None, "threshold": 0.1, "drifted": None, "flights": 999, "missing": 40,
                     "min_flights": 1000}  # fmt: skip
    judged = input_drift(np.array([800.0, 200.0, 40.0]), reference)
    expected = js_distance(np.array([800.0, 200.0]), np.array([500.0, 500.0]))
    assert judged["score"] == round(expected, 4) and judged["drifted"] == (expected > 0.1)
    assert (judged["flights"], judged["missing"]) == (1000, 40)


def test_calibration_error_weighs_each_bins_gap_by_its_flights() -> None:
    # bin 1: 10 flights, mean p 0.1, 2 delayed (gap 0.1); bin 2: mean p 0.5, 5 delayed (gap 0)
    error = calibration_error(np.array([10.0, 10.0]), np.array([1.0, 5.0]), np.array([2.0, 5.0]))
    assert error == pytest.approx(0.05)


def test_expected_quality_matches_hand_computed_values() -> None:
    probabilities = np.array([0.1, 0.3, 0.6, 0.8])  # two bins: below and above 0.5, the threshold
    expected = expected_quality(
        flights=np.array([2.0, 2.0]),
        probability_sums=np.array([0.4, 1.4]),
        squares=float(probabilities @ probabilities),
        flagged=2,
        flagged_sum=1.4,
    )
    assert expected == pytest.approx(
        {
            "delay_rate": 0.45,
            "brier": 0.175,  # the mean of p(1 - p)
            "roc_auc": 2.98 / 3.96,  # positives (0.4, 1.4), negatives (1.6, 0.6)
            "precision": 0.7,
            "recall": 1.4 / 1.8,
            "f1": 2.8 / 3.8,
        }
    )


def test_binned_auc_over_the_reference_bins_is_within_0_01_of_the_exact_auc(
    sample_model: tuple[DelayPredictor, dict[str, Any], dict[str, Any]],
) -> None:
    predictor, _metrics, reference = sample_model
    flights, _source = embedded_sample()
    probabilities = predictor.probabilities(FlightColumns.from_frame(flights, predictor.vocabulary))
    delayed = flights["delayed"].to_numpy()
    bins = probability_bins(np.array(reference["probability_edges"]), probabilities)
    size = len(reference["probability_edges"]) + 1
    positives = np.bincount(bins[delayed == 1], minlength=size)
    negatives = np.bincount(bins[delayed == 0], minlength=size)
    binned = binned_auc(positives.astype(float), negatives.astype(float))
    assert binned == pytest.approx(roc_auc_score(delayed, probabilities), abs=0.01)


def test_reference_counts_every_training_flight_in_every_input_and_equal_probability_bins(
    sample_model: tuple[DelayPredictor, dict[str, Any], dict[str, Any]],
) -> None:
    reference = sample_model[2]
    assert list(reference["inputs"]) == list(MONITORED)
    assert all(sum(counts) == reference["flights"] for counts in reference["inputs"].values())
    counts = np.array(reference["probability_counts"])
    assert counts.sum() == reference["flights"] and len(counts) == len(reference["probability_edges"]) + 1
    assert counts.max() < 3 * reference["flights"] / len(counts)  # about equal counts (ties share a bin)


@pytest.fixture(scope="module")
def two_workers(trained_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A service with two workers, counting from zero."""
    with bentoml_serve(tmp_path_factory.mktemp("monitoring") / "serve.log", {"FLIGHT_DELAY_WORKERS": "2"}) as (
        url,
        _process,
    ):
        yield url


def monitoring_after(url: str, flights: int) -> dict[str, Any]:
    """/v1/monitoring once it counts `flights` (each worker exports within a second)."""
    deadline = time.monotonic() + 10
    while True:
        report = fresh().get(f"{url}/v1/monitoring", timeout=10).json()
        if report["predictions"]["flights"] >= flights or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


@pytest.mark.integration
def test_monitoring_counts_every_flight_sent_to_any_worker_of_the_pod(two_workers: str) -> None:
    flights, _source = embedded_sample()
    rows = flights.sample(2_400, random_state=16)  # airline is judged from 2,300 flights (23 values)
    body = [
        {"OPERA": airline, "TIPOVUELO": kind, "MES": int(month), "Fecha-I": scheduled}
        for airline, kind, month, scheduled in zip(
            rows["OPERA"],
            rows["TIPOVUELO"],
            rows["Fecha-I"].dt.month,
            rows["Fecha-I"].dt.strftime("%Y-%m-%d %H:%M"),
            strict=True,
        )
    ]
    batches = [body[i : i + 12] for i in range(0, len(body), 12)]

    def post(batch: list[dict[str, Any]]) -> list[float]:
        answer = fresh().post(f"{two_workers}/v1/prediction", json={"flights": batch}, timeout=30)
        assert answer.status_code == 200
        return [item["probability"] for item in answer.json()]

    with ThreadPoolExecutor(16) as pool:  # concurrent, so that both workers answer
        served = np.concatenate([np.array(p) for p in pool.map(post, batches)])
    report = monitoring_after(two_workers, len(body))
    assert report["predictions"]["flights"] == len(body)
    card = fresh().get(f"{two_workers}/v1/model").json()
    assert report["model"] == card["tag"] and report["reference"] == card["reference"]["held_out"]
    assert report["estimated"]["delay_rate"] == pytest.approx(served.mean(), abs=1e-4)
    assert {"airline", "international", "month", "hour", "destination"} <= set(report["drift"])
    airline = report["drift"]["airline"]
    columns = FlightColumns.from_flights([REQUESTS.flight.model_validate(flight) for flight in body], VOCABULARY)
    live = category_counts(encode(columns), VOCABULARY.monitored())[0][:-1].astype(float)
    expected = js_distance(live, np.array(card["reference"]["inputs"]["airline"][:-1], float))
    assert (airline["flights"], airline["min_flights"]) == (len(body), 2_300)
    assert airline["score"] == pytest.approx(expected, abs=1e-4)
    assert report["drift"]["destination"] == {
        "score": None,  # no flight gave SIGLADES: nothing to judge
        "threshold": 0.1,
        "drifted": None,
        "flights": 0,
        "missing": len(body),
        "min_flights": 6_200,
    }


def test_inputs_not_judged_by_design_report_no_count_rather_than_zero(client: httpx.Client) -> None:
    # minute_of_day and day_of_year are not counted: "flights": 0 read as no traffic after 210 flights
    assert client.post("/v1/prediction", json=EXAMPLE_REQUEST).status_code == 200
    drift = client.get("/v1/monitoring").json()["drift"]
    for name in ("minute_of_day", "day_of_year"):
        assert drift[name] == {"score": None, "threshold": 0.1, "drifted": None, "flights": None, "missing": None}
    assert isinstance(drift["hour"]["flights"], int)


def test_outcomes_with_monitoring_off_blame_no_header_in_their_404() -> None:
    # the 404 pointed its problem at the Authorization header, which was right
    body = json.loads(bytes(routes.refusal(404, MONITORING_OFF).body))
    assert body["detail"] == [{"type": "off", "loc": [], "msg": MONITORING_OFF}]


def small_monitor(tag: str) -> Monitor:
    """A Monitor of the session's model, as a worker builds it."""
    metadata: dict[str, Any] = dict(bentoml.models.get(tag).info.metadata)
    vocabulary = Vocabulary.from_metadata(metadata["vocabularies"])
    return Monitor(metadata["reference"], metadata["threshold"], tag, vocabulary)


def batch_of(monitor: Monitor, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and probabilities of `size` example flights."""
    flights = [REQUESTS.flight.model_validate(EXAMPLE_REQUEST["flights"][1])] * size
    return encode(FlightColumns.from_flights(flights, VOCABULARY)), np.full(size, 0.3)


@pytest.mark.filterwarnings("ignore:bentoml.metrics module is deprecated:DeprecationWarning")  # as the service uses it
def test_failed_export_is_counted_and_the_next_one_still_counts(
    trained_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor = small_monitor(trained_model)
    errors: list[int] = []
    monkeypatch.setattr(monitor.export_errors, "inc", lambda: errors.append(1))
    features, probabilities = batch_of(monitor, 5)
    original = monitor.export
    calls = []

    def failing_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bad pass")
        original()

    monitor.export = failing_once  # type: ignore[method-assign]
    monitor.count(features, probabilities)
    monitor.export_safely()
    assert monitor.exporter.is_alive()
    monitor.count(features, probabilities)
    monitor.close()
    assert len(calls) == 2 and errors == [1]
    assert monitor.pending == 0


@pytest.mark.filterwarnings("ignore:bentoml.metrics module is deprecated:DeprecationWarning")  # as the service uses it
def test_handed_over_flights_past_the_bound_are_dropped_and_counted(
    trained_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving import monitoring

    monkeypatch.setattr(monitoring, "MAX_PENDING_FLIGHTS", 8)
    monitor = small_monitor(trained_model)
    features, probabilities = batch_of(monitor, 5)
    dropped: list[int] = []
    monkeypatch.setattr(monitor.dropped, "inc", dropped.append)
    monitor.count(features, probabilities)
    monitor.count(features, probabilities)  # 10 would pass 8
    assert (monitor.pending, dropped) == (5, [5])
    monitor.close()
    assert monitor.pending == 0


@pytest.mark.filterwarnings("ignore:bentoml.metrics module is deprecated:DeprecationWarning")  # as the service uses it
def test_batches_in_the_buffer_and_past_it_are_all_counted_once(
    trained_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving import monitoring

    monkeypatch.setattr(monitoring, "BUFFER_FLIGHTS", 8)
    monitor = small_monitor(trained_model)
    monitor.closed.set()  # the test exports itself
    monitor.exporter.join(5)

    def counted() -> tuple[float, float]:
        """Flights and the sum of their probabilities in every probability bin so far."""
        return (
            sum(flights._value.get() for flights, _ in monitor.bin_children),
            sum(probability._value.get() for _, probability in monitor.bin_children),
        )

    before = counted()
    sizes = [5, 2, 5, 1, 3]  # 5 and 2 fit the buffer of 8, the next 5 does not, 1 does, 3 does not
    for size, probability in zip(sizes, [0.1, 0.2, 0.3, 0.4, 0.5], strict=True):
        features, _ = batch_of(monitor, size)
        monitor.count(features, np.full(size, probability))
    assert (monitor.buffered, len(monitor.batches), monitor.pending) == (8, 2, 16)
    monitor.export()
    flights, probabilities = (after - then for after, then in zip(counted(), before, strict=True))
    assert flights == 16
    assert probabilities == pytest.approx(5 * 0.1 + 2 * 0.2 + 5 * 0.3 + 1 * 0.4 + 3 * 0.5)
    assert (monitor.buffered, monitor.batches, monitor.pending) == (0, [], 0)
    features, _ = batch_of(monitor, 8)  # the buffer is reused after the export
    monitor.count(features, np.full(8, 0.6))
    assert (monitor.buffered, monitor.batches) == (8, [])
    monitor.export()
    assert counted()[0] - before[0] == 24


def test_report_made_in_a_thread_is_made_once_for_concurrent_callers() -> None:
    asyncio.run(report_cache_checks())


async def report_cache_checks() -> None:
    threads = []

    def compute() -> dict[str, Any]:
        threads.append(threading.current_thread())
        time.sleep(0.05)
        return {"n": len(threads)}

    recent: Recent[dict[str, Any]] = Recent(fresh_s=0.3)

    def make() -> Awaitable[dict[str, Any]]:  # as service.py makes GET /v1/monitoring
        return asyncio.to_thread(compute)

    first = await asyncio.gather(*(recent.get(make) for _ in range(10)))
    assert first == [{"n": 1}] * 10 and threads[0] is not threading.current_thread()
    assert await recent.get(make) == {"n": 1}
    await asyncio.sleep(0.35)
    assert await recent.get(make) == {"n": 2}
