"""The service's one request layer, in front of BentoML's app: admit, read the body, validate, hand to
the batcher, answer, record, in one pass.

For the prediction and outcomes routes (`routes`):
- a body over the size limit: 413 before it is parsed (Content-Length, or counted as it streams); the
  rest of the body is read and dropped first, up to DRAIN_BYTES, since a client that sends its whole
  body before reading (Python's urllib) sees a connection reset instead of the 413 when the server
  closes on unread data (nginx's "lingering close" does the same);
- a Content-Type other than JSON (BentoML would otherwise parse anything as JSON), or a compressed
  body (Content-Encoding other than identity; it would be read as invalid JSON): 415, with
  Accept-Encoding: identity (RFC 9110, 15.5.16);
- more requests in flight in this worker than `max_in_flight`, more request bytes in flight than
  `max_bytes_in_flight` (a flood of 1,000-flight requests is shed while one-flight requests still
  fit: 9,000 never-reading connections posting them left 85% of probes answered without it), or one
  of them waiting for its answer longer than `shed_after_s`: 503 at once with `Retry-After`, so a
  spike is shed quickly instead of queueing into client time-outs. A request is admitted, and
  counted, only once its body is in, and its wait counts from then: slow uploads cannot fill the
  limits (30,000 of them left 125 of 240 new requests answered when they counted);
  serving/connections.py bounds them instead;
- no answer within `timeout_s`: 504 (BentoML's own time-out middleware costs a task and a timer that
  outlives the request, for every request). One timer per worker checks the requests' deadlines
  every tenth of the time-out (at most a second), so a request is cut within that after its
  deadline: `asyncio.timeout`, a timer per request, was 5% of a worker under the reference load;
- POST /v1/prediction (`batched`) is answered here: the body read by the service's FlightReader
  (validated by the API's input model, or a large body straight into columns), the flights handed
  to BentoML's batching dispatcher, or run as their own batch at once when the request is small
  and the worker has few others in flight (`unbatched`), the answer serialized by msgspec
  (serving/internals.py, `BatchedApi`). Under the reference load about half of a worker's CPU
  went to BentoML's per-request framework around this route (docs/performance.md). Other routes go
  on to BentoML's app with the body already read;
- every 4xx/5xx body is `{"error": ..., "detail": [...]}` without the links to the validation
  library's documentation, inputs or tracebacks; the problems of each 400 go to `on_invalid` with
  the request's body, the first MAX_LISTED_PROBLEMS of them to the client.
  On every other route, an error answered as text (Starlette's 404 for an unknown path, 405 for a
  wrong method, 500) gets that same JSON body; a JSON error body there is the route's own and stays;
- a sampled request's body and answer go to the worker's prediction log (serving/prediction_log.py),
  and its answer names it with X-Request-ID (the client's own, if it sent a plain one);
- at shutdown, one log line per worker: requests accepted, answered, and cut (accepted, not answered).

Every request but /metrics is counted in BentoML's request metrics under its route (`metrics`,
bounded labels); a request the layer refuses itself is counted through `on_error_response` instead.
"""

import asyncio
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from timeit import default_timer
from typing import TYPE_CHECKING, Any

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

from serving.prediction_log import PredictionLog

if TYPE_CHECKING:
    from serving.internals import BatchedApi, RouteMetrics, TrafficMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_TYPES = (b"application/json",)
KEPT_PROBLEM_KEYS = ("type", "loc", "msg")  # what a client needs; never "input", "ctx" or "url"
# A 400 lists at most this many problems: 1,000 flights with 5 bad fields each (an 89 KB body) made a
# 1.7 MB answer of 5,000 problems, each unknown airline's listing all 23 airlines.
MAX_LISTED_PROBLEMS = 100
RETRY_AFTER_SECONDS = b"1"
DRAIN_BYTES = 16 * 1_048_576  # of a refused body; past it the connection closes (the request deadline bounds the time)
REASONS = {  # the "error" of each error status, whoever sent it
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    408: "request timeout",
    409: "conflict",
    413: "request too large",
    415: "unsupported media type",
    422: "unprocessable content",
    431: "request header fields too large",
    503: "overloaded, retry shortly",
    504: "timed out",
}
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")

logger = logging.getLogger("bentoml.flight_delay")
SHUTDOWN_LOG = "shutdown: %d requests accepted, %d answered, %d cut"


class BodyTooLargeError(Exception):
    """The request body passed the size limit while streaming in."""

    def __init__(self, more_body: bool) -> None:
        super().__init__()
        self.more_body = more_body  # whether the client has more of it to send (to drain)


class RequestLayer:
    """Wraps BentoML's ASGI app; `routes` are the paths whose requests are admitted and checked."""

    def __init__(
        self,
        app: ASGIApp,
        routes: tuple[str, ...],
        max_body_bytes: int,
        max_in_flight: int,
        max_bytes_in_flight: int,
        shed_after_s: float,
        timeout_s: float,
        unbatched: tuple[int, int] = (0, 0),
        on_error_response: Callable[[int], None] = lambda status: None,
        on_invalid: Callable[[list[dict[str, Any]], bytes], None] = lambda problems, body: None,
        prediction_log: Callable[[], PredictionLog | None] = lambda: None,
        batched: "BatchedApi | None" = None,
        batched_route: str = "/v1/prediction",
        metrics: "TrafficMetrics | None" = None,
    ) -> None:
        self.app = app
        self.routes = routes
        self.max_body_bytes = max_body_bytes
        self.max_in_flight = max_in_flight
        self.max_bytes_in_flight = max_bytes_in_flight
        self.shed_after_s = shed_after_s
        self.timeout_s = timeout_s
        self.unbatched_flights, self.few_requests = unbatched  # (0, 0): every request goes to the dispatcher
        self.on_error_response = on_error_response
        self.on_invalid = on_invalid  # each 400's problems for invalid input, as the client sees them, and its body
        self.open_log = prediction_log  # called at the worker's start: a log of its own, or None
        self.log: PredictionLog | None = None
        self.batched = batched
        self.batched_route = batched_route
        self.metrics = metrics
        self.too_large = f"the body must be at most {max_body_bytes} bytes"
        self.in_flight = 0  # one event loop per worker process: no lock needed
        self.bytes_in_flight = 0  # of the admitted requests' bodies
        self.waiting: OrderedDict[int, float] = OrderedDict()  # request number -> when its body was in, oldest first
        self.deadlines: dict[asyncio.Task[Any], float] = {}  # a request's task -> its deadline, earliest first
        self.expired: set[asyncio.Task[Any]] = set()  # tasks cancelled for passing their deadline
        self.checking: asyncio.TimerHandle | None = None  # the next check of the deadlines, while any is open
        self.accepted = 0
        self.answered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, self.lifespan(receive) if scope["type"] == "lifespan" else receive, send)
        elif scope["path"] in self.routes:
            await self.admitted(scope, receive, send)
        else:
            await self.passed_on(scope, receive, CleanErrors(send, keep_json=True))

    async def admitted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request of a checked route: refused, shed, or answered within the time-out."""
        headers = dict(scope["headers"])
        media_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if media_type not in JSON_TYPES:
            await self.refuse(send, 415, "the request body must be JSON: send it with Content-Type: application/json")
            return
        if headers.get(b"content-encoding", b"identity").strip().lower() != b"identity":
            await self.refuse(send, 415, "the request body must not be compressed: send it without Content-Encoding")
            return
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_body_bytes:
            if b"expect" not in headers:  # a client waiting for 100 Continue has sent no body
                await drain(receive)
            await self.refuse(send, 413, self.too_large)
            return
        responding = CleanErrors(send, self.on_invalid)
        number = size = 0  # the request's number and body bytes once admitted (its body in, not shed)
        task = self.deadline_set()
        try:
            body = await read_body(receive, self.max_body_bytes)
            if body is None:  # the client left before its body was in
                return
            size = len(body)
            if self.overloaded(size):
                await self.refuse(send, 503, "the service is at capacity, retry after 1 s")
                return
            self.bytes_in_flight += size
            self.in_flight += 1
            self.accepted += 1
            number = self.accepted
            self.waiting[number] = time.monotonic()
            logged = self.log is not None and self.log.sampled()
            if self.batched is not None and scope["path"] == self.batched_route and scope["method"] == "POST":
                await self.predict(headers, body, send, logged)
            else:
                responding.request_body = body
                await self.passed_on_logged(scope, headers, body, receive, responding, logged)
            self.answered += 1
        except BodyTooLargeError as exc:
            self.deadlines.pop(task, None)  # the refusal is not held to the deadline
            if exc.more_body:
                await drain(receive)
            await self.refuse(send, 413, self.too_large)
        except asyncio.CancelledError:
            if not self.timed_out(task):
                raise
            if responding.started:  # too late for a 504: the client sees the connection close
                raise TimeoutError from None
            await self.refuse(send, 504, f"no answer within {self.timeout_s:g} s, retry later")
            if number:
                self.answered += 1
        finally:
            self.deadlines.pop(task, None)
            if task in self.expired:  # cancelled, but the cancellation was caught below (BentoML's dispatcher)
                self.timed_out(task)
            if number:
                self.in_flight -= 1
                self.bytes_in_flight -= size
                self.waiting.pop(number, None)

    def deadline_set(self) -> "asyncio.Task[Any]":
        """The current request's task, given its deadline; the deadlines' check scheduled if none is."""
        task = asyncio.current_task()
        assert task is not None  # uvicorn runs each request in a task
        loop = asyncio.get_running_loop()
        self.deadlines[task] = loop.time() + self.timeout_s  # one time-out for all: the dict stays in order
        if self.checking is None:
            self.checking = loop.call_later(self.check_every_s, self.check_deadlines)
        return task

    @property
    def check_every_s(self) -> float:
        return min(self.timeout_s / 10, 1.0)

    def check_deadlines(self) -> None:
        """Cancel the tasks of the requests past their deadline, earliest first; check again while any is open."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self.deadlines:
            task, deadline = next(iter(self.deadlines.items()))
            if deadline > now:
                break
            del self.deadlines[task]
            self.expired.add(task)
            task.cancel()
        self.checking = loop.call_later(self.check_every_s, self.check_deadlines) if self.deadlines else None

    def timed_out(self, task: "asyncio.Task[Any]") -> bool:
        """Whether `task` was cancelled for its deadline alone (not also by the server, as when the
        client leaves), its cancellation then taken back, as `asyncio.timeout` does."""
        if task not in self.expired:
            return False
        self.expired.discard(task)
        return task.uncancel() == 0

    def overloaded(self, size: int) -> bool:
        """Too many requests in flight, or too many bytes with this body's `size` (a lone request is
        always admitted), or the one waiting longest has waited too long."""
        if self.in_flight >= self.max_in_flight:
            return True
        if self.in_flight and self.bytes_in_flight + size > self.max_bytes_in_flight:
            return True
        oldest = next(iter(self.waiting.values()), None)
        return oldest is not None and time.monotonic() - oldest > self.shed_after_s

    async def predict(self, headers: dict[bytes, bytes], body: bytes, send: Send, logged: bool) -> None:
        """Validate, batch, answer and record POST /v1/prediction, with no framework in between."""
        assert self.batched is not None
        metrics = self.started(self.batched_route)
        start = default_timer()
        try:
            status, answer = await self.batched_answer(body)
            if metrics is not None:
                metrics.record(status, max(default_timer() - start, 0))
            if status != 200:
                response_headers = [self.batched.headers[1], *error_headers(status, answer)]
            else:
                response_headers = [*self.batched.headers, (b"content-length", str(len(answer)).encode())]
                if logged and self.log is not None:
                    named = request_id(headers)
                    response_headers.append((b"x-request-id", named.encode()))
                    self.log.offer(self.batched_route, named, body, answer)
            await send({"type": "http.response.start", "status": status, "headers": response_headers})
            await send({"type": "http.response.body", "body": answer})
        finally:
            if metrics is not None:
                metrics.finish()

    async def batched_answer(self, body: bytes) -> tuple[int, bytes]:
        """Status and body of the answer: the predictions, or a clean error."""
        assert self.batched is not None
        try:
            flights = self.batched.read(body)
            return 200, await self.batched.infer(flights, now=await self.unbatched(len(flights)))
        except ValidationError as exc:
            problems = exc.errors(include_context=False, include_input=False, include_url=False)
            kept = [{key: value for key, value in problem.items() if key in KEPT_PROBLEM_KEYS} for problem in problems]
            self.on_invalid(kept, body)
            return 400, invalid_body(kept)
        except BentoMLException as exc:
            logger.exception("prediction refused")
            return exc.error_code.value, clean_body(exc.error_code.value, b"")
        except Exception:
            logger.exception("prediction failed")
            return 500, clean_body(500, b"")

    async def unbatched(self, flights: int) -> bool:
        """Whether to run a request of `flights` as its own batch at once: few flights, and few requests in
        flight in the worker once those read in the same turn of the event loop are in.

        With a new connection per request, batches hold one or two requests, and BentoML's dispatcher
        cost more than it saved: its controller, sizing each input by its container type, and the
        futures were about a sixth of a worker's samples (py-spy, docs/performance.md). Without the
        turn, under keep-alive load, each request was alone as it was read and batching stopped
        (0.46x in the reference shape)."""
        if flights > self.unbatched_flights or self.in_flight > self.few_requests:
            return False
        await asyncio.sleep(0)
        return self.in_flight <= self.few_requests

    async def passed_on_logged(
        self,
        scope: Scope,
        headers: dict[bytes, bytes],
        body: bytes,
        receive: Receive,
        send: "CleanErrors",
        logged: bool,
    ) -> None:
        """An admitted request answered by BentoML's app, its body given whole; a sampled one logged."""
        if not logged or self.log is None:
            await self.passed_on(scope, replaying(body, receive), send)
            return
        logging_send = LoggedResponse(send, request_id(headers))
        await self.passed_on(scope, replaying(body, receive), logging_send)
        if logging_send.status == 200 and not logging_send.replayed:  # a replayed answer was logged the first time
            self.log.offer(scope["path"], logging_send.request_id, body, b"".join(logging_send.chunks))

    async def passed_on(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request answered by BentoML's app, recorded in the request metrics (but /metrics)."""
        metrics = None if scope["path"] == "/metrics" else self.started(scope["path"])
        if metrics is None:
            await self.app(scope, receive, send)
            return
        start = default_timer()
        status = 0

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                metrics.record(status, max(default_timer() - start, 0))
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            metrics.finish()

    def started(self, path: str) -> "RouteMetrics | None":
        """The metrics of `path`'s route with this request counted in progress (None: metrics off)."""
        if self.metrics is None:
            return None
        metrics = self.metrics.of(path)
        metrics.start()
        return metrics

    async def refuse(self, send: Send, status: int, message: str) -> None:
        """Answer with the layer's own error response, and count it."""
        self.on_error_response(status)
        await respond(send, status, message)

    def lifespan(self, receive: Receive) -> Receive:
        """`receive` of the lifespan that opens the prediction log at start, and at shutdown logs the
        counts and writes what the prediction log holds.

        The server sends the shutdown event only after the open requests have finished or its
        graceful timeout has passed, so `cut` is what a stop lost.
        """

        async def receive_lifespan() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.log = self.open_log()
            elif message["type"] == "lifespan.shutdown":
                if self.metrics is not None:
                    self.metrics.writes.write()  # the request metrics kept since the last write
                logger.info(SHUTDOWN_LOG, self.accepted, self.answered, self.accepted - self.answered)
                if self.log is not None:
                    self.log.close()
            return message

        return receive_lifespan


class LoggedResponse:
    """A `send` that keeps a copy of the response for the prediction log and, on a 200, names its
    request (X-Request-ID) to the client: the id of its records."""

    def __init__(self, send: Send, request_id: str) -> None:
        self.send = send
        self.request_id = request_id
        self.status = 0
        self.replayed = False  # an outcomes answer given again for a retried Idempotency-Key
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.replayed = (b"idempotent-replayed", b"true") in message["headers"]
            if self.status == 200:  # the answers the log keeps
                message = {**message, "headers": [*message["headers"], (b"x-request-id", self.request_id.encode())]}
        else:
            self.chunks.append(message.get("body", b""))
        await self.send(message)


def request_id(headers: dict[bytes, bytes]) -> str:
    """The client's X-Request-ID if it is a plain token (up to 128 of letters, digits and ._:-), else a new one."""
    sent = headers.get(b"x-request-id", b"")
    return sent.decode() if REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex


class CleanErrors:
    """A `send` that rewrites error bodies (status >= 400) and passes every other response through;
    with `keep_json`, an error already answered as JSON passes through too."""

    def __init__(
        self,
        send: Send,
        on_invalid: Callable[[list[dict[str, Any]], bytes], None] = lambda problems, body: None,
        keep_json: bool = False,
    ) -> None:
        self.send = send
        self.on_invalid = on_invalid
        self.keep_json = keep_json
        self.request_body = b""  # the request's, for on_invalid
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        self.started = False  # whether any part of a response has gone to the client

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400 and not self.json_kept(message):
            self.start = message  # held until the whole body is known
            return
        if self.start is None:
            self.started = True
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        status = self.start["status"]
        body = clean_body(status, b"".join(self.chunks), lambda problems: self.on_invalid(problems, self.request_body))
        kept = [(k, v) for k, v in self.start["headers"] if k.lower() not in (b"content-length", b"content-type")]
        headers = kept + error_headers(status, body)
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    def json_kept(self, start: Message) -> bool:
        """Whether the error that `start` begins passes through: JSON, and `keep_json` asked for."""
        if not self.keep_json:
            return False
        media_type = next((v for k, v in start["headers"] if k.lower() == b"content-type"), b"")
        return media_type.split(b";")[0].strip().lower() in JSON_TYPES


def clean_body(
    status: int, body: bytes, on_invalid: Callable[[list[dict[str, Any]]], None] = lambda problems: None
) -> bytes:
    """The error body a client sees: a short reason and, for invalid input, each field and problem
    (all of a 400's problems go to `on_invalid`, the listed ones to the client)."""
    try:
        original = json.loads(body)
    except ValueError:
        original = None
    if isinstance(original, list) and len(original) == 1:  # BentoML wraps some errors in a list
        original = original[0]
    problems = original.get("detail") if isinstance(original, dict) else None
    kept = (
        [{key: problem[key] for key in KEPT_PROBLEM_KEYS if key in problem} for problem in problems]
        if status < 500 and isinstance(problems, list) and all(isinstance(problem, dict) for problem in problems)
        else []
    )
    if status == 400 and isinstance(problems, list):
        on_invalid(kept)
        return invalid_body(kept)
    reason = REASONS.get(status, "internal error, see the server log" if status >= 500 else "request refused")
    return dump({"error": reason, "detail": kept})


def invalid_body(problems: list[dict[str, Any]]) -> bytes:
    """A 400's body: how many problems the input has, and the first MAX_LISTED_PROBLEMS of them."""
    listed = problems[:MAX_LISTED_PROBLEMS]
    more = f", the first {len(listed)} listed" if len(listed) < len(problems) else ""
    return dump({"error": f"invalid request: {len(problems)} problem(s){more}", "detail": listed})


def error_headers(status: int, body: bytes) -> list[tuple[bytes, bytes]]:
    """Headers of every error the layer sends: JSON, its length, Retry-After on a 503, the one content
    coding taken on a 415, and a close after a 413 (the rest of a body too large to read would
    otherwise be read as the next request)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", RETRY_AFTER_SECONDS))
    elif status == 415:
        headers.append((b"accept-encoding", b"identity"))
    elif status == 413:
        headers.append((b"connection", b"close"))
    return headers


async def read_body(receive: Receive, limit: float = float("inf")) -> bytes | None:
    """The whole request body, or None if the client disconnected first; BodyTooLargeError past `limit` bytes."""
    chunks = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLargeError(message.get("more_body", False))
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` that gives the body already read, whole, then passes on to the server's."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_replayed() -> Message:
        return pending.pop() if pending else await receive()

    return receive_replayed


async def drain(receive: Receive) -> None:
    """Read and drop what is left of a refused request body, up to DRAIN_BYTES."""
    seen = 0
    while seen <= DRAIN_BYTES:
        message = await receive()
        seen += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return


def shutdown_counts(log: str) -> list[dict[str, int]]:
    """Each worker's shutdown line in a service log, as counts."""
    pattern = re.escape(SHUTDOWN_LOG).replace("%d", r"(\d+)")
    return [
        {"accepted": int(accepted), "answered": int(answered), "cut": int(cut)}
        for accepted, answered, cut in re.findall(pattern, log)
    ]


def dump(payload: dict[str, Any]) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(payload, separators=(",", ":")).encode()


def error_body(status: int, message: str) -> bytes:
    """The body of an error the service sends itself: the status's reason and one problem saying why."""
    error = REASONS[status]
    return dump(
        {"error": error, "detail": [{"type": error.split(",")[0].replace(" ", "_"), "loc": [], "msg": message}]}
    )


async def respond(send: Send, status: int, message: str) -> None:
    """A complete JSON error response sent by the layer itself."""
    body = error_body(status, message)
    await send({"type": "http.response.start", "status": status, "headers": error_headers(status, body)})
    await send({"type": "http.response.body", "body": body})
