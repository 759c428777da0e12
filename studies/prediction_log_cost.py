"""What `bentoml.monitor` would cost on the request path, against the prediction it would log.

    .venv/bin/python studies/prediction_log_cost.py

BentoML's documented way to log predictions is `with bentoml.monitor(name) as m: m.log(value, ...)`
for every field of every record, in the code that answers; on leaving the block the DefaultMonitor
formats each record as JSON and writes it through Python's logging, in the calling thread. This
times that, for requests of 1 and 100 flights, beside what the service itself spends on the same
request (validate, encode, predict), and beside serving/prediction_log.py's per-request cost (one
queue put; the JSON lines are written by a thread of its own). Medians of repeated runs in one
process, so the ratios hold on a noisy machine; the absolute times do not. The model tag, route and
index are left out of bentoml.monitor's records (it warns on every column of a role other than
feature, prediction or target), so its cost here is a lower bound.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bentoml

from models.config import MODEL_NAME
from models.features import FlightColumns, encode
from models.predictor import DelayPredictor
from models.schema import EXAMPLE_REQUEST, request_models
from serving.prediction_log import PredictionLog

FIELDS = ("OPERA", "TIPOVUELO", "MES", "Fecha-I", "SIGLADES")


def median_us(action: Callable[[], object], repeats: int = 7, calls: int = 200) -> float:
    """Median over `repeats` runs of the mean microseconds per call of `action`."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            action()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # --help prints, measures nothing
    model = bentoml.models.get(f"{MODEL_NAME}:latest")
    predictor = DelayPredictor.load(model.path, model.info.metadata)
    tag = str(model.tag)
    requests = request_models(predictor.vocabulary.airlines, predictor.vocabulary.destinations)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        bentoml_options = {"log_path": directory}
        log = PredictionLog(Path(directory) / "ours", sample=1.0, model=tag, worker=0)
        for size in (1, 100):
            flights = (EXAMPLE_REQUEST["flights"] * size)[:size]
            body = json.dumps({"flights": flights}).encode()

            def serve(body: bytes = body) -> list[float]:
                request = requests.prediction_request.model_validate_json(body)
                columns = FlightColumns.from_flights(request.flights, predictor.vocabulary)
                return predictor.scores(encode(columns)).tolist()

            answer = json.dumps([{"delay": 0, "probability": p} for p in serve()]).encode()

            def bentoml_monitor(flights: list[dict[str, Any]] = flights, answer: bytes = answer) -> None:
                predictions = json.loads(answer)
                with bentoml.monitor("flight_delay", monitor_options=bentoml_options) as monitor:
                    for flight, prediction in zip(flights, predictions, strict=True):
                        for field in FIELDS:
                            monitor.log(flight.get(field), name=field, role="feature", data_type="categorical")
                        monitor.log(
                            prediction["probability"], name="probability", role="prediction", data_type="numerical"
                        )
                        monitor.log(prediction["delay"], name="delay", role="prediction", data_type="categorical")

            def ours(body: bytes = body, answer: bytes = answer) -> None:
                log.offer("/v1/prediction", "request-id", body, answer)

            served, monitored, offered = median_us(serve), median_us(bentoml_monitor), median_us(ours)
            rows.append((size, served, monitored, offered))
        log.close()
    print("| flights per request | serve (validate, encode, predict) | bentoml.monitor | its share | offer |")
    print("|---:|---:|---:|---:|---:|")
    for size, served, monitored, offered in rows:
        print(f"| {size} | {served:.0f} µs | {monitored:.0f} µs | {monitored / served:.2f}x | {offered:.1f} µs |")


if __name__ == "__main__":
    main()
