"""SIGTERM: under load, every request the service accepted is answered and received, and it exits in
time; and nothing it answered is lost, each flight in the prediction log and in the monitoring counts.

Each scenario is one two-worker service (each worker drains its own); the two tests of nothing lost
read what one stop left (a start costs about 4 s of CPU)."""

import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers import bentoml_serve, log_records

from loadtest.client import BackgroundLoad
from models.config import MODEL_NAME
from models.schema import EXAMPLE_OUTCOMES, EXAMPLE_REQUEST
from serving.layer import shutdown_counts

pytestmark = pytest.mark.integration

EXIT_DEADLINE_S = 10
CONNECTIONS = 50
TOKEN = "test-token-not-a-secret"
OUTCOME_POSTS = 20
FLIGHTS = len(EXAMPLE_REQUEST["flights"])


@pytest.mark.usefixtures("trained_model")
def test_sigterm_under_load_answers_every_accepted_request_and_exits_in_time(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with bentoml_serve(log, {"FLIGHT_DELAY_WORKERS": "2"}) as (url, process):
        load = BackgroundLoad(f"{url}/v1/prediction", CONNECTIONS, EXAMPLE_REQUEST)
        time.sleep(1.5)  # every connection in a request by then: SIGTERM meets them in flight
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=EXIT_DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_DEADLINE_S} s after SIGTERM")
        seconds_to_exit = time.monotonic() - signalled
        time.sleep(0.5)  # let the clients read what was already sent to them
        outcomes = load.stop()
    text = log.read_text()
    workers = shutdown_counts(text)
    received = sum(n for outcome, n in outcomes.items() if outcome.isdigit())

    assert process.returncode == 0, text[-3000:]
    assert seconds_to_exit < EXIT_DEADLINE_S
    assert len(workers) == text.count("Service flight_delay initialized"), "a worker did not log its shutdown"
    assert [worker["cut"] for worker in workers] == [0] * len(workers)
    assert sum(worker["answered"] for worker in workers) == received > 0
    assert outcomes["200"] == received, outcomes
    assert outcomes["cut"] == outcomes["timed out"] == 0


@dataclass(frozen=True)
class Stopped:
    """What one SIGTERM right after answering left: the service's directory (its prediction log and
    metric files) and the answers of every request sent."""

    directory: Path
    answers: dict[str, httpx.Response]  # the single requests, by what they show
    predictions: list[httpx.Response]
    outcomes: list[httpx.Response]  # sent last, right before the SIGTERM


@pytest.fixture(scope="module")
def stopped(trained_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stopped]:
    """A two-worker service logging every request, sent requests of each kind one after another and
    SIGTERMed at once after the last answer."""
    directory = tmp_path_factory.mktemp("sigterm")
    env = {"FLIGHT_DELAY_WORKERS": "2", "FLIGHT_DELAY_LOG_SAMPLE": "1", "FLIGHT_DELAY_OUTCOMES_TOKEN": TOKEN}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with bentoml_serve(directory / "serve.log", env) as (url, process), httpx.Client(base_url=url) as http:
        keyed = {**auth, "Idempotency-Key": "outcomes-1"}
        answers = {
            "outcome": http.post("/v1/outcomes", json=EXAMPLE_OUTCOMES, headers=keyed),
            "replayed": http.post("/v1/outcomes", json=EXAMPLE_OUTCOMES, headers=keyed),
            "logged": http.post("/v1/prediction", json=EXAMPLE_REQUEST, headers={"X-Request-ID": "client-id.1"}),
            "invented": http.post("/predict", json=EXAMPLE_REQUEST, headers={"X-Request-ID": "not a <token>"}),
            "refused": http.post("/v1/prediction", json={"flights": [{"OPERA": "Nope"}]}),
        }
        predictions = [http.post("/v1/prediction", json=EXAMPLE_REQUEST) for _ in range(200)]
        answers["metrics"] = http.get("/metrics")
        outcomes = [http.post("/v1/outcomes", json=EXAMPLE_OUTCOMES, headers=auth) for _ in range(OUTCOME_POSTS)]
        process.send_signal(signal.SIGTERM)  # at once
        process.wait(30)
    yield Stopped(directory, answers, predictions, outcomes)


def test_service_logs_every_flight_answered_by_its_workers_even_across_sigterm(
    trained_model: str, stopped: Stopped
) -> None:
    answers = stopped.answers
    assert (answers["outcome"].status_code, answers["replayed"].headers["idempotent-replayed"]) == (200, "true")
    assert answers["logged"].headers["x-request-id"] == "client-id.1"
    assert len(answers["invented"].headers["x-request-id"]) == 32
    assert answers["refused"].status_code == 400 and "x-request-id" not in answers["refused"].headers
    dropped = [line for line in answers["metrics"].text.splitlines() if line.startswith("prediction_log_dropped")]
    assert dropped and all(line.endswith(" 0.0") for line in dropped), dropped  # no write_error: every route is written
    written = log_records(stopped.directory / "prediction-log")
    outcomes = [record for record in written if record["route"] == "/v1/outcomes"]
    assert [record["request_id"] for record in outcomes] == [  # the replay is not logged
        answer.headers["x-request-id"] for answer in (answers["outcome"], *stopped.outcomes)
    ]
    assert outcomes[0]["Fecha-O"] == EXAMPLE_OUTCOMES["flights"][0]["Fecha-O"] and outcomes[0]["counted"]
    written = [record for record in written if record["route"] != "/v1/outcomes"]
    assert len(written) == (2 + len(stopped.predictions)) * FLIGHTS  # the 400 is not logged
    assert {record["model"] for record in written} == {trained_model}
    assert len({path.name for path in (stopped.directory / "prediction-log" / MODEL_NAME / "data").iterdir()}) == 2
    by_id = {record["request_id"]: record for record in written}
    assert by_id["client-id.1"]["probability"] == answers["logged"].json()[-1]["probability"]
    assert by_id[answers["invented"].headers["x-request-id"]]["route"] == "/predict"
    assert {answer.headers["x-request-id"] for answer in stopped.predictions} <= set(by_id)


def test_counts_of_answered_requests_survive_an_immediate_sigterm(stopped: Stopped) -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    assert {answer.status_code for answer in stopped.predictions + stopped.outcomes} == {200}
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(stopped.directory / "bentoml-home" / "prometheus_multiproc_dir"))
    totals: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    predicted = (2 + len(stopped.predictions)) * FLIGHTS  # both prediction routes count
    assert totals["flight_delay_probability_bin_flights_total"] == predicted
    outcome_flights = len(EXAMPLE_OUTCOMES["flights"])
    assert totals["flight_delay_outcome_flights_total"] == (1 + OUTCOME_POSTS) * outcome_flights  # the replay once
