"""The HTTP contract, checked through the service's ASGI app in this process (or FLIGHT_DELAY_URL);
batching of concurrent requests against a served process.

Every refused input is in test_bad_input.py."""

import asyncio
import os
import re
import time
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import REQUESTS, VOCABULARY, varied_flights

from models.config import MAX_FLIGHTS
from models.features import FlightColumns
from models.predictor import MAX_PROBABILITY_GAP, DelayPredictor
from models.schema import EXAMPLE_REQUEST


def test_prediction_answers_each_flight_in_order(client: httpx.Client) -> None:
    response = client.post("/v1/prediction", json=EXAMPLE_REQUEST)
    assert response.status_code == 200, response.text
    answers = response.json()
    assert len(answers) == len(EXAMPLE_REQUEST["flights"])
    for answer in answers:
        assert set(answer) == {"delay", "probability"}
        assert answer["delay"] in (0, 1)
        assert 0 <= answer["probability"] <= 1
    alone = [client.post("/v1/prediction", json={"flights": [f]}).json()[0] for f in EXAMPLE_REQUEST["flights"]]
    assert answers == alone


def test_prediction_delay_label_follows_served_threshold(client: httpx.Client) -> None:
    threshold = client.get("/v1/model").json()["threshold"]
    for answer in client.post("/v1/prediction", json={"flights": varied_flights(300)}).json():
        assert answer["delay"] == int(answer["probability"] >= threshold)


def test_prediction_larger_than_batch_limit_is_answered_whole(client: httpx.Client) -> None:
    flights = varied_flights(MAX_FLIGHTS)
    answers = client.post("/v1/prediction", json={"flights": flights}).json()
    assert len(answers) == MAX_FLIGHTS
    singles = [client.post("/v1/prediction", json={"flights": [f]}).json()[0] for f in flights[:: MAX_FLIGHTS // 20]]
    assert answers[:: MAX_FLIGHTS // 20] == singles


def test_prediction_is_the_trained_models_own_probability(client: httpx.Client, request: pytest.FixtureRequest) -> None:
    """The service serves the model train.py saved, and answers with its offline probabilities and labels."""
    if os.environ.get("FLIGHT_DELAY_URL"):
        pytest.skip("the service at FLIGHT_DELAY_URL serves a model that is not in this test store")
    import bentoml

    trained = bentoml.models.get(request.getfixturevalue("trained_model"))
    assert client.get("/v1/model").json()["tag"] == str(trained.tag)
    offline = DelayPredictor.load(trained.path, trained.info.metadata)  # as service.py loads it
    flights = varied_flights(300)
    validated = [REQUESTS.flight.model_validate(f) for f in flights]
    probabilities = offline.probabilities(FlightColumns.from_flights(validated, offline.vocabulary))
    served = client.post("/v1/prediction", json={"flights": flights}).json()
    assert np.abs(np.array([answer["probability"] for answer in served]) - probabilities).max() <= MAX_PROBABILITY_GAP
    assert [answer["delay"] for answer in served] == offline.labels(probabilities).tolist()


def test_predict_challenge_route_returns_labels(client: httpx.Client) -> None:
    flights = varied_flights(50)
    response = client.post("/predict", json={"flights": flights})
    assert response.status_code == 200, response.text
    labels = response.json()["predict"]
    expected = [a["delay"] for a in client.post("/v1/prediction", json={"flights": flights}).json()]
    assert labels == expected


def test_health_is_ok(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "OK"}


def test_model_card_describes_the_served_model(client: httpx.Client) -> None:
    card = client.get("/v1/model").json()
    assert card["tag"].startswith("flight_delay:")
    assert re.fullmatch(r"[0-9a-f]{64}", card["training_data"]["sha256"])
    assert card["training_data"]["rows"] > 0
    source = card["training_data"]["source"]  # the file's name, not the training machine's path
    assert "/" not in source and (os.environ.get("FLIGHT_DELAY_URL") or source == "sample.csv")
    assert 0 < card["threshold"] < 1
    assert set(card["metrics"]) == {"required_only", "all_fields"}
    assert card["vocabularies"] == VOCABULARY.metadata()  # learned from the sample: the 2017 data's lists
    assert card["created_at"]


def test_an_unknown_path_or_method_gets_the_json_error_body(client: httpx.Client) -> None:
    missing = client.post("/v1/predictions", json=EXAMPLE_REQUEST)
    assert (missing.status_code, missing.json()) == (404, {"error": "not found", "detail": []})
    assert missing.headers["content-type"] == "application/json"
    wrong = client.delete("/health")
    assert (wrong.status_code, wrong.json()) == (405, {"error": "method not allowed", "detail": []})
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD"}


def test_monitoring_off_is_a_404_that_says_so() -> None:
    from starlette.testclient import TestClient

    from serving.routes import plain_app
    from serving.settings import MONITORING_OFF, Settings

    with TestClient(plain_app(None, Settings(monitoring=False))) as http:
        answer = http.get("/v1/monitoring")
    assert answer.status_code == 404
    assert answer.json() == {"error": "not found", "detail": [{"type": "off", "loc": [], "msg": MONITORING_OFF}]}


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics"])
def test_bentoml_system_routes_stay(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 200


def test_every_close_and_drop_reason_is_a_series_from_the_start(client: httpx.Client) -> None:
    from serving.connections import CLOSE_REASONS
    from serving.prediction_log import DROP_REASONS

    page = client.get("/metrics").text
    expected = [f'connections_closed_total{{reason="{reason}"}}' for reason in CLOSE_REASONS]
    expected += [f'prediction_log_dropped_requests_total{{reason="{reason}"}}' for reason in DROP_REASONS]
    assert [series for series in expected if series not in page] == []


def test_docs_example_is_the_shared_example(client: httpx.Client) -> None:
    schema = client.get("/docs.json").json()
    body = schema["paths"]["/v1/prediction"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["flights"]["example"] == EXAMPLE_REQUEST["flights"]


# A service started elsewhere (FLIGHT_DELAY_URL: the container test) makes its /metrics page at most
# once a second (FLIGHT_DELAY_METRICS_PAGE_S); the tests' own services make one per request.
PAGE_WAIT_S = 1.1 if os.environ.get("FLIGHT_DELAY_URL") else 0.0


def metric(client: httpx.Client, name: str, label: str = "") -> float:
    """Sum of a /metrics series over its label sets (those containing label) and workers, from a page
    made after the call."""
    time.sleep(PAGE_WAIT_S)
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in client.get("/metrics").text.splitlines()
        if line.startswith(name + "{") and label in line
    )


def adaptive_batch_count(client: httpx.Client) -> tuple[float, float]:
    """(batches, flights) that BentoML's adaptive batching ran so far, summed over workers."""
    return (
        metric(client, "bentoml_service_adaptive_batch_size_count"),
        metric(client, "bentoml_service_adaptive_batch_size_sum"),
    )


def test_refusals_are_counted_by_the_guard_before_bentoml_sees_them(client: httpx.Client) -> None:
    assert client.post("/v1/prediction", json=EXAMPLE_REQUEST).status_code == 200
    # BentoML's request counter exists and counts, so its zero below means "not seen", not "not found"
    assert metric(client, "bentoml_service_request_total", 'http_response_code="200"') > 0
    before = metric(client, "guard_error_responses_total", 'status="415"')
    refused = client.post("/v1/prediction", content=b"x", headers={"content-type": "text/plain"})
    assert refused.status_code == 415
    assert metric(client, "guard_error_responses_total", 'status="415"') == before + 1
    assert metric(client, "bentoml_service_request_total", 'http_response_code="415"') == 0, "guard not outermost"


@pytest.mark.integration
def test_concurrent_requests_are_batched_and_answered_as_alone(served_client: httpx.Client, service_url: str) -> None:
    client = served_client
    flights = varied_flights(240)
    alone = [client.post("/v1/prediction", json={"flights": [f]}).json() for f in flights]
    batches_before, flights_before = adaptive_batch_count(client)

    async def all_at_once() -> list[Any]:
        limits = httpx.Limits(max_connections=len(flights))
        async with httpx.AsyncClient(base_url=service_url, limits=limits, timeout=60) as http:
            responses = await asyncio.gather(*(http.post("/v1/prediction", json={"flights": [f]}) for f in flights))
        assert all(r.status_code == 200 for r in responses)
        return [r.json() for r in responses]

    together = asyncio.run(all_at_once())
    assert together == alone
    batches, batched_flights = adaptive_batch_count(client)
    assert batched_flights - flights_before == len(flights)
    assert batches - batches_before < len(flights), "no two concurrent requests shared a batch"
