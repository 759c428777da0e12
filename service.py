"""The flight-delay prediction service: "will this flight leave SCL more than 15 minutes late?"

A request flows one way: the request layer admits and validates it (serving/layer.py), BentoML's
adaptive batching groups concurrent requests, `predict_batch` encodes and predicts, and the layer
answers and records. serving/wiring.py puts the layer, the plain routes and the limits in place;
serving/settings.py lists every FLIGHT_DELAY_* setting.
"""

import gc
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from starlette.concurrency import run_in_threadpool

from models.features import FlightReader, Flights, Vocabulary
from models.predictor import DelayPredictor
from models.schema import ChallengeResponse, FlightList, Prediction, request_models
from serving.challenger import Challenger
from serving.internals import PredictionList
from serving.monitoring import Monitor
from serving.settings import INLINE_FLIGHTS, PREDICTION_ROUTES, settings_or_exit
from serving.wiring import served_models, wire

settings = settings_or_exit()
MODEL, CHALLENGER = served_models(settings)  # FLIGHT_DELAY_MODEL and FLIGHT_DELAY_CHALLENGER
METADATA = MODEL.stored.info.metadata  # type: ignore[union-attr]  # served_models checked it
# The request bodies accept exactly the airlines and destinations of the model served, learned from
# its training data: validation, its 400s and the API document's enums all come from them.
VOCABULARY = Vocabulary.from_metadata(METADATA["vocabularies"])
REQUESTS = request_models(VOCABULARY.airlines, VOCABULARY.destinations)
READER = FlightReader(REQUESTS.prediction_request, VOCABULARY)  # /v1/prediction's bodies, on the lean route
CARD_METADATA = ("training_data", "metrics", "threshold", "features", "vocabularies", "reference")  # /v1/model
# The container's base. A distro BentoML does not know skips its apt-get of build-essential and
# git (633 MB of the image): every dependency installs from a wheel. bentofile.yaml's base_image wins.
IMAGE = bentoml.images.Image(base_image="python:3.11-slim", distro="debian-wheels-only")


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
    challenger_model = CHALLENGER  # `bentoml build` packs both models into the bento

    def __init__(self) -> None:
        info = self.model.info
        self.predictor = DelayPredictor.load(self.model.path, info.metadata)
        self.monitor = monitor(self.predictor, info) if settings.monitoring and settings.metrics else None
        self.challenger: Challenger | None = None
        self.challenger_card: dict[str, Any] | None = None
        if self.challenger_model is not None and self.monitor is not None:  # served_models: it needs monitoring
            own = self.challenger_model.info
            predictor = DelayPredictor.load(self.challenger_model.path, own.metadata)
            self.challenger = Challenger(predictor, monitor(predictor, own), self.predictor, self.monitor)
            self.challenger_card = {
                "tag": str(own.tag),
                **{key: own.metadata[key] for key in ("reference", "vocabularies")},
            }
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
        if self.challenger is not None:
            self.challenger.close()
            self.challenger.monitor.close()
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
    async def predict_batch(self, flights: Flights) -> list[Prediction]:
        """Delay label and probability for each flight, in request order. Concurrent requests are batched."""
        # A small batch runs on the event loop: handing it to a thread and back costs more than the batch.
        # A large one goes to a thread, where ONNX Runtime releases the GIL, so the loop goes on reading
        # requests meanwhile (and accepting connections under overload).
        if len(flights) <= INLINE_FLIGHTS:
            return self.answers(flights)
        return await run_in_threadpool(self.answers, flights)

    def answers(self, flights: Flights) -> list[Prediction]:
        """The batch's answers: encode, predict, count, label."""
        probabilities = self.probabilities(flights)
        labels = self.predictor.labels(probabilities)
        # dict literals: calling the TypedDict per flight took twice the time (docs/performance.md)
        return [
            {"delay": label, "probability": p} for label, p in zip(labels.tolist(), probabilities.tolist(), strict=True)
        ]

    @bentoml.api(route=PREDICTION_ROUTES[1], input_spec=REQUESTS.prediction_request)
    def predict(self, flights: FlightList) -> ChallengeResponse:
        """The LATAM challenge's contract: one 0/1 label per flight under "predict"."""
        labels = self.predictor.labels(self.probabilities(flights))
        return ChallengeResponse(predict=labels.tolist())

    def probabilities(self, flights: Flights) -> np.ndarray:
        """Encode, predict and count a batch (the counts feed /v1/monitoring and /metrics)."""
        features = READER.features(flights)
        probabilities = self.predictor.scores(features)
        if self.monitor is not None:
            self.monitor.count(features, probabilities)
        if self.challenger is not None:
            self.challenger.offer(features, probabilities)
        return probabilities


def monitor(predictor: DelayPredictor, info: Any) -> Monitor:
    """The monitoring counts of one stored model (`info`: its BentoML model info)."""
    return Monitor(info.metadata["reference"], predictor.threshold, str(info.tag), predictor.vocabulary)


wire(FlightDelay, settings, str(MODEL.tag), READER)
