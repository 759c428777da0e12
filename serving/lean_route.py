"""The lean path of POST /v1/prediction: BentoML's batching dispatcher without its per-request framework.

Under the reference load about half of a worker's CPU went to the framework around each request
(docs/performance.md): Starlette's request objects and routing, BentoML's request context and API
wrapper, and its metrics middleware looking up the labels of five metrics for every request. For
the one hot route this ASGI middleware does the same work directly:

- the body is validated by the API's own input model (`model_validate_json`, as BentoML does);
- the flights go through `ServiceAppFactory.batch_infer`, so batches are formed, sized and counted
  (`adaptive_batch_size`) by BentoML's CorkDispatcher and run by the service's batch function as on
  BentoML's own path (small batches on the event loop, large ones in a thread: `INLINE_FLIGHTS`);
- the answer is serialized with the type of the API's own output model, by pydantic's Rust core
  (BentoML dumps it to Python objects and then `json.dumps` them: 4x the time for 100 flights);
- BentoML's own request metrics (`request_total`, `request_duration_seconds`, `request_in_progress`,
  `last_request_timestamp_seconds`) are recorded with the same labels, through the route's
  `serving.metrics.RequestMetrics` of the metrics middleware right inside it.

It sits right inside RequestGuard (`serving.guard.arrange_middlewares`), so the guard's limits, time-out,
error cleaning and shutdown accounting apply unchanged. Other routes and methods go through BentoML.
It relies on BentoML 1.4.40 internals (pinned in requirements.txt): the app factory's `batch_infer`,
`service.apis` and `enable_metrics`, and the output model's `root` field (the metrics' own reliance is
written down in serving/metrics.py). tests/test_lean_route.py pins each of
them and compares the answers with BentoML's path.
"""

import logging
from timeit import default_timer
from typing import Any

from bentoml.exceptions import BentoMLException
from pydantic import TypeAdapter, ValidationError

from serving.guard import ASGIApp, Receive, Scope, Send, dump, read_body
from serving.metrics import BoundedTrafficMetrics, RequestMetrics

logger = logging.getLogger("bentoml.flight_delay")
UNEXPECTED = {"error": "An unexpected error has occurred, please check the server log."}  # BentoML's words


class PredictionRoute:
    """ASGI middleware answering POST `route` with the batched API `api_name` of BentoML's app `factory`."""

    def __init__(self, app: ASGIApp, factory: Any, route: str, api_name: str) -> None:
        self.app = app
        self.factory = factory  # BentoML's ServiceAppFactory of this worker
        self.route = route
        self.api = factory.service.apis[api_name]
        if not self.api.batchable:
            raise ValueError(f"{api_name} is not batchable: BentoML's own path serves it")
        self.api_name = api_name
        self.serialize = TypeAdapter(self.api.output_spec.model_fields["root"].annotation).dump_json
        self.metrics_middleware = app if isinstance(app, BoundedTrafficMetrics) else None
        if factory.enable_metrics and self.metrics_middleware is None:
            raise RuntimeError("BentoML's metrics middleware is not where this BentoML version had it")
        self.metrics: RequestMetrics | None = None
        self.headers = [(b"content-type", b"application/json"), (b"server", f"BentoML Service/{factory.name}".encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.route or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        start = default_timer()
        if self.metrics is None and self.metrics_middleware is not None:
            self.metrics = self.metrics_middleware.route_metrics(self.route)
        metrics = self.metrics
        if metrics is not None:
            metrics.last_request.set_to_current_time()
            metrics.in_progress.inc()
        try:
            body = await read_body(receive)
            if body is None:  # the client left before sending its body
                return
            status, answer = await self.answer(body)
            if metrics is not None:
                metrics.record(status, max(default_timer() - start, 0))
            headers = [*self.headers, (b"content-length", str(len(answer)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": answer})
        finally:
            if metrics is not None:
                metrics.in_progress.dec()

    async def answer(self, body: bytes) -> tuple[int, bytes]:
        """Status and body of the answer, with the error bodies of BentoML's API wrapper (the guard cleans them)."""
        try:
            request = self.api.input_spec.model_validate_json(body or b"{}")
            output = await self.factory.batch_infer(self.api_name, (), dict(request))
            return 200, self.serialize(output)
        except ValidationError as exc:
            detail = exc.errors(include_context=False, include_input=False, include_url=False)
            return 400, dump({"error": f"{exc.error_count()} validation error for {exc.title}", "detail": detail})
        except BentoMLException as exc:
            logger.exception("prediction refused")
            status = exc.error_code.value
            return status, dump(UNEXPECTED if status >= 500 else {"error": str(exc)})
        except Exception:
            logger.exception("prediction failed")
            return 500, dump(UNEXPECTED)
