"""The same model behind LitServe with its batching, as its docs show a batched model (one of `make
peers`' targets; its package is in requirements-peers.txt):

    python -m loadtest.litserve_peer --port 3004 --workers 2

An API server (uvicorn under LitServe) hands each request through a queue to `--workers` inference
processes, which gather up to MAX_BATCH_SIZE requests for up to BATCH_TIMEOUT_S. `decode_request`
validates with the project's request model (its 400s are the service's); `predict` runs the batch's
flights at once and splits them back per request. Readiness: LitServe's /health.
"""

import argparse
from typing import Any

import litserve as ls
import numpy as np
from fastapi import HTTPException
from pydantic import ValidationError

from loadtest.apps import served

# LitServe's batching, set as its docs' batching example: requests per batch, and how long the first
# waits for others. An item of a batch is a request, of any number of flights.
MAX_BATCH_SIZE = 64
BATCH_TIMEOUT_S = 0.005


class FlightDelayAPI(ls.LitAPI):  # type: ignore[misc]  # LitServe ships no type hints
    """One request is one item of a batch; its flights stay together."""

    def setup(self, device: str) -> None:
        self.predictor, self.reader = served()

    def decode_request(self, request: dict[str, Any]) -> Any:
        try:
            return self.reader.request_model.model_validate(request).flights
        except ValidationError as exc:
            raise HTTPException(400, {"error": "invalid request", "detail": exc.errors(include_url=False)}) from exc

    def batch(self, inputs: list[Any]) -> list[Any]:
        return inputs

    def predict(self, requests: list[Any]) -> list[list[dict[str, Any]]]:
        flights = [flight for request in requests for flight in request]
        probabilities = self.predictor.scores(self.reader.features(flights))
        labels = self.predictor.labels(probabilities)
        answers = [{"delay": int(d), "probability": float(p)} for d, p in zip(labels, probabilities, strict=True)]
        ends = np.cumsum([len(request) for request in requests]).tolist()
        return [answers[start:end] for start, end in zip([0, *ends], ends, strict=False)]

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=3004, help="TCP port on 127.0.0.1")
    parser.add_argument("--workers", type=int, default=2, help="inference processes")
    args = parser.parse_args()
    api = FlightDelayAPI(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S, api_path="/v1/prediction")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
