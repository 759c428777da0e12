"""The per-request baseline: what a user would write without BentoML, with the same model and contract.

A Starlette app on uvicorn (uvloop, httptools) with the same number of workers: each request is
validated with the same schema and predicted on its own, no batching.

    python loadtest/baseline.py --port 3001 --workers 2
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bentoml
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from models.config import MODEL_NAME
from models.features import FlightColumns
from models.predictor import DelayPredictor
from models.schema import request_models

stored = bentoml.models.get(f"{MODEL_NAME}:latest")
predictor = DelayPredictor.load(stored.path, stored.info.metadata)
PredictionRequest = request_models(predictor.vocabulary.airlines, predictor.vocabulary.destinations).prediction_request


async def predict(request: Request) -> Response:
    """Validate, predict this request's flights alone, respond."""
    try:
        body = PredictionRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        return JSONResponse({"error": "invalid request", "detail": exc.errors(include_url=False)}, status_code=400)
    probabilities = predictor.probabilities(FlightColumns.from_flights(body.flights, predictor.vocabulary))
    labels = predictor.labels(probabilities)
    return JSONResponse(
        [{"delay": int(d), "probability": float(p)} for d, p in zip(labels, probabilities, strict=True)]
    )


async def ready(_: Request) -> Response:
    """Readiness, as BentoML's /readyz."""
    return JSONResponse({"status": "OK"})


app = Starlette(routes=[Route("/v1/prediction", predict, methods=["POST"]), Route("/readyz", ready)])

if __name__ == "__main__":
    from ceiling import serve  # the same server stack as the ceiling

    serve("baseline:app", __doc__.split("\n")[0], 3001)
