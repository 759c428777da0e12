"""The servers the service is measured against, each on the service's server stack (uvicorn with uvloop
and httptools, no access log, 2 workers by default):

- ceiling: a bare ASGI app answering every request with constant JSON, no framework, no model: the
  Python ceiling of this machine.
- baseline: what a user would write without BentoML, with the same model and contract: a Starlette app;
  each request is validated with the same schema and predicted on its own, no batching.
- fastapi: the same model behind FastAPI, as FastAPI's docs show a model served: what a user would pick
  instead. One `async def` path operation per request, the faster of FastAPI's two forms here: the
  same peer with `def`, which FastAPI runs in its thread pool as its docs advise for blocking work,
  did 1,237 req/s at the reference load, this one 3,258 a few minutes later
  (loadtest/results/peers-2026-12-04-def/ and peers-2026-12-04/): a prediction takes less than the
  hop to a thread. The body is the project's own request model (so validation and its 400s are the
  service's), the response model `list[Prediction]`. Its packages: requirements-peers.txt.

The other peers run on their frameworks' own servers: LitServe (loadtest/litserve_peer.py) and plain
BentoML (loadtest/bentoml_peer.py). Baseline, FastAPI and both peers run the service's model path:
its reader's `features` (a few flights row by row, more through the columns) and the same ONNX
Runtime session (`models.predictor`).

    python -m loadtest.apps ceiling --port 3002 --workers 2
"""

import argparse
from typing import Any

import uvicorn

from models.config import MODEL_NAME
from models.features import FlightReader
from models.predictor import DelayPredictor
from models.schema import Prediction, request_models

BODY = b'[{"delay":0,"probability":0.5}]'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
PORTS = {"baseline": 3001, "ceiling": 3002, "fastapi": 3003}


async def constant(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]  # raw ASGI callables
    """Read the request body, answer the constant."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def ceiling() -> Any:
    """The bare ASGI app."""
    return constant


def served() -> tuple[DelayPredictor, FlightReader]:
    """The store's latest model, as the service loads it, and the service's reader of its bodies: its
    request model (`request_model`) validates them and its `features` encodes their flights, a few
    row by row as the service does, so every peer runs the service's model path."""
    import bentoml

    stored = bentoml.models.get(f"{MODEL_NAME}:latest")
    predictor = DelayPredictor.load(stored.path, stored.info.metadata)
    vocabulary = predictor.vocabulary
    return predictor, FlightReader(
        request_models(vocabulary.airlines, vocabulary.destinations).prediction_request, vocabulary
    )


def baseline() -> Any:
    """The Starlette app: validate, predict this request's flights alone, respond."""
    from pydantic import ValidationError
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    predictor, reader = served()

    async def predict(request: Request) -> Response:
        try:
            body = reader.request_model.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"error": "invalid request", "detail": exc.errors(include_url=False)}, status_code=400)
        probabilities = predictor.scores(reader.features(body.flights))
        labels = predictor.labels(probabilities)
        return JSONResponse(
            [{"delay": int(d), "probability": float(p)} for d, p in zip(labels, probabilities, strict=True)]
        )

    async def ready(_: Request) -> Response:
        return JSONResponse({"status": "OK"})  # readiness, as BentoML's /readyz

    return Starlette(routes=[Route("/v1/prediction", predict, methods=["POST"]), Route("/readyz", ready)])


def fastapi() -> Any:
    """The FastAPI app."""
    from fastapi import FastAPI

    predictor, reader = served()
    prediction_request = reader.request_model
    app = FastAPI(title="Flight delay at SCL (FastAPI peer)")

    @app.post("/v1/prediction")
    async def predict(request: prediction_request) -> list[Prediction]:  # type: ignore[valid-type]  # made at run time
        """Delay label and probability of each flight of this request, predicted on their own."""
        probabilities = predictor.scores(reader.features(request.flights))  # type: ignore[attr-defined]
        labels = predictor.labels(probabilities)
        return [Prediction(delay=int(d), probability=float(p)) for d, p in zip(labels, probabilities, strict=True)]

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        """Readiness, as BentoML's /readyz."""
        return {"status": "OK"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("app", choices=PORTS)
    parser.add_argument("--port", type=int, help="TCP port on 127.0.0.1 (default: baseline 3001, ceiling 3002, ...)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    args = parser.parse_args()
    uvicorn.run(
        f"loadtest.apps:{args.app}", factory=True, host="127.0.0.1", port=args.port or PORTS[args.app],
        workers=args.workers, loop="uvloop", http="httptools", access_log=False, log_level="warning",
    )  # fmt: skip


if __name__ == "__main__":
    main()
