"""The service's own Prometheus counters, and `Recent`: a value made at most once per interval."""

import asyncio
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

    def count_unknown_values(self, problems: list[dict[str, Any]]) -> None:
        """Count each airline or city of a 400 that the model does not know: flights drift never sees."""
        for problem in problems:
            field = (problem.get("loc") or [None])[-1]
            if problem.get("type") == "literal_error" and field in UNKNOWN_INPUTS:
                self.unknown_values.labels(model=self.model, input=UNKNOWN_INPUTS[field]).inc()


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
            "head_too_large (431), "
            "send_deadline (an answer its client did not read), unsent_bytes (the worker's bound on unread answers), "
            "evicted or refused (at the connection cap)",
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
