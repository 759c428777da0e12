"""Every reliance of the service on the internals of BentoML, uvicorn and prometheus_client, made here
and nowhere else.

BentoML 1.4.40, uvicorn 0.55 and prometheus_client 0.26 are pinned in requirements.txt; each reliance
below is pinned by the test named, which fails when an upgrade moves what it depends on.

1. `cap_learned_wait`: patches `bentoml._internal.marshal.dispatcher.Optimizer` (`__init__`'s `o_a`,
   `o_b`; `trigger_refresh`'s `wait`) so adaptive batching runs a batch as soon as the model is free.
   Pinned by tests/test_internals.py::test_batching_waits_are_capped_on_bentoml_optimizer. Its
   end-to-end test, ::test_cap_keeps_lone_requests_after_a_burst_fast, times its burst by the
   optimizer's refresh schedule (`N_SKIPPED_SAMPLE` batches skipped, a refresh at the next one, then
   every `INTERVAL_REFRESH_PARAMS` s at most): if that moves, the uncapped side learns no wait and
   the test fails.
2. `arrange_app`: replaces `ServiceAppFactory.middlewares` (a property) so the service's one request
   layer (serving/layer.py) stands first, in place of BentoML's `RunnerTrafficMetricsMiddleware`, and
   BentoML's `TimeoutMiddleware` (and `OpenTelemetryMiddleware` unless tracing) are dropped.
   Pinned by tests/test_internals.py::test_one_request_layer_stands_in_front_of_bentoml_app.
3. `BatchedApi`: hands validated flights to BentoML's batching dispatcher
   (`ServiceAppFactory.dispatchers[name]`, called as `batch_infer` calls it, its `get_batch_size`
   set to `len` since flights may come as columns, which BentoML's containers count as one, and its
   `max_batch_size` read, the largest request run without it) with
   its own batch callback, reading `factory.service.apis[name]` (`batchable`, `func`, `batch_dim`,
   `ctx_param`), `factory._service_instance`, `factory.name`,
   `enable_metrics` and `adaptive_batch_size_hist` with `batch_infer`'s labels. Pinned by
   tests/test_internals.py::test_batched_api_answers_exactly_as_bentoml_path and
   ::test_dispatcher_counts_columns_by_their_flights.
4. `TrafficMetrics`: records BentoML's request metrics with the metric objects of
   `RunnerTrafficMetricsMiddleware._setup()` (`metrics_request_*`, `metrics_last_request_timestamp`,
   `skip_paths`) and `server_context`'s names. Pinned by
   tests/test_internals.py::test_layer_records_bentoml_request_and_batch_metrics.
5. `cache_metrics_page`: wraps `ServiceAppFactory.metrics`, BentoML's /metrics endpoint (the
   worker's kept metrics written first, `MetricWrites`). Pinned by
   tests/test_internals.py::test_metrics_page_is_made_at_most_once_per_interval and
   ::test_layer_records_bentoml_request_and_batch_metrics.
6. `install_connection_limits`: points `uvicorn.config.HTTP_PROTOCOLS["auto"]` (BentoML's worker
   builds `uvicorn.Config` without `http=`) at serving/connections.py's `DeadlineProtocol`, a subclass
   of `HttpToolsProtocol` that uses its attributes listed in that module's docstring, and hands it a
   transport that joins each answer's head to its body. Pinned by tests/test_connections.py.
7. `PredictionList`: a list output declared on `_bentoml_sdk.io_models.IORootModel` with its
   `media_type`, which spares BentoML building the type's JSON schema for every response. Pinned by
   tests/test_internals.py::test_batched_api_answers_exactly_as_bentoml_path (the content type).
8. `/static_content/`: the Swagger UI files BentoML ships and serves there, used by the service's
   own API page (serving/api_page.py). Pinned by tests/test_api_page.py.
9. `PROMETHEUS_MULTIPROC_DIR`: BentoML keeps every worker's metric files there and clears it at the
   server's start; serving/monitoring.py reads them, serving/idempotency.py keeps its store beside
   them (`multiprocess_dir`). Pinned by tests/test_monitoring.py and tests/test_outcomes.py.
10. `service.openapi_spec.asdict()`: BentoML's generated OpenAPI document of the service, reshaped by
    serving/api_page.py. Pinned by tests/test_api_page.py.
11. `read_cached_addresses`: replaces the `get_local_addr` and `get_remote_addr` that
    `HttpToolsProtocol.connection_made` calls from its module's globals with readers of the
    transport's `sockname` and `peername`. Pinned by
    tests/test_connections.py::test_protocol_reads_each_connections_addresses_without_its_socket.
12. `MetricWrites`: adds a histogram child's kept values through its `_sum`, `_buckets` and
    `_upper_bounds` (prometheus_client 0.26, as `Histogram.observe` does without exemplars). Pinned by
    tests/test_internals.py::test_metric_writes_add_up_to_each_update_written_alone.
13. `quiet_client_errors`: filters the records of `bentoml._internal.server.http_app`'s logger, where
    `ServiceAppFactory.api_endpoint_wrapper` logs every pydantic ValidationError of an API route
    (`log_exception`, with its traceback) before answering 400. Pinned by
    tests/test_internals.py::test_a_clients_invalid_body_logs_no_traceback_and_a_failure_still_does.
"""

import asyncio
import bisect
import inspect
import itertools
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from _bentoml_impl.server.app import ServiceAppFactory
from _bentoml_sdk.io_models import IORootModel
from bentoml._internal.context import server_context
from bentoml._internal.marshal import dispatcher
from bentoml._internal.server import http_app
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from pydantic import ValidationError
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.protocols import utils as uvicorn_utils
from uvicorn.protocols.http import httptools_impl

from models.features import FlightReader, Flights
from models.schema import Prediction
from serving import connections
from serving.metrics import Recent
from serving.settings import ALONE_FLIGHTS

MAX_WAIT_S = 0.001  # one tick of the dispatcher's polling loop
WRITE_EVERY_S = 0.05  # how often a worker writes its request metrics (MetricWrites)
OTHER_ROUTE = "other"  # the endpoint label of every path the service does not serve
STATIC_PREFIX = "/static_content/"  # the API page's files, under one label
ANSWERS = msgspec.json.Encoder()  # the lean route's answers: pydantic's bytes (tests/test_internals.py)


class PredictionList(IORootModel[list[Prediction]]):
    """Response of /v1/prediction: one Prediction per flight, in request order.

    Declaring the media type spares BentoML from building this type's JSON schema again for
    every response to find it (a quarter of a worker's CPU time under load, measured with py-spy).
    """

    media_type = "application/json"


def cap_learned_wait(max_wait_s: float = MAX_WAIT_S) -> None:
    """Keep BentoML's learned and initial batching waits under `max_wait_s`: greedy batching.

    BentoML's CorkDispatcher holds each request until its queue looks worth a batch, using a wait it
    learns from the waits it saw. Under load those include the time behind the running batch, so the
    learned wait grows with load and then decays very slowly; its initial estimates also scale with
    max_latency_ms (0.67 s per item at 10 s). This model's cost per batch is almost flat, so the best
    policy is to run a batch as soon as the model is free, with all requests queued meanwhile.
    Measured with `python -m loadtest.reliability after-burst`: lone requests in the 12 s after a
    10-s burst took a median of 90.9 ms without the cap and 9.0 ms with it.
    """
    optimizer = dispatcher.Optimizer
    if getattr(optimizer, "_flight_delay_capped", False):
        return
    original_init, original_refresh = optimizer.__init__, optimizer.trigger_refresh

    def init(self: Any, max_latency: float) -> None:
        original_init(self, max_latency)
        self.o_a, self.o_b = min(self.o_a, max_wait_s), min(self.o_b, max_wait_s)

    def refresh(self: Any) -> None:
        original_refresh(self)
        self.wait = min(self.wait, max_wait_s)

    optimizer.__init__ = init  # type: ignore[method-assign]  # the patch itself
    optimizer.trigger_refresh = refresh  # type: ignore[method-assign]  # the patch itself
    optimizer._flight_delay_capped = True  # type: ignore[attr-defined]  # applied once per process


class BatchedApi:
    """A batched API of BentoML's app, called without BentoML's per-request framework: flights are
    read by the service's FlightReader (validated with the API's own input model, or straight into
    columns) and handed to BentoML's batching dispatcher, so batches are formed, sized and counted
    (`adaptive_batch_size`) as on BentoML's own path; the answer is serialized by msgspec, byte for
    byte as pydantic's `dump_json` of the output type would (a test) at a third of its time (BentoML
    dumps to Python objects and then `json.dumps` them: 4x pydantic's time for 100 flights).

    The dispatcher runs `run_batch`, not `ServiceAppFactory.batch_infer`'s callback: that one is
    built anew for every request and, per batch, looks up the histogram's child, finds a container
    class for the batch's type and binds the API method again (`inspect.signature` each time). A
    py-spy profile with a new connection per request, where batches hold one to three requests, put
    about a tenth of a worker's samples there. `run_batch` joins the requests' flights (the reader's
    `join`), splits the answers' lists as BentoML's list container does, and calls the API's function
    on the service instance directly."""

    def __init__(self, factory: ServiceAppFactory, name: str, reader: FlightReader) -> None:
        api = factory.service.apis[name]
        if not api.batchable:
            raise ValueError(f"{name} is not batchable: BentoML's own path serves it")
        if not inspect.iscoroutinefunction(api.func) or api.batch_dim != (0, 0) or api.ctx_param:
            raise ValueError(f"{name} must be an async batch function of lists, without a context")
        self.factory = factory
        self.name = name
        self.read = reader.read  # a body's flights; pydantic's ValidationError for an invalid body
        self.join = reader.join
        self.function = api.func
        self.serialize = ANSWERS.encode
        self.headers = [(b"content-type", b"application/json"), (b"server", f"BentoML Service/{factory.name}".encode())]
        self.submit: Any = None  # the dispatcher's entry, made on the first request (the instance exists by then)
        self.batch_sizes: Any = None
        self.running = 0  # batches of the batch function running (the dispatcher runs one at a time)
        self.largest = 0  # flights the dispatcher puts in a batch at most (its max_batch_size)
        self.alone = asyncio.Semaphore(1)  # large requests, one at a time, as the dispatcher's batches

    async def infer(self, flights: Flights, now: bool = False) -> bytes:
        """The serialized answer to read flights; BentoMLException or any error of the batch function.

        `now`: run it as a batch of its own at once, unless a batch is running: the batch function never
        runs twice at a time on the event loop (the layer asks `now` only of requests small enough for
        the function to answer there, without a pause).

        A request of ALONE_FLIGHTS or more (up to the dispatcher's largest batch) is a batch already:
        joining it to others would not make its flights cheaper, so it skips the dispatcher and runs
        as its own batch, one such batch at a time (the dispatcher's controller, its futures and the
        join cost more than they save there; not so at 100 flights a request, docs/performance.md)."""
        if self.submit is None:
            if self.factory.enable_metrics:
                self.batch_sizes = self.factory.adaptive_batch_size_hist.labels(
                    runner_name=self.factory.service.name,
                    worker_index=server_context.worker_index,
                    method_name=self.name,
                    service_version=server_context.bento_version,
                    service_name=server_context.bento_name,
                )
            dispatcher: Any = self.factory.dispatchers[self.name]
            dispatcher.get_batch_size = len
            self.largest = dispatcher.max_batch_size
            self.submit = dispatcher(self.run_batch)
        if now and not self.running:
            (answer,) = await self.run_batch([flights])
        elif ALONE_FLIGHTS <= len(flights) <= self.largest:
            async with self.alone:
                (answer,) = await self.run_batch([flights])
        else:
            answer = await self.submit(flights)
        return self.serialize(answer)

    async def run_batch(self, batches: Sequence[Flights]) -> list[list[Any]]:
        """The answers of each request in a batch the dispatcher formed (or of one request run alone)."""
        self.running += 1
        try:
            if self.batch_sizes is not None:
                WRITES.observe(self.batch_sizes, len(batches))
            if len(batches) == 1:
                return [await self.function(self.factory._service_instance, batches[0])]
            flights = self.join(batches)
            answers = await self.function(self.factory._service_instance, flights)
            ends = list(itertools.accumulate(len(batch) for batch in batches))
            return [answers[end - len(batch) : end] for batch, end in zip(batches, ends, strict=True)]
        finally:
            self.running -= 1


class MetricWrites:
    """Updates of Prometheus values kept in the worker's memory and written to its metric file every
    WRITE_EVERY_S, and before the worker makes a /metrics page or stops.

    prometheus_client, in the multiprocess mode BentoML runs, writes every update to the worker's
    metric file under a lock, after a check for a fork: a request made six such writes (its in-progress
    gauge twice, the time of the last request, its count, its duration, its batch's size), about 20 us
    of a worker's CPU a request with a new connection per request (docs/performance.md, "Request
    metrics written every 0.05 s").
    Written once a turn of the event loop instead, they saved nothing there, since about one request
    ends per turn. Here each value is written once per interval: the counts added up, the durations put
    in their buckets, the gauges' last values. A page another worker makes may lack up to
    WRITE_EVERY_S of this worker's requests; a worker killed outright loses as much. Only the event
    loop's thread may call it.

    Histograms are added to through their children's `_sum`, `_buckets` and `_upper_bounds`
    (prometheus_client 0.26's `Histogram.observe` without exemplars), pinned by
    tests/test_internals.py::test_metric_writes_add_up_to_each_update_written_alone.
    """

    def __init__(self) -> None:
        self.added: defaultdict[Any, float] = defaultdict(float)  # a counter or gauge child -> its increments
        self.observed: dict[Any, list[float]] = {}  # a histogram's child -> its values
        self.last: dict[Any, float] = {}  # a gauge's child -> its last value
        self.timer: asyncio.TimerHandle | None = None  # the next write, while any update waits for it

    def inc(self, child: Any, amount: float = 1.0) -> None:
        self.added[child] += amount
        if self.timer is None:
            self.write_soon()

    def observe(self, child: Any, value: float) -> None:
        self.observed.setdefault(child, []).append(value)
        if self.timer is None:
            self.write_soon()

    def set(self, child: Any, value: float) -> None:
        self.last[child] = value
        if self.timer is None:
            self.write_soon()

    def write_soon(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(WRITE_EVERY_S, self.write)

    def write(self) -> None:
        """Write every update kept, each value once."""
        if self.timer is not None:
            self.timer.cancel()  # written now, by a page or at shutdown (harmless if it is this timer's call)
            self.timer = None
        added, observed, last = self.added, self.observed, self.last
        self.added, self.observed, self.last = defaultdict(float), {}, {}
        for child, amount in added.items():
            if amount:  # a gauge's +1 and -1 within the interval write nothing
                child.inc(amount)
        for child, values in observed.items():
            child._sum.inc(sum(values))
            in_buckets: defaultdict[int, int] = defaultdict(int)
            for value in values:
                in_buckets[bisect.bisect_left(child._upper_bounds, value)] += 1  # the first bound >= value
            for bucket, count in in_buckets.items():
                child._buckets[bucket].inc(count)
        for child, value in last.items():
            child.set(value)


WRITES = MetricWrites()  # the worker's: its request metrics and batch sizes


class RouteMetrics:
    """BentoML's request metrics of one route, recorded through children looked up once per status and
    written by the worker's `MetricWrites`."""

    def __init__(self, traffic: RunnerTrafficMetricsMiddleware, route: str, stamped: bool) -> None:
        self.traffic = traffic
        self.writes = WRITES
        self.stamped = stamped  # whether a request stamps last_request_timestamp_seconds (BentoML's skip_paths)
        self.labels = {
            "endpoint": route,
            "service_name": server_context.bento_name,
            "service_version": server_context.bento_version,
            "runner_name": server_context.service_name,
        }
        names = {key: self.labels[key] for key in ("service_name", "service_version", "runner_name")}
        self.in_progress = traffic.metrics_request_in_progress.labels(**self.labels)
        self.last_request = traffic.metrics_last_request_timestamp.labels(**names)
        self.by_status: dict[int, tuple[Any, Any]] = {}

    def start(self) -> None:
        """A request of the route has started."""
        if self.stamped:
            self.writes.set(self.last_request, time.time())
        self.writes.inc(self.in_progress)

    def record(self, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        children = self.by_status.get(status)
        if children is None:
            labels = {**self.labels, "http_response_code": status}
            children = (
                self.traffic.metrics_request_total.labels(**labels),
                self.traffic.metrics_request_duration.labels(**labels),
            )
            self.by_status[status] = children
        self.writes.inc(children[0])
        self.writes.observe(children[1], seconds)

    def finish(self) -> None:
        """A request of the route has ended, answered or not."""
        self.writes.inc(self.in_progress, -1.0)


class TrafficMetrics:
    """BentoML's request metrics under bounded labels: each request's path is replaced by its route,
    one of `routes` or OTHER_ROUTE (BentoML labels raw paths: 20,000 random paths made /metrics 76 MB,
    one scrape 30 s and a worker 701 MiB, issue 18). Statuses are the service's own; methods no label."""

    def __init__(self, routes: frozenset[str], options: dict[str, Any]) -> None:
        self.traffic = RunnerTrafficMetricsMiddleware(None, **options)  # type: ignore[arg-type]  # only its metric objects
        self.routes = routes
        self.by_route: dict[str, RouteMetrics] = {}  # at most len(routes) + 2 entries
        self.writes = WRITES

    def of(self, path: str) -> RouteMetrics:
        """The metrics of the route `path` is counted under."""
        if path in self.routes:
            route = path
        else:
            route = STATIC_PREFIX.rstrip("/") if path.startswith(STATIC_PREFIX) else OTHER_ROUTE
        metrics = self.by_route.get(route)
        if metrics is None:
            if not self.traffic._is_setup:
                self.traffic._setup()
            stamped = not path.startswith(tuple(self.traffic.skip_paths))
            metrics = self.by_route[route] = RouteMetrics(self.traffic, route, stamped)
        return metrics


def arrange_app(
    layer: type,
    tracing: bool,
    batched_api: str | None,
    reader: FlightReader,
    metric_routes: frozenset[str],
    **options: Any,
) -> None:
    """Make BentoML build its app with `layer` first (after Starlette's error middleware), given
    BentoML's app factory's `BatchedApi` of `batched_api`, reading bodies with `reader` (None:
    BentoML's own path serves it), and
    `TrafficMetrics` in place of BentoML's metrics middleware, and without BentoML's time-out
    middleware (the layer times requests out itself) or its tracing middleware unless requests are
    traced. Paired 20-s runs of the reference load: 1,684 and 1,668 req/s as BentoML arranges its
    middlewares, 2,137 and 2,158 without the time-out and tracing ones (p99 250 ms -> 147 ms)."""
    listed = getattr(ServiceAppFactory.middlewares.fget, "listed", ServiceAppFactory.middlewares.fget)  # BentoML's own
    dropped = {"TimeoutMiddleware", RunnerTrafficMetricsMiddleware.__name__} | (
        set() if tracing else {"OpenTelemetryMiddleware"}
    )

    def arranged(self: ServiceAppFactory) -> list[Middleware]:
        own = listed(self)
        traffic = [m.kwargs for m in own if m.cls is RunnerTrafficMetricsMiddleware]
        first = Middleware(
            layer,  # type: ignore[arg-type]
            batched=BatchedApi(self, batched_api, reader) if batched_api else None,
            metrics=TrafficMetrics(metric_routes, traffic[0]) if traffic else None,
            **options,
        )
        return [first, *(m for m in own if m.cls.__name__ not in dropped)]  # type: ignore[attr-defined]

    arranged.listed = listed  # type: ignore[attr-defined]
    ServiceAppFactory.middlewares = property(arranged)  # type: ignore[method-assign,assignment]


def cache_metrics_page(fresh_s: float) -> None:
    """Make each worker's /metrics at most once per `fresh_s`, after writing its kept metrics (`WRITES`).

    BentoML's endpoint reads every worker's metric files for each request (in a thread, but under the
    GIL): 9,000 connections asking for /metrics left 2 of 240 probes answered in a minute
    (docs/reliability.md#clients-that-never-read). Prometheus scrapes every 15 s or so; a page up to
    `fresh_s` old changes nothing for it. 0 makes a page for every request.
    """
    make_page = getattr(ServiceAppFactory.metrics, "made_by", ServiceAppFactory.metrics)  # BentoML's own

    async def written_page(self: ServiceAppFactory, request: Request) -> Response:
        WRITES.write()
        return await make_page(self, request)  # type: ignore[no-any-return]

    recent: Recent[Response] = Recent(fresh_s)

    async def metrics(self: ServiceAppFactory, request: Request) -> Response:
        if not fresh_s:
            return await written_page(self, request)
        page = await recent.get(lambda: written_page(self, request))
        return Response(page.body, status_code=page.status_code, media_type=page.media_type)

    metrics.made_by = make_page  # type: ignore[attr-defined]
    ServiceAppFactory.metrics = metrics  # type: ignore[method-assign,assignment]


def install_connection_limits(limits: connections.Limits) -> connections.Limits:
    """Make the worker's uvicorn serve with `connections.DeadlineProtocol`, its cap kept FD_RESERVE under
    the open-file limit. Returns the limits in force."""
    in_force = connections.configure(limits)
    HTTP_PROTOCOLS["auto"] = f"{connections.__name__}:DeadlineProtocol"
    return in_force


def address(info: Any) -> tuple[str, int] | None:
    """A TCP address as uvicorn puts it in the scope, (host, port), from a socket's name (IPv4's pair or
    IPv6's four); None for anything else."""
    return (str(info[0]), int(info[1])) if isinstance(info, tuple) and len(info) >= 2 else None


def read_cached_addresses() -> None:
    """Make uvicorn's HTTP protocol read a new connection's two addresses from its transport's extra
    info, where the event loop keeps them from the accept (uvloop reads both then), instead of through
    the transport's socket: with uvloop that makes a socket object for each address, and five system
    calls a connection (strace; docs/performance.md). Anything but TCP goes to uvicorn's own."""

    def local(transport: asyncio.Transport) -> tuple[str, int | None] | None:
        return address(transport.get_extra_info("sockname")) or uvicorn_utils.get_local_addr(transport)

    def remote(transport: asyncio.Transport) -> tuple[str, int] | None:
        return address(transport.get_extra_info("peername")) or uvicorn_utils.get_remote_addr(transport)

    httptools_impl.get_local_addr = local
    httptools_impl.get_remote_addr = remote


def quiet_client_errors() -> None:
    """Keep a client's invalid body out of the server log: BentoML logs each one on /predict as an
    error with a 30-line traceback, so bad traffic filled the log (and its reader) with the client's
    mistakes. Its 400 is answered and counted as before; any other exception is still logged."""
    logging.getLogger(http_app.__name__).addFilter(
        lambda record: not (record.exc_info and isinstance(record.exc_info[1], ValidationError))
    )


def multiprocess_dir() -> Path:
    """The directory of this server's metric files, shared by its workers and cleared at its start."""
    return Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
