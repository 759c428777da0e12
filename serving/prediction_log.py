"""The prediction log: a sampled record of every flight answered, for audit and replay.

The records are BentoML's monitoring format (`bentoml.monitor`'s DefaultMonitor): JSON lines in
`<directory>/flight_delay/data/data.<worker>.log`, the columns listed in
`<directory>/flight_delay/schema/schema.<worker>.log`, each record with `timestamp`, `request_id`
and `trace_id` beside its own columns. `bentoml.monitor` itself is not used: it formats and writes
every record in the thread that answers, which studies/prediction_log_cost.py measured at about the
cost of the prediction itself (docs/monitoring.md#the-prediction-log). Here the request guard hands
over the raw request and answer bytes of a sampled request (one queue put) and a thread of this
worker's own parses them and writes the lines.

- Sampling is by request (`sample`, FLIGHT_DELAY_LOG_SAMPLE): a logged request has all its flights,
  so it can be replayed as it was sent.
- Disk is bounded: each worker's log takes at most `max_bytes` (FLIGHT_DELAY_LOG_MAX_MB), in
  LOG_FILES files: `data.<worker>.log` rotates to `.1`, `.2`, `.3` and the oldest is deleted.
- Memory is bounded: past `MAX_PENDING_BYTES` of requests waiting to be written, a request is dropped
  and counted (`on_drop`); a prediction never waits for the log or fails with it. A write error
  drops and counts the same way.
- At shutdown, `close()` writes what is waiting.
- Outcomes (POST /v1/outcomes) are logged too, sampled the same way: one record per flight with its
  inputs, its real departure (`Fecha-O`) and whether it was counted (`counted`: false for a flight
  the model does not know); `delay` and `probability` are null on them. They are what a report of
  realized quality and a retraining need.
"""

import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

from models.config import MODEL_NAME
from serving.settings import LOG_FILES, OUTCOMES_ROUTE

logger = logging.getLogger("bentoml.flight_delay")
FIELDS = ("OPERA", "TIPOVUELO", "MES", "Fecha-I", "SIGLADES")  # the prediction fields, as the client sent them
COLUMNS = (  # name, role and type of each column, as bentoml.monitor's schema file lists them
    *((field, "feature", "categorical") for field in FIELDS),
    ("Fecha-O", "target", "categorical"),  # outcomes only: the real departure
    ("counted", "metadata", "categorical"),  # outcomes only: whether the model could score it
    ("delay", "prediction", "categorical"),
    ("probability", "prediction", "numerical"),  # null on /predict, which answers labels only
    ("challenger_probability", "prediction", "numerical"),  # the challenger's, when one runs and knows the flight
    ("model", "metadata", "categorical"),
    ("route", "metadata", "categorical"),
    ("index", "metadata", "numerical"),  # the flight's position in its request
)
DROP_REASONS = ("queue_full", "write_error")  # the label values of on_drop
MAX_PENDING_BYTES = 16 * 1_048_576  # of request and answer bodies waiting for the writer
# Characters a line-based reader takes as line ends (str.splitlines) that JSON may carry unescaped.
LINE_BREAKS = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})
CLOSE_WAIT_S = 5.0


class PredictionLog:
    """One worker's prediction log: `offer()` on the request path, a writer thread off it."""

    def __init__(
        self,
        directory: Path,
        sample: float,
        model: str,
        worker: int,
        max_bytes: int = 256 * 1_048_576,
        on_drop: Callable[[str], None] = lambda reason: None,
        challenger: Callable[[list[dict[str, Any]]], list[float | None]] | None = None,
    ) -> None:
        self.sample = sample
        self.model = model
        self.challenger = challenger  # scores the logged flights here, in the writer thread
        self.on_drop = on_drop
        root = Path(directory) / MODEL_NAME
        data, schema = root / "data" / f"data.{worker}.log", root / "schema" / f"schema.{worker}.log"
        data.parent.mkdir(parents=True, exist_ok=True)
        schema.parent.mkdir(parents=True, exist_ok=True)
        columns = [{"name": name, "role": role, "type": kind} for name, role, kind in COLUMNS]
        with schema.open("a", encoding="utf-8") as file:
            file.write(dump({"meta_data": {"model": model, "worker": worker}, "columns": columns}) + "\n")
        self.handler = RotatingFileHandler(
            data, maxBytes=max_bytes // LOG_FILES, backupCount=LOG_FILES - 1, encoding="utf-8"
        )
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        self.pending: deque[tuple[str, str, float, bytes, bytes] | None] = deque()
        self.pending_bytes = 0
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)
        self.writer = threading.Thread(target=self.write_forever, name="prediction-log", daemon=True)
        self.writer.start()

    def sampled(self) -> bool:
        """Whether to log the request now arriving."""
        return self.sample > 0 and random.random() < self.sample

    def offer(self, route: str, request_id: str, body: bytes, answer: bytes, at: float | None = None) -> None:
        """Hand over an answered request (its body and the 200 answer) to be written; never blocks."""
        size = len(body) + len(answer)
        stamp = time.time() if at is None else at
        with self.ready:
            if self.pending_bytes + size > MAX_PENDING_BYTES:
                dropped = True
            else:
                dropped = False
                self.pending.append((route, request_id, stamp, body, answer))
                self.pending_bytes += size
                self.ready.notify()
        if dropped:
            self.on_drop("queue_full")

    def close(self) -> None:
        """Write what is waiting (for at most CLOSE_WAIT_S) and close the file."""
        with self.ready:
            self.pending.append(None)
            self.ready.notify()
        self.writer.join(CLOSE_WAIT_S)
        self.handler.close()

    def write_forever(self) -> None:
        while True:
            with self.ready:
                while not self.pending:
                    self.ready.wait()
                item = self.pending.popleft()
                if item is not None:
                    self.pending_bytes -= len(item[3]) + len(item[4])
            if item is None:
                return
            try:
                self.write(self.lines(*item))
            except Exception:  # a bad write must not stop the thread: drop, count and go on
                logger.exception("prediction log: a request was not written")
                self.on_drop("write_error")

    def write(self, lines: str) -> None:
        """Append one request's lines, rotating first if they would pass the size bound. Written to the
        handler's stream directly: its `emit` would print a write error instead of raising it."""
        handler = self.handler
        if handler.shouldRollover(logging.makeLogRecord({"msg": lines})):
            handler.doRollover()
        if handler.stream is None:  # reopened by doRollover unless it failed
            raise OSError(f"{handler.baseFilename} is not open")
        handler.stream.write(lines + "\n")
        handler.stream.flush()

    def lines(self, route: str, request_id: str, stamp: float, body: bytes, answer: bytes) -> str:
        """The JSON lines of one request's flights (both are already validated: the answer was a 200)."""
        flights = json.loads(body)["flights"]
        answered = json.loads(answer)
        outcome: list[dict[str, Any]] = [{} for _ in flights]
        if route == OUTCOMES_ROUTE:  # {"model", "flights", "delayed", "not_counted": [{"index", ...}]}
            skipped = {problem["index"] for problem in answered.get("not_counted", [])}
            predictions = [{"delay": None, "probability": None} for _ in flights]
            outcome = [
                {"Fecha-O": flight.get("Fecha-O"), "counted": index not in skipped}
                for index, flight in enumerate(flights)
            ]
        elif isinstance(answered, dict):  # /predict: {"predict": [labels]}
            predictions = [{"delay": label, "probability": None} for label in answered["predict"]]
        else:
            predictions = answered
        if self.challenger is not None and route != OUTCOMES_ROUTE:
            outcome = [{"challenger_probability": p} for p in self.challenger(flights)]
        common = {
            "model": self.model,
            "route": route,
            "timestamp": datetime.fromtimestamp(stamp, UTC).isoformat(),
            "request_id": request_id,
            "trace_id": None,
        }
        return "\n".join(
            dump(
                {
                    **{field: flight.get(field) for field in FIELDS},
                    "delay": prediction["delay"],
                    "probability": prediction["probability"],
                    **extra,
                    "index": index,
                    **common,
                }
            )
            for index, (flight, prediction, extra) in enumerate(zip(flights, predictions, outcome, strict=True))
        )


def dump(record: dict[str, Any]) -> str:
    """One compact JSON line, non-ASCII kept as it is (city names) but for the characters a line-based
    reader would split it at, which are escaped."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).translate(LINE_BREAKS)
