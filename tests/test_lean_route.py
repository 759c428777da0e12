"""The lean path of POST /v1/prediction answers as BentoML's own path does, records the same metrics,
and sits where serving/lean_route.py says, on the BentoML internals it relies on."""

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import bentoml_serve
from test_service import varied_flights

from models.config import PREDICTION_ROUTES
from models.schema import EXAMPLE_REQUEST

pytestmark = pytest.mark.integration
ROUTE = PREDICTION_ROUTES[0]
BODIES: list[bytes | dict[str, Any]] = [  # what clients send: valid, invalid, broken, empty
    EXAMPLE_REQUEST,
    {"flights": varied_flights(300)},
    {"flights": [{"OPERA": "X", "TIPOVUELO": "N", "MES": 13}]},
    {"flights": []},
    {"flights": [{"OPERA": "Grupo LATAM", "TIPOVUELO": "N", "MES": 3, "Fecha-I": "2017-02-30 10:00"}]},
    b'{"flights":',
    b"",
    b"[1, 2]",
]


@pytest.fixture(scope="module")
def bentoml_path(trained_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A client of a second service with the lean route off: BentoML's own path answers /v1/prediction.

    bentoml_serve gives it a BENTOML_HOME of its own, with the session's model: BentoML keeps the
    Prometheus files of all workers there and clears them at start, which would blank the other
    service's /metrics.
    """
    log = tmp_path_factory.mktemp("bentoml-path") / "serve.log"
    with bentoml_serve(log, {"FLIGHT_DELAY_LEAN_ROUTE": "false"}) as (url, _), httpx.Client(base_url=url) as http:
        yield http


def post(client: httpx.Client, body: bytes | dict[str, Any]) -> httpx.Response:
    if isinstance(body, bytes):
        return client.post(ROUTE, content=body, headers={"content-type": "application/json"})
    return client.post(ROUTE, json=body)


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_lean_route_answers_exactly_as_bentoml_path(
    client: httpx.Client, bentoml_path: httpx.Client, body: bytes | dict[str, Any]
) -> None:
    lean, bentoml = post(client, body), post(bentoml_path, body)
    assert (lean.status_code, lean.json()) == (bentoml.status_code, bentoml.json())
    for header in ("content-type", "server"):
        assert lean.headers[header] == bentoml.headers[header]


def test_other_methods_on_the_route_still_go_through_bentoml(client: httpx.Client) -> None:
    response = client.get(ROUTE)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def samples(client: httpx.Client, name: str, **labels: str) -> list[float]:
    """Values of one metric's samples, over workers, whose labels include `labels`."""
    values = []
    for line in client.get("/metrics").text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            values.append(float(match.group(2)))
    return values


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """Sum over workers of one metric's samples whose labels include `labels`."""
    return sum(samples(client, name, **labels))


def test_lean_route_records_bentoml_request_and_batch_metrics(client: httpx.Client) -> None:
    counted = {"endpoint": ROUTE, "http_response_code": "200"}
    before = {
        "requests": metric(client, "bentoml_service_request_total", **counted),
        "durations": metric(client, "bentoml_service_request_duration_seconds_count", **counted),
        "refused": metric(client, "bentoml_service_request_total", endpoint=ROUTE, http_response_code="400"),
        "batched": metric(client, "bentoml_service_adaptive_batch_size_sum", method_name="predict_batch"),
    }
    for _ in range(5):
        assert post(client, EXAMPLE_REQUEST).status_code == 200
    assert post(client, {"flights": []}).status_code == 400
    assert metric(client, "bentoml_service_request_total", **counted) == before["requests"] + 5
    assert metric(client, "bentoml_service_request_duration_seconds_count", **counted) == before["durations"] + 5
    refused = metric(client, "bentoml_service_request_total", endpoint=ROUTE, http_response_code="400")
    assert refused == before["refused"] + 1
    batched = metric(client, "bentoml_service_adaptive_batch_size_sum", method_name="predict_batch")
    assert batched == before["batched"] + 5  # one request of the batch per call: the dispatcher saw each
    in_progress = samples(client, "bentoml_service_request_in_progress", endpoint=ROUTE)
    assert in_progress, "no in-progress gauge for the route: a zero would say nothing"
    assert sum(in_progress) == 0


def test_lean_route_sits_inside_the_guard_and_outside_bentoml_middlewares(trained_model: str) -> None:
    from _bentoml_impl.loader import load
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    from serving.guard import RequestGuard
    from serving.lean_route import PredictionRoute
    from serving.metrics import BoundedTrafficMetrics

    app = load("service:FlightDelay", standalone_load=True).to_asgi()  # as a BentoML worker builds it
    layers = [middleware.cls for middleware in app.user_middleware]
    assert layers[:3] == [RequestGuard, PredictionRoute, BoundedTrafficMetrics]  # in place of BentoML's own
    assert RunnerTrafficMetricsMiddleware not in layers and issubclass(
        BoundedTrafficMetrics, RunnerTrafficMetricsMiddleware
    )
    assert not {"TimeoutMiddleware", "OpenTelemetryMiddleware"} & {cls.__name__ for cls in layers}
    guard = app.build_middleware_stack().app  # inside Starlette's ServerErrorMiddleware
    assert isinstance(guard, RequestGuard) and isinstance(guard.app, PredictionRoute)
    assert guard.app.metrics_middleware is guard.app.app  # records through BentoML's own metric objects


def test_lean_route_is_off_when_a_middleware_it_skips_is_on() -> None:
    from models.config import Settings

    assert Settings().lean_route_applies()
    assert not Settings(lean_route=False).lean_route_applies()
    assert not Settings(access_log=True).lean_route_applies()
    assert not Settings(tracing_sample_rate=1.0, untraced_routes=[]).lean_route_applies()
    assert Settings(tracing_sample_rate=1.0).lean_route_applies()  # /v1/prediction is untraced by default
