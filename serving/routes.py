"""The routes of the service that are not BentoML APIs: liveness, the model card, monitoring, outcomes
and the API page. Mounted before BentoML's own routes, so /, /docs and /docs.json here take the place
of BentoML's."""

import asyncio
import hashlib
import hmac
from functools import cache
from typing import Any

import bentoml
import numpy as np
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from models.features import FlightColumns, encode
from models.schema import Outcome, OutcomeRequest
from serving import api_page
from serving.idempotency import Claim, IdempotencyStore, usable_key
from serving.internals import multiprocess_dir
from serving.metrics import Recent
from serving.monitoring import pod_report
from serving.settings import MONITORING_OFF, OUTCOMES_ROUTE, Settings


async def health(_: Request) -> JSONResponse:
    """Liveness in the LATAM challenge's format."""
    return JSONResponse({"status": "OK"})


async def model_card(_: Request) -> JSONResponse:
    """What the service is running: tag, training data, metrics, threshold, vocabularies and the
    training distributions that live traffic is compared with."""
    return JSONResponse(bentoml.get_current_service().card)


async def monitoring(request: Request) -> JSONResponse:
    """This pod's predictions since its workers started (all workers): each input's drift from the
    training data and the quality expected from the probabilities. A null score: fewer than 1,000
    flights with that input so far, or an input not judged by design (docs/monitoring.md)."""
    settings: Settings = request.app.state.settings
    if not settings.monitoring or not settings.metrics:
        return JSONResponse({"error": "not found", "detail": [{"type": "off", "loc": [], "msg": MONITORING_OFF}]}, 404)
    service = bentoml.get_current_service()  # pod_report reads every worker's metric files: in a thread
    recent: Recent[dict[str, Any]] = request.app.state.monitoring_report
    return JSONResponse(await recent.get(lambda: asyncio.to_thread(pod_report, service.card, service.challenger_card)))


async def outcomes(request: Request) -> JSONResponse | Response:
    """Flights that have left, with their real departure (Fecha-O): each is scored with the model this
    service runs and counted in the realized quality of GET /v1/monitoring. Flights of an airline or
    city the model does not know are not counted, and listed under `not_counted`; the others are.
    Needs `Authorization: Bearer <token>`, the token set in FLIGHT_DELAY_OUTCOMES_TOKEN. With an
    `Idempotency-Key` header, a retry with the same key and body is answered as the first and counts
    nothing again."""
    token = request.app.state.settings.outcomes_token
    if token is None:
        return refusal(403, "outcomes are off: set FLIGHT_DELAY_OUTCOMES_TOKEN (a Kubernetes Secret) to accept them")
    scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
    sent = credentials.strip().encode()
    if scheme.lower() != "bearer" or not sent or not hmac.compare_digest(sent, token.get_secret_value().encode()):
        return refusal(401, "send Authorization: Bearer <token>, the token of FLIGHT_DELAY_OUTCOMES_TOKEN")
    service = bentoml.get_current_service()
    if service.monitor is None:
        return refusal(404, MONITORING_OFF)
    key = request.headers.get("idempotency-key")
    if key is not None and not usable_key(key):
        return problem(400, ["header", "Idempotency-Key"], "an Idempotency-Key is 1 to 255 printable ASCII characters")
    body = await request.body()
    try:
        flights = OutcomeRequest.model_validate_json(body).flights
    except ValidationError as exc:
        detail = exc.errors(include_context=False, include_input=False, include_url=False)
        return JSONResponse({"detail": detail}, 400)  # the request layer writes the error body every 400 has
    if key is None:
        return JSONResponse(await run_in_threadpool(count_outcomes, service, flights))
    claim, answer = await run_in_threadpool(
        answered_once, idempotency_store(), key, hashlib.sha256(body).hexdigest(), service, flights
    )
    if claim is Claim.BUSY:
        return problem(409, ["header", "Idempotency-Key"], "a request with this key is being answered; retry later")
    if claim is Claim.OTHER_BODY:
        return problem(422, ["header", "Idempotency-Key"], "this key was used with another body")
    assert answer is not None
    replayed = {"idempotent-replayed": "true"} if claim is Claim.DONE else {}
    return Response(answer, media_type="application/json", headers=replayed)


def answered_once(
    store: IdempotencyStore, key: str, fingerprint: str, service: Any, flights: list[Outcome]
) -> tuple[Claim, bytes | None]:
    """Claim `key`, count the flights and keep the answer, in one call on one thread: a request cut
    meanwhile (its deadline) leaves its count with its kept answer, so a retry is replayed, not counted
    again. Apart, a cut between counting and keeping released the key, and the retry counted twice."""
    claim, answer = store.claim(key, fingerprint)
    if claim is not Claim.NEW:
        return claim, answer
    try:
        counted = bytes(JSONResponse(count_outcomes(service, flights)).body)
    except BaseException:
        store.release(key)
        raise
    store.finish(key, counted)
    return claim, counted


def count_outcomes(service: Any, flights: list[Outcome]) -> dict[str, Any]:
    """Score flights that have left and count them against their outcomes, but for those of an airline
    or city the model does not know: the answer of POST /v1/outcomes. A challenger scores them too."""
    vocabulary = service.predictor.vocabulary
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
    challenger = service.challenger
    scored = 0
    if counted:
        features = encode(FlightColumns.from_flights(counted, vocabulary))
        probabilities = service.predictor.scores(features)
        service.monitor.count_outcomes(features, probabilities, delayed)
        if challenger is not None:
            scored = challenger.count_outcomes(features, probabilities, delayed)
    answer = {"model": service.card["tag"], "flights": len(counted), "delayed": int(delayed.sum())}
    if challenger is not None:  # it scores the counted flights it knows: the paired comparison's
        answer["challenger"] = {"model": challenger.monitor.model, "flights": scored}
    return {**answer, "not_counted": not_counted}


@cache
def idempotency_store() -> IdempotencyStore:
    """The server's store of outcome answers by key: one SQLite file beside its Prometheus files,
    shared by its workers and cleared with them at the server's start."""
    return IdempotencyStore(multiprocess_dir() / "idempotency.sqlite")


def problem(status: int, loc: list[str], message: str) -> JSONResponse:
    """An error of the outcomes route with one problem; the request layer gives it the body every error has."""
    return JSONResponse({"detail": [{"type": "idempotency", "loc": loc, "msg": message}]}, status)


def refusal(status: int, message: str) -> JSONResponse:
    """A refused request to the outcomes route; a 401 names the scheme it wants (RFC 6750)."""
    headers = {"WWW-Authenticate": 'Bearer realm="flight-delay outcomes"'} if status == 401 else None
    off = status == 404  # monitoring is off: no header is at fault, as in GET /v1/monitoring's 404
    detail = [{"type": "off" if off else "auth", "loc": [] if off else ["header", "Authorization"], "msg": message}]
    return JSONResponse({"detail": detail}, status, headers=headers)


async def page(_: Request) -> HTMLResponse:
    """The API page: Swagger UI over this service's own OpenAPI document."""
    return HTMLResponse(api_page.PAGE)


async def document(request: Request) -> Response:
    """The OpenAPI document of the service, named after it and its model, with its GET routes; made
    once per worker, so a flood of /docs.json costs no JSON encoding each."""
    state = request.app.state
    if state.document is None:
        card = bentoml.get_current_service().card
        shaped = api_page.document(state.service.openapi_spec.asdict(), card, GET_ROUTES, outcomes)
        state.document = bytes(JSONResponse(shaped).body)
    return Response(state.document, media_type="application/json")


GET_ROUTES = {"/health": health, "/v1/model": model_card, "/v1/monitoring": monitoring}
PATHS = (*GET_ROUTES, OUTCOMES_ROUTE, "/", "/docs", "/docs.json")


def plain_app(service: Any, settings: Settings) -> Starlette:
    """The routes above as one Starlette app, for `service` (BentoML's Service) run with `settings`."""
    routes = [Route(path, endpoint) for path, endpoint in GET_ROUTES.items()]
    routes += [Route(OUTCOMES_ROUTE, outcomes, methods=["POST"]), Route("/", page), Route("/docs", page)]
    routes.append(Route("/docs.json", document))
    app = Starlette(routes=routes)
    app.state.settings = settings
    app.state.service = service
    app.state.document = None
    app.state.monitoring_report = Recent(settings.metrics_page_s)  # made at most once per METRICS_PAGE_S
    return app
