"""BentoML's request metrics with bounded labels (no label value comes from the client), and a
/metrics page made at most once a second per worker.

BentoML 1.4.40's RunnerTrafficMetricsMiddleware labels every request with its raw URL path, so each
unknown path adds series: 20,000 random paths made /metrics 76 MB, one scrape 30 s and a worker
701 MiB (issue 18). `BoundedTrafficMetrics` records the same metrics, under the same names and labels,
with the path replaced by its route: one of the service's own paths, or OTHER_ROUTE for any other.
Statuses are the service's own (a bounded set); methods are no label.

It subclasses BentoML's middleware for its `_setup()` (the metric objects and the placeholder series
of the API routes) and its `metrics_*` attributes, and `serving.guard.arrange_middlewares` puts it
where BentoML's own stood; tests/test_lean_route.py pins both.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from timeit import default_timer
from typing import Any, Generic, TypeVar

from bentoml._internal.context import server_context
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from starlette.requests import Request
from starlette.responses import Response

from serving.guard import ASGIApp, Message, Receive, Scope, Send

T = TypeVar("T")
OTHER_ROUTE = "other"  # the endpoint label of every path the service does not serve
STATIC_PREFIX = "/static_content/"  # the API page's files, under one label


class RequestMetrics:
    """BentoML's request metrics of one route, recorded through children looked up once per status."""

    def __init__(self, middleware: RunnerTrafficMetricsMiddleware, route: str) -> None:
        if not middleware._is_setup:
            middleware._setup()
        self.middleware = middleware
        self.labels = {
            "endpoint": route,
            "service_name": server_context.bento_name,
            "service_version": server_context.bento_version,
            "runner_name": server_context.service_name,
        }
        names = {key: self.labels[key] for key in ("service_name", "service_version", "runner_name")}
        self.in_progress = middleware.metrics_request_in_progress.labels(**self.labels)
        self.last_request = middleware.metrics_last_request_timestamp.labels(**names)
        self.by_status: dict[int, tuple[Any, Any]] = {}

    def record(self, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        children = self.by_status.get(status)
        if children is None:
            labels = {**self.labels, "http_response_code": status}
            children = (
                self.middleware.metrics_request_total.labels(**labels),
                self.middleware.metrics_request_duration.labels(**labels),
            )
            self.by_status[status] = children
        children[0].inc()
        children[1].observe(seconds)


class BoundedTrafficMetrics(RunnerTrafficMetricsMiddleware):
    """BentoML's request metrics middleware, labelling each request with its route among `routes`."""

    def __init__(self, app: ASGIApp, routes: frozenset[str], **options: Any) -> None:
        super().__init__(app, **options)
        self.routes = routes
        self.by_route: dict[str, RequestMetrics] = {}  # at most len(routes) + 2 entries

    def route_metrics(self, path: str) -> RequestMetrics:
        """The metrics of the route `path` is counted under."""
        if path in self.routes:
            route = path
        else:
            route = STATIC_PREFIX.rstrip("/") if path.startswith(STATIC_PREFIX) else OTHER_ROUTE
        metrics = self.by_route.get(route)
        if metrics is None:
            metrics = self.by_route[route] = RequestMetrics(self, route)
        return metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]  # ASGI types
        if scope["type"] != "http" or scope["path"] == "/metrics":
            await self.app(scope, receive, send)
            return
        metrics = self.route_metrics(scope["path"])
        if not scope["path"].startswith(tuple(self.skip_paths)):
            metrics.last_request.set_to_current_time()
        start = default_timer()
        status = 0

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                metrics.record(status, max(default_timer() - start, 0))
            await send(message)

        metrics.in_progress.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            metrics.in_progress.dec()


class Recent(Generic[T]):
    """A value made at most once per `fresh_s`: callers meanwhile share the last one, and callers during
    its making wait for it rather than make another. Serves /metrics here and GET /v1/monitoring
    (service.py), both made from every worker's metric files."""

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


def cache_metrics_page(fresh_s: float) -> None:
    """Make each worker's /metrics at most once per `fresh_s`.

    BentoML 1.4.40's `ServiceAppFactory.metrics` reads every worker's metric files for each request
    (in a thread, but under the GIL): 9,000 connections asking for /metrics left 2 of 240 probes
    answered in a minute (docs/reliability.md#clients-that-never-read). Prometheus scrapes every 15 s
    or so; a page up to `fresh_s` old changes nothing for it. Patches that method (pinned by
    tests/test_lean_route.py); 0 leaves it as it is.
    """
    if not fresh_s:
        return
    from _bentoml_impl.server.app import ServiceAppFactory

    make_page = getattr(ServiceAppFactory.metrics, "made_by", ServiceAppFactory.metrics)  # BentoML's own
    recent: Recent[Response] = Recent(fresh_s)

    async def metrics(self: ServiceAppFactory, request: Request) -> Response:
        page = await recent.get(lambda: make_page(self, request))
        return Response(page.body, status_code=page.status_code, media_type=page.media_type)

    metrics.made_by = make_page  # type: ignore[attr-defined]
    ServiceAppFactory.metrics = metrics  # type: ignore[method-assign,assignment]
