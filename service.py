"""The flight-delay prediction service: the HTTP layer only (validate, batch, predict, respond)."""

import asyncio
import gc
import hashlib
import hmac
import os
from functools import cache
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from _bentoml_sdk.io_models import IORootModel  # BentoML's own base of list outputs; pinned version
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from models.config import MODEL_NAME, OUTCOMES_ROUTE, PREDICTION_ROUTES, BadSettingError, Settings
from models.features import FlightColumns, Vocabulary, encode
from models.predictor import DelayPredictor, ModelError, check_metadata
from models.schema import (
    EXAMPLE_OUTCOMES,
    EXAMPLE_REQUEST,
    ChallengeResponse,
    FlightList,
    Outcome,
    OutcomeRequest,
    Prediction,
    request_models,
)
from serving import connections
from serving.batching import cap_learned_wait
from serving.guard import RequestGuard, arrange_middlewares
from serving.idempotency import Claim, IdempotencyStore, usable_key
from serving.lean_route import PredictionRoute
from serving.metrics import Recent, cache_metrics_page
from serving.monitoring import Monitor, pod_report
from serving.prediction_log import PredictionLog

try:
    settings = Settings.from_environment()
    settings.make_log_dir()
except BadSettingError as exc:
    raise SystemExit(f"refusing to start: {exc}") from None
if settings.greedy_batching:
    cap_learned_wait()
# A batch of up to this many flights runs on the event loop; a larger one in a thread. Measured paired
# against the thread for every batch (docs/performance.md): open-loop p99 8.2 against 17.1 ms at
# 1,500 req/s and 47 against 84 ms at 2,700; closed-loop throughput unchanged. With 64, the reference
# load's batches ran on the loop too and closed-loop throughput fell to 0.89x.
INLINE_FLIGHTS = 8
CARD_METADATA = ("training_data", "metrics", "threshold", "features", "vocabularies", "reference")  # /v1/model
# The container's base. A distro BentoML does not know skips its apt-get of build-essential and
# git (633 MB of the image): every dependency installs from a wheel. bentofile.yaml's base_image wins.
IMAGE = bentoml.images.Image(base_image="python:3.11-slim", distro="debian-wheels-only")


def trained_model() -> tuple[bentoml.models.BentoModel, dict[str, Any]]:
    """The latest flight_delay model of the store and its metadata, or a one-line refusal to start that
    says how to fix it.

    Checked here, when the service is loaded, so `bentoml serve` exits at once instead of its
    workers failing and restarting forever.
    """
    model = bentoml.models.BentoModel(f"{MODEL_NAME}:latest")
    stored = model.stored
    if stored is None:  # BentoML would try BentoCloud next and fail with a puzzling message
        raise bentoml.exceptions.NotFound(f"no {MODEL_NAME} model in the BentoML store; train one first: make train")
    try:
        check_metadata(stored.info.metadata)
    except ModelError as exc:
        raise bentoml.exceptions.BentoMLException(f"refusing to serve {stored.tag}: {exc}") from None
    return model, dict(stored.info.metadata)


MODEL, METADATA = trained_model()
# The request bodies accept exactly the airlines and destinations of the model served, learned from
# its training data: validation, its 400s and the API document's enums all come from them.
VOCABULARY = Vocabulary.from_metadata(METADATA["vocabularies"])
REQUESTS = request_models(VOCABULARY.airlines, VOCABULARY.destinations)


async def health(_: Request) -> JSONResponse:
    """Liveness in the LATAM challenge's format."""
    return JSONResponse({"status": "OK"})


async def model_card(_: Request) -> JSONResponse:
    """What the service is running: tag, training data, metrics, threshold, vocabularies and the
    training distributions that live traffic is compared with."""
    return JSONResponse(bentoml.get_current_service().card)


async def outcomes(request: Request) -> JSONResponse | Response:
    """Flights that have left, with their real departure (Fecha-O): each is scored with the model this
    service runs and counted in the realized quality of GET /v1/monitoring. Flights of an airline or
    city the model does not know are not counted, and listed under `not_counted`; the others are.
    Needs `Authorization: Bearer <token>`, the token set in FLIGHT_DELAY_OUTCOMES_TOKEN. With an
    `Idempotency-Key` header, a retry with the same key and body is answered as the first and counts
    nothing again."""
    token = settings.outcomes_token
    if token is None:
        return refusal(403, "outcomes are off: set FLIGHT_DELAY_OUTCOMES_TOKEN (a Kubernetes Secret) to accept them")
    scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
    sent = credentials.strip().encode()
    if scheme.lower() != "bearer" or not sent or not hmac.compare_digest(sent, token.get_secret_value().encode()):
        return refusal(401, "send Authorization: Bearer <token>, the token of FLIGHT_DELAY_OUTCOMES_TOKEN")
    service = bentoml.get_current_service()
    if service.monitor is None:
        return refusal(404, "monitoring is off: FLIGHT_DELAY_MONITORING and FLIGHT_DELAY_METRICS")
    key = request.headers.get("idempotency-key")
    if key is not None and not usable_key(key):
        return problem(400, ["header", "Idempotency-Key"], "an Idempotency-Key is 1 to 255 printable ASCII characters")
    body = await request.body()
    try:
        flights = OutcomeRequest.model_validate_json(body).flights
    except ValidationError as exc:
        detail = exc.errors(include_context=False, include_input=False, include_url=False)
        return JSONResponse({"detail": detail}, 400)  # the guard writes the error body every 400 has
    if key is None:
        return JSONResponse(await run_in_threadpool(service.count_outcomes, flights))
    store = idempotency_store()
    claim, answer = await run_in_threadpool(store.claim, key, hashlib.sha256(body).hexdigest())
    if claim is Claim.DONE:
        assert answer is not None
        return Response(answer, media_type="application/json", headers={"idempotent-replayed": "true"})
    if claim is Claim.BUSY:
        return problem(409, ["header", "Idempotency-Key"], "a request with this key is being answered; retry later")
    if claim is Claim.OTHER_BODY:
        return problem(422, ["header", "Idempotency-Key"], "this key was used with another body")
    try:
        response = JSONResponse(await run_in_threadpool(service.count_outcomes, flights))
    except BaseException:
        await run_in_threadpool(store.release, key)
        raise
    await run_in_threadpool(store.finish, key, bytes(response.body))
    return response


@cache
def idempotency_store() -> IdempotencyStore:
    """The server's store of outcome answers by key: one SQLite file beside its Prometheus files,
    shared by its workers and cleared with them at the server's start."""
    return IdempotencyStore(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]) / "idempotency.sqlite")


def problem(status: int, loc: list[str], message: str) -> JSONResponse:
    """An error of the outcomes route with one problem; the guard gives it the body every error has."""
    return JSONResponse({"detail": [{"type": "idempotency", "loc": loc, "msg": message}]}, status)


def refusal(status: int, message: str) -> JSONResponse:
    """A refused request to the outcomes route; a 401 names the scheme it wants (RFC 6750)."""
    headers = {"WWW-Authenticate": 'Bearer realm="flight-delay outcomes"'} if status == 401 else None
    detail = [{"type": "auth" if status < 404 else "off", "loc": ["header", "Authorization"], "msg": message}]
    return JSONResponse({"detail": detail}, status, headers=headers)


async def monitoring(_: Request) -> JSONResponse:
    """This pod's predictions since its workers started (all workers): each input's drift from the
    training data and the quality expected from the probabilities. A null score: fewer than 1,000
    flights with that input so far, or an input not judged by design (docs/monitoring.md)."""
    if not settings.monitoring or not settings.metrics:
        return JSONResponse({"error": "monitoring is off: FLIGHT_DELAY_MONITORING and FLIGHT_DELAY_METRICS"}, 404)
    card = bentoml.get_current_service().card  # pod_report reads every worker's metric files: in a thread
    return JSONResponse(await recent_report().get(lambda: asyncio.to_thread(pod_report, card)))


@cache
def recent_report() -> Recent[dict[str, Any]]:
    """This worker's GET /v1/monitoring, made at most once per FLIGHT_DELAY_METRICS_PAGE_S."""
    return Recent(settings.metrics_page_s)


# The service's own API page, at / and /docs, instead of BentoML's (a page titled with the bento
# name, "This is a Machine Learning Service created with BentoML", badges and a Google Tag Manager
# frame loaded from the internet). It runs the Swagger UI that BentoML 1.4.40 ships and serves
# under /static_content (an internal path, pinned by tests/test_api_page.py), so nothing loads
# from another host; validatorUrl null keeps Swagger UI from calling validator.swagger.io.
API_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Flight delay at SCL: API</title>
  <link rel="icon" type="image/png" href="/static_content/favicon-light-32x32.png">
  <link rel="stylesheet" href="/static_content/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/static_content/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/docs.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout",
    });
  </script>
</body>
</html>
"""
API_DESCRIPTION = """Will a flight leave Santiago de Chile (SCL) more than 15 minutes late?

`POST /v1/prediction` answers, for each flight, `delay` (0 or 1) and `probability`, the calibrated
chance of a delay over 15 minutes. `POST /predict` is the LATAM challenge's contract (labels only).
A flight needs `OPERA`, `TIPOVUELO` and `MES`; `Fecha-I` and `SIGLADES` sharpen the prediction.
Invalid input is answered with 400 and a `detail` naming each field; `GET /v1/model` lists the
accepted airlines and cities, the model's metrics and its threshold. The version above is the tag
of the model this service is running."""


MONITORING_EXAMPLE = {  # the shape of GET /v1/monitoring for the API page: one input of seven, after 1,200 flights
    "model": "flight_delay:<version>",
    "predictions": {"flights": 1200, "since": "2026-12-03T08:47:38.048942+00:00"},
    "drift": {
        "airline": {
            "score": None,
            "threshold": 0.1,
            "drifted": None,
            "flights": 1200,
            "missing": 0,
            "min_flights": 2300,
        }
    },
    "estimated": {
        "delay_rate": 0.1876,
        "brier": 0.1346,
        "roc_auc": 0.7251,
        "precision": 0.3097,
        "recall": 0.6713,
        "f1": 0.4238,
    },
    "outcomes": {"flights": 0, "delay_rate": None, "brier": None, "calibration_error": None, "roc_auc": None},
    "reference": {"delay_rate": 0.1812, "brier": 0.1327, "roc_auc": 0.7154},
    "refused": {"airline": 0, "destination": 0},
}


async def api_page(_: Request) -> HTMLResponse:
    """The API page: Swagger UI over this service's own OpenAPI document."""
    return HTMLResponse(API_PAGE)


async def api_spec(_: Request) -> Response:
    """The OpenAPI document of the service, named after it and its model, with its GET routes."""
    return Response(openapi_bytes(), media_type="application/json")


@cache
def openapi_bytes() -> bytes:
    """The document as sent, made once per worker: a flood of /docs.json costs no JSON encoding each."""
    return bytes(JSONResponse(openapi_document()).body)


@cache
def openapi_document() -> dict[str, Any]:
    """BentoML's generated document of the prediction routes, with the service's own title,
    description and version (the model's tag), and /health and /v1/model, which BentoML leaves out.

    Built once per worker: it depends only on the code and the model the worker loaded."""
    card = bentoml.get_current_service().card
    spec: dict[str, Any] = FlightDelay.openapi_spec.asdict()  # type: ignore[attr-defined]  # a Service, typed as the class
    spec["info"] = {"title": "Flight delay at SCL", "version": card["tag"], "description": API_DESCRIPTION}
    spec.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    del spec["servers"]  # BentoML's "." shows as a one-choice server menu; without it, the page's own origin
    app_tag = spec["tags"][0]  # BentoML's tag of the service's own routes
    app_tag["description"] = "Predictions, and what the service is running."
    paths = spec.pop("paths")
    for route in PREDICTION_ROUTES:
        body = paths[route]["post"]["requestBody"]["content"]["application/json"]
        body["example"] = EXAMPLE_REQUEST  # the same example as the README and the tests
    paths["/health"] = {"get": get_operation(health, app_tag["name"], {"status": "OK"})}
    paths["/v1/model"] = {"get": get_operation(model_card, app_tag["name"], card)}
    paths["/v1/monitoring"] = {"get": get_operation(monitoring, app_tag["name"], MONITORING_EXAMPLE)}
    paths[OUTCOMES_ROUTE] = {"post": outcomes_operation(app_tag["name"])}
    public = [*PREDICTION_ROUTES, OUTCOMES_ROUTE, "/health", "/v1/model", "/v1/monitoring"]  # the README's order
    spec["paths"] = {**{route: paths.pop(route) for route in public}, **paths}
    return spec


def outcomes_operation(tag: str) -> dict[str, Any]:
    """The OpenAPI POST operation of the outcomes route, with its body's schema, example and bearer token."""
    return {
        "tags": [tag],
        "description": outcomes.__doc__,
        "operationId": "flight_delay__outcomes",
        "security": [{"bearer": []}],
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "A key of the request (1 to 255 printable ASCII characters): a retry with the same key "
                "and body within 24 h is answered as the first and counts nothing again.",
                "schema": {"type": "string", "maxLength": 255},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": OutcomeRequest.model_json_schema(),
                    "example": EXAMPLE_OUTCOMES,
                }
            },
        },
        "responses": {
            "200": {
                "description": "Counted",
                "content": {
                    "application/json": {
                        "example": {"model": "flight_delay:<version>", "flights": 1, "delayed": 1, "not_counted": []}
                    }
                },
            },
            "400": {"description": "Invalid flights, each problem named"},
            "401": {"description": "Missing or wrong token"},
            "403": {"description": "Outcomes are off: no token is configured"},
            "409": {"description": "A request with this Idempotency-Key is being answered"},
            "422": {"description": "This Idempotency-Key was used with another body"},
        },
    }


def get_operation(endpoint: Any, tag: str, example: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI GET operation answering JSON, described by the endpoint's docstring."""
    return {
        "tags": [tag],
        "description": endpoint.__doc__,
        "operationId": f"flight_delay__{endpoint.__name__}",
        "responses": {"200": {"description": "OK", "content": {"application/json": {"example": example}}}},
    }


class PredictionList(IORootModel[list[Prediction]]):
    """Response of /v1/prediction: one Prediction per flight, in request order.

    Declaring the media type spares BentoML from building this type's JSON schema again for
    every response to find it (a quarter of a worker's CPU time under load, measured with py-spy).
    """

    media_type = "application/json"


# Mounted before BentoML's own routes, so /, /docs and /docs.json here take the place of BentoML's.
PLAIN_ROUTES = [
    Route("/health", health),
    Route("/v1/model", model_card),
    Route("/v1/monitoring", monitoring),
    Route(OUTCOMES_ROUTE, outcomes, methods=["POST"]),
    Route("/", api_page),
    Route("/docs", api_page),
    Route("/docs.json", api_spec),
]
plain_routes = Starlette(routes=list(PLAIN_ROUTES))


@bentoml.asgi_app(plain_routes, path="/")
@bentoml.service(
    name="flight_delay",
    image=IMAGE,
    workers=settings.workers,
    resources={"cpu": "2"},
    traffic={"timeout": settings.timeout_s},
    logging={"access": {"enabled": settings.access_log}},
    metrics={"enabled": settings.metrics},
    tracing={"sample_rate": settings.tracing_sample_rate, "excluded_urls": settings.untraced_routes},
)
class FlightDelay:
    """Answers "will this flight leave SCL more than 15 minutes late?" for batches of flights."""

    model = MODEL

    def __init__(self) -> None:
        info = self.model.info
        self.predictor = DelayPredictor.load(self.model.path, info.metadata)
        self.monitor = (
            Monitor(info.metadata["reference"], self.predictor.threshold, str(info.tag), self.predictor.vocabulary)
            if settings.monitoring and settings.metrics
            else None
        )
        if settings.gc_freeze:
            gc.freeze()  # libraries and model live as long as the worker: keep them out of every collection
        self.card: dict[str, Any] = {
            "tag": str(info.tag),
            "created_at": info.creation_time.isoformat(),
            **{key: info.metadata[key] for key in CARD_METADATA},
        }
        if source := self.card["training_data"].get("source"):  # models trained before 2026-12-04 kept the path
            self.card["training_data"] = {**self.card["training_data"], "source": Path(source).name or source}

    @bentoml.on_shutdown
    def flush_monitoring(self) -> None:
        """Count what the export thread has not counted yet, so a stop loses no prediction's counts."""
        if self.monitor is not None:
            self.monitor.close()

    @bentoml.api(
        route=PREDICTION_ROUTES[0],
        batchable=settings.batching,
        max_batch_size=settings.max_batch_size,
        max_latency_ms=settings.max_latency_ms,
        input_spec=REQUESTS.prediction_request,
        output_spec=PredictionList,
    )
    async def predict_batch(self, flights: FlightList) -> list[Prediction]:
        """Delay label and probability for each flight, in request order. Concurrent requests are batched."""
        # A small batch runs on the event loop: handing it to a thread and back costs more than the batch.
        # A large one goes to a thread, where ONNX Runtime releases the GIL, so the loop goes on reading
        # requests meanwhile (and accepting connections under overload).
        if len(flights) <= INLINE_FLIGHTS:
            return self.answers(flights)
        return await run_in_threadpool(self.answers, flights)

    def answers(self, flights: FlightList) -> list[Prediction]:
        """The batch's answers: encode, predict, count, label."""
        probabilities = self.probabilities(flights)
        labels = self.predictor.labels(probabilities)
        return [
            Prediction(delay=label, probability=p)
            for label, p in zip(labels.tolist(), probabilities.tolist(), strict=True)
        ]

    @bentoml.api(route=PREDICTION_ROUTES[1], input_spec=REQUESTS.prediction_request)
    def predict(self, flights: FlightList) -> ChallengeResponse:
        """The LATAM challenge's contract: one 0/1 label per flight under "predict"."""
        labels = self.predictor.labels(self.probabilities(flights))
        return ChallengeResponse(predict=labels.tolist())

    def count_outcomes(self, flights: list[Outcome]) -> dict[str, Any]:
        """Score flights that have left and count them against their outcomes, but for those of an airline
        or city the model does not know: the answer of POST /v1/outcomes."""
        assert self.monitor is not None  # the route checks it first
        vocabulary = self.predictor.vocabulary
        known = {"OPERA": vocabulary.airline_code, "SIGLADES": vocabulary.destination_code}
        not_counted = [
            {"index": index, "loc": ["flights", index, field], "msg": f"{value!r} is not one the model learned"}
            for index, flight in enumerate(flights)
            for field, value in (("OPERA", flight.OPERA), ("SIGLADES", flight.SIGLADES))
            if value is not None and value not in known[field]
        ]
        skipped = {problem["index"] for problem in not_counted}
        counted = [flight for index, flight in enumerate(flights) if index not in skipped]
        delayed = np.array([flight.delayed for flight in counted], dtype=np.float64)
        if counted:
            features = encode(FlightColumns.from_flights(counted, vocabulary))
            self.monitor.count_outcomes(features, self.predictor.scores(features), delayed)
        return {
            "model": self.card["tag"],
            "flights": len(counted),
            "delayed": int(delayed.sum()),
            "not_counted": not_counted,
        }

    def probabilities(self, flights: FlightList) -> np.ndarray:
        """Encode, predict and count a batch (the counts feed /v1/monitoring and /metrics)."""
        features = encode(FlightColumns.from_flights(flights, self.predictor.vocabulary))
        probabilities = self.predictor.scores(features)
        if self.monitor is not None:
            self.monitor.count(features, probabilities)
        return probabilities


guard_errors = bentoml.metrics.Counter(
    name="guard_error_responses",
    documentation="Error responses the request guard sent itself (413, 415, 503, 504), by status",
    labelnames=["status"],
)
connections_closed = bentoml.metrics.Counter(
    name="connections_closed",
    documentation="Connections the worker closed itself, by reason: idle, request_deadline (408), "
    "send_deadline (an answer its client did not read), unsent_bytes (the worker's bound on unread answers), "
    "evicted or refused (at the connection cap)",
    labelnames=["reason"],
)
log_drops = bentoml.metrics.Counter(
    name="prediction_log_dropped_requests",
    documentation="Sampled requests the prediction log could not keep, by reason: queue_full or write_error",
    labelnames=["reason"],
)


def prediction_log() -> PredictionLog | None:
    """This worker's prediction log, opened at its start; None when FLIGHT_DELAY_LOG_SAMPLE is 0."""
    if not settings.log_sample:
        return None
    return PredictionLog(
        settings.log_dir,
        settings.log_sample,
        model=str(MODEL.tag),
        worker=bentoml.server_context.worker_index or 0,
        max_bytes=settings.log_max_mb * 1_048_576,
        on_drop=lambda reason: log_drops.labels(reason=reason).inc(),
    )


UNKNOWN_INPUTS = {"OPERA": "airline", "SIGLADES": "destination"}  # the fields whose values the model learned
unknown_values = bentoml.metrics.Counter(
    name="flight_delay_unknown_values",
    documentation="Values of OPERA or SIGLADES refused (400) because the served model did not learn them, "
    "by model and input (airline, destination)",
    labelnames=["model", "input"],
)


def count_unknown_values(problems: list[dict[str, Any]]) -> None:
    """Count each airline or city of a 400 that the model does not know: flights drift never sees."""
    for problem in problems:
        field = (problem.get("loc") or [None])[-1]
        if problem.get("type") == "literal_error" and field in UNKNOWN_INPUTS:
            unknown_values.labels(model=str(MODEL.tag), input=UNKNOWN_INPUTS[field]).inc()


connections.install(
    connections.Limits(
        idle_s=settings.idle_timeout_s,
        request_s=settings.request_timeout_s,
        max_connections=settings.max_connections,
        on_close=lambda reason: connections_closed.labels(reason=reason).inc(),
        send_s=settings.send_timeout_s,
        max_unsent_bytes=settings.max_unsent_mb * 1_048_576,
    )
)
cache_metrics_page(settings.metrics_page_s)
BENTOML_ROUTES = ("/livez", "/healthz", "/readyz", "/schema.json")  # BentoML's own (/metrics is not counted)
arrange_middlewares(
    tracing=settings.tracing_sample_rate > 0,
    metric_routes=frozenset([*PREDICTION_ROUTES, *(route.path for route in PLAIN_ROUTES), *BENTOML_ROUTES]),
    inner=(PredictionRoute, {"route": PREDICTION_ROUTES[0], "api_name": "predict_batch"})
    if settings.lean_route_applies()
    else None,
)
FlightDelay.add_asgi_middleware(  # type: ignore[attr-defined]  # the decorator returns a Service; its typing says class
    RequestGuard,
    routes=(*PREDICTION_ROUTES, OUTCOMES_ROUTE),
    max_body_bytes=settings.max_body_bytes,
    max_in_flight=settings.max_in_flight,
    max_bytes_in_flight=settings.max_bytes_in_flight,
    shed_after_s=settings.shed_after_ms / 1000,
    timeout_s=settings.timeout_s,
    on_error_response=lambda status: guard_errors.labels(status=str(status)).inc(),
    on_invalid=count_unknown_values,
    prediction_log=prediction_log,
)
