"""The service's own Prometheus counters, and `Recent`: a value made at most once per interval."""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import bentoml

from serving.connections import CLOSE_REASONS
from serving.prediction_log import DROP_REASONS

T = TypeVar("T")
UNKNOWN_INPUTS = {"OPERA": "airline", "SIGLADES": "destination"}  # the fields whose values the model learned


@dataclass(frozen=True)
class Counters:
    """The counters of what the request layer, the connections and the prediction log refuse or drop."""

    layer_errors: Any
    connections_closed: Any
    log_drops: Any
    unknown_values: Any
    model: str

    def count_unknown_values(self, problems: list[dict[str, Any]], body: bytes) -> None:
        """Count each airline or city of a 400 (`body`: its request) that the model does not know: flights
        drift never sees. A value that is no name (a number, null, a list, blank) is the client's
        mistake, not a new airline or city; neither route's problems carry their input, so it is read
        from the body, on 400s only."""
        refused = [
            problem
            for problem in problems
            if problem.get("type") == "literal_error" and (problem.get("loc") or [None])[-1] in UNKNOWN_INPUTS
        ]
        if not refused:
            return
        try:
            request = json.loads(body)
        except ValueError:
            return
        for problem in refused:
            value = value_at(request, problem["loc"])
            if isinstance(value, str) and value.strip():
                self.unknown_values.labels(model=self.model, input=UNKNOWN_INPUTS[problem["loc"][-1]]).inc()


def value_at(document: Any, loc: list[Any]) -> Any:
    """The value at a validation problem's `loc` in a JSON document, None where there is none."""
    for key in loc:
        try:
            document = document[key]
        except (KeyError, IndexError, TypeError):
            return None
    return document


def counters(model: str) -> Counters:
    """The counters of the service serving `model` (its tag), declared once per worker, each reason of
    a close or a drop at 0 from the start: a series that appears only at its first count is missed by
    `rate()` and by alerts until then (Prometheus's instrumentation practices, "avoid missing metrics")."""
    counted = Counters(
        layer_errors=bentoml.metrics.Counter(
            name="guard_error_responses",
            documentation="Error responses the request layer sent itself (413, 415, 503, 504), by status",
            labelnames=["status"],
        ),
        connections_closed=bentoml.metrics.Counter(
            name="connections_closed",
            documentation="Connections the worker closed itself, by reason: idle, request_deadline (408), "
            "head_too_large (431), arriving_bytes (the worker's bound on requests still arriving), "
            "send_deadline (an answer its client did not read), unsent_bytes (the worker's bound on unread answers), "
            "evicted or refused (at the connection cap), shutdown (a request still arriving at shutdown, "
            "or a connection still open at the end of the drain)",
            labelnames=["reason"],
        ),
        log_drops=bentoml.metrics.Counter(
            name="prediction_log_dropped_requests",
            documentation="Sampled requests the prediction log could not keep, by reason: queue_full or write_error",
            labelnames=["reason"],
        ),
        unknown_values=bentoml.metrics.Counter(
            name="flight_delay_unknown_values",
            documentation="Values of OPERA or SIGLADES refused (400) because the served model did not learn them, "
            "by model and input (airline, destination)",
            labelnames=["model", "input"],
        ),
        model=model,
    )
    for reason in CLOSE_REASONS:
        counted.connections_closed.labels(reason=reason)
    for reason in DROP_REASONS:
        counted.log_drops.labels(reason=reason)
    return counted


class Recent(Generic[T]):
    """A value made at most once per `fresh_s`: callers meanwhile share the last one, and callers during
    its making wait for it rather than make another. Serves /metrics (serving/internals.py) and GET
    /v1/monitoring (serving/routes.py), both made from every worker's metric files."""

    def __init__(self, fresh_s: float) -> None:
        self.fresh_s = fresh_s
        self.value: T | None = None
        self.at = -float("inf")
        self.lock: asyncio.Lock | None = None  # made on the worker's event loop, at the first call

    async def get(self, make: Callable[[], Awaitable[T]]) -> T:
        if self.lock is None:
            self.lock = asyncio.Lock()
        async with self.lock:
            if self.value is None or time.monotonic() - self.at >= self.fresh_s:
                self.value = await make()
                self.at = time.monotonic()
            return self.value
