"""The same model behind FastAPI, as FastAPI's docs show a model served: what a user would pick instead.

One path operation per request, `async def`: the faster of FastAPI's two forms here. The same peer
with `def`, which FastAPI runs in its thread pool as its docs advise for blocking work, did 1,237
req/s at the reference load, this one 3,258 a few minutes later (loadtest/results/peers-2026-12-04-def/
and peers-2026-12-04/): a prediction takes less than the hop to a thread. So the service is measured
against the peer at its best. The body is the project's own request model
(`models.schema.request_models`, so validation and its 400s are the service's), the response model
`list[Prediction]`, with the same encoder and ONNX Runtime session (`models.predictor`). Served by
uvicorn with uvloop and httptools and 2 workers, as the service's stack. Its packages:
requirements-peers.txt.

    python loadtest/peer_fastapi.py --port 3003 --workers 2
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bentoml
from fastapi import FastAPI

from models.config import MODEL_NAME
from models.features import FlightColumns
from models.predictor import DelayPredictor
from models.schema import Prediction, request_models

stored = bentoml.models.get(f"{MODEL_NAME}:latest")
predictor = DelayPredictor.load(stored.path, stored.info.metadata)
PredictionRequest = request_models(predictor.vocabulary.airlines, predictor.vocabulary.destinations).prediction_request

app = FastAPI(title="Flight delay at SCL (FastAPI peer)")


@app.post("/v1/prediction")
async def predict(request: PredictionRequest) -> list[Prediction]:  # type: ignore[valid-type]  # a model made at run time
    """Delay label and probability of each flight of this request, predicted on their own."""
    probabilities = predictor.probabilities(FlightColumns.from_flights(request.flights, predictor.vocabulary))  # type: ignore[attr-defined]
    labels = predictor.labels(probabilities)
    return [Prediction(delay=int(d), probability=float(p)) for d, p in zip(labels, probabilities, strict=True)]


@app.get("/readyz")
async def ready() -> dict[str, str]:
    """Readiness, as BentoML's /readyz."""
    return {"status": "OK"}


if __name__ == "__main__":
    from ceiling import serve  # the same server stack as the ceiling

    serve("peer_fastapi:app", __doc__.split("\n")[0], 3003)
