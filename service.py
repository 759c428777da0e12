"""The flight-delay prediction service: the HTTP layer only (validate, batch, predict, respond)."""

import gc
from typing import Any

import bentoml
from _bentoml_sdk.io_models import IORootModel  # BentoML's own base of list outputs; pinned version
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from batching import cap_learned_wait
from http_guard import RequestGuard, arrange_middlewares
from models.config import MODEL_NAME, PREDICTION_ROUTES, Settings
from models.features import FlightColumns
from models.predictor import DelayPredictor, ModelError, check_metadata
from models.schema import ChallengeResponse, FlightList, Prediction, PredictionRequest

settings = Settings()
if settings.greedy_batching:
    cap_learned_wait()
CARD_METADATA = ("training_data", "metrics", "threshold", "features", "vocabularies")  # shown by /v1/model
# The container's base. A distro BentoML does not know skips its apt-get of build-essential and
# git (633 MB of the image): every dependency installs from a wheel. bentofile.yaml's base_image wins.
IMAGE = bentoml.images.Image(base_image="python:3.11-slim", distro="debian-wheels-only")


def trained_model() -> bentoml.models.BentoModel:
    """The latest flight_delay model of the store, or a one-line refusal to start that says how to fix it.

    Checked here, when the service is loaded, so `bentoml serve` exits at once instead of its
    workers failing and restarting forever.
    """
    model = bentoml.models.BentoModel(f"{MODEL_NAME}:latest")
    stored = model.stored
    if stored is None:  # BentoML would try BentoCloud next and fail with a puzzling message
        raise bentoml.exceptions.NotFound(
            f"no {MODEL_NAME} model in the BentoML store; train one first: python train.py"
        )
    try:
        check_metadata(stored.info.metadata)
    except ModelError as exc:
        raise bentoml.exceptions.BentoMLException(f"refusing to serve {stored.tag}: {exc}") from None
    return model


async def health(_: Request) -> JSONResponse:
    """Liveness in the LATAM challenge's format."""
    return JSONResponse({"status": "OK"})


async def model_card(_: Request) -> JSONResponse:
    """What the service is running: tag, training data, metrics, threshold and vocabularies."""
    return JSONResponse(bentoml.get_current_service().card)


class PredictionList(IORootModel[list[Prediction]]):
    """Response of /v1/prediction: one Prediction per flight, in request order.

    Declaring the media type spares BentoML from building this type's JSON schema again for
    every response to find it (a quarter of a worker's CPU time under load, measured with py-spy).
    """

    media_type = "application/json"


plain_routes = Starlette(routes=[Route("/health", health), Route("/v1/model", model_card)])


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

    model = trained_model()

    def __init__(self) -> None:
        info = self.model.info
        self.predictor = DelayPredictor.load(self.model.path, info.metadata)
        if settings.gc_freeze:
            gc.freeze()  # libraries and model live as long as the worker: keep them out of every collection
        self.card: dict[str, Any] = {
            "tag": str(info.tag),
            "created_at": info.creation_time.isoformat(),
            **{key: info.metadata[key] for key in CARD_METADATA},
        }

    @bentoml.api(
        route=PREDICTION_ROUTES[0],
        batchable=settings.batching,
        max_batch_size=settings.max_batch_size,
        max_latency_ms=settings.max_latency_ms,
        input_spec=PredictionRequest,
        output_spec=PredictionList,
    )
    def predict_batch(self, flights: FlightList) -> list[Prediction]:
        """Delay label and probability for each flight, in request order. Concurrent requests are batched."""
        probabilities = self.predictor.probabilities(FlightColumns.from_flights(flights))
        labels = self.predictor.labels(probabilities)
        return [
            Prediction(delay=int(label), probability=float(p)) for label, p in zip(labels, probabilities, strict=True)
        ]

    @bentoml.api(route=PREDICTION_ROUTES[1], input_spec=PredictionRequest)
    def predict(self, flights: FlightList) -> ChallengeResponse:
        """The LATAM challenge's contract: one 0/1 label per flight under "predict"."""
        labels = self.predictor.labels(self.predictor.probabilities(FlightColumns.from_flights(flights)))
        return ChallengeResponse(predict=labels.tolist())


guard_errors = bentoml.metrics.Counter(
    name="guard_error_responses",
    documentation="Error responses the request guard sent itself (413, 415, 503, 504), by status",
    labelnames=["status"],
)
arrange_middlewares(tracing=settings.tracing_sample_rate > 0)
FlightDelay.add_asgi_middleware(  # type: ignore[attr-defined]  # the decorator returns a Service; its typing says class
    RequestGuard,
    routes=PREDICTION_ROUTES,
    max_body_bytes=settings.max_body_bytes,
    max_in_flight=settings.max_in_flight,
    shed_after_s=settings.shed_after_ms / 1000,
    timeout_s=settings.timeout_s,
    on_error_response=lambda status: guard_errors.labels(status=str(status)).inc(),
)
