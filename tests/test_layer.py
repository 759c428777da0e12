"""The request layer on its own, in front of stand-in apps: what it refuses, sheds, rewrites and counts."""

import asyncio
import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel

from serving.internals import MetricWrites
from serving.layer import RequestLayer, Scope, shutdown_counts

ROUTE = "/v1/prediction"
JSON = [(b"content-type", b"application/json")]


class Gate:
    """A stand-in app that answers 200 once opened, and records the requests that reached it."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.reached = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.reached += 1
        while (await receive()).get("more_body"):
            pass
        await self.opened.wait()
        await send({"type": "http.response.start", "status": 200, "headers": JSON})
        await send({"type": "http.response.body", "body": b"[]"})


def guard(
    app: Any,
    max_in_flight: int = 100,
    shed_after_s: float = 60.0,
    timeout_s: float = 60.0,
    max_bytes_in_flight: int = 1_000_000,
) -> RequestLayer:
    return RequestLayer(
        app,
        (ROUTE,),
        max_body_bytes=1_000,
        max_in_flight=max_in_flight,
        max_bytes_in_flight=max_bytes_in_flight,
        shed_after_s=shed_after_s,
        timeout_s=timeout_s,
    )


async def call(
    app: Any,
    headers: list[tuple[bytes, bytes]] = JSON,
    chunks: tuple[bytes, ...] = (b"{}",),
    path: str = ROUTE,
    body_ends: bool = True,
) -> tuple[int, dict[bytes, bytes], Any]:
    """One request through app: status, headers and JSON body of its response.

    With body_ends false the client never sends the end of its body.
    """
    last = len(chunks) - 1
    pending = [
        {"type": "http.request", "body": chunk, "more_body": i < last or not body_ends}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.Event().wait()  # nothing more: like a client that keeps the connection open
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": path, "headers": headers}, receive, send)
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return sent[0]["status"], dict(sent[0]["headers"]), json.loads(body)


async def started(*calls: Any) -> list[asyncio.Task[Any]]:
    """Start the calls as tasks and let each get as far as it can."""
    tasks = [asyncio.create_task(c) for c in calls]
    await asyncio.sleep(0.01)
    return tasks


class Flights(BaseModel):
    flights: list[int]


class Batcher:
    """A stand-in for BentoML's batching (serving/internals.py `BatchedApi`): records whether each
    request was to run at once; one handed to the dispatcher waits for its batch, as there."""

    def __init__(self) -> None:
        self.headers = [*JSON, (b"server", b"stand-in")]
        self.now: list[bool] = []

    def read(self, body: bytes) -> list[int]:
        return Flights.model_validate_json(body).flights

    async def infer(self, flights: list[int], now: bool = False) -> bytes:
        self.now.append(now)
        if not now:
            await asyncio.sleep(0.01)
        return b"[]"


def batching_guard(batcher: Batcher) -> RequestLayer:
    return RequestLayer(
        Gate(), (ROUTE,), max_body_bytes=1_000, max_in_flight=100, max_bytes_in_flight=1_000_000,
        shed_after_s=60.0, timeout_s=60.0, unbatched=(8, 4), batched=batcher,  # type: ignore[arg-type]  # a stand-in
        batched_route=ROUTE,
    )  # fmt: skip


def flights(count: int) -> tuple[bytes]:
    return (json.dumps({"flights": list(range(count))}).encode(),)


def test_a_small_request_alone_runs_at_once_and_a_large_one_goes_to_the_batcher() -> None:
    batcher = Batcher()
    layer = batching_guard(batcher)
    assert asyncio.run(call(layer, chunks=flights(8)))[0] == 200
    assert asyncio.run(call(layer, chunks=flights(9)))[0] == 200
    assert batcher.now == [True, False]


@pytest.mark.parametrize(("requests", "at_once"), [(4, True), (5, False)])
def test_requests_read_in_one_turn_run_at_once_only_when_few(requests: int, at_once: bool) -> None:
    """Requests read in the same turn of the event loop are all in before any is run at once: more
    than a few go to the batcher together (under keep-alive load each would otherwise be alone)."""
    batcher = Batcher()
    layer = batching_guard(batcher)

    async def together() -> list[Any]:
        return await asyncio.gather(*(call(layer, chunks=flights(1)) for _ in range(requests)))

    assert [status for status, _, _ in asyncio.run(together())] == [200] * requests
    assert batcher.now == [at_once] * requests


def test_non_json_content_type_is_refused_with_415_before_the_app_runs() -> None:
    app = Gate()
    status, _, body = asyncio.run(call(guard(app), headers=[(b"content-type", b"application/octet-stream")]))
    assert status == 415
    assert body["error"] == "unsupported media type"
    assert app.reached == 0


@pytest.mark.parametrize("coding", [b"gzip", b"br", b"GZIP ", b"identity, gzip"])
def test_a_compressed_body_is_refused_with_415_before_the_app_runs(coding: bytes) -> None:
    app = Gate()
    status, headers, body = asyncio.run(call(guard(app), headers=[*JSON, (b"content-encoding", coding)]))
    assert (status, body["detail"][0]["msg"], app.reached) == (
        415,
        "the request body must not be compressed: send it without Content-Encoding",
        0,
    )
    assert headers[b"accept-encoding"] == b"identity"


def test_an_identity_coded_body_is_read() -> None:
    app = Gate()
    app.opened.set()
    status, _, _ = asyncio.run(call(guard(app), headers=[*JSON, (b"content-encoding", b" Identity")]))
    assert (status, app.reached) == (200, 1)


def test_declared_body_over_the_limit_is_refused_with_413_before_the_app_runs() -> None:
    app = Gate()
    status, _, body = asyncio.run(call(guard(app), headers=[*JSON, (b"content-length", b"1001")]))
    assert (status, body["error"], app.reached) == (413, "request too large", 0)


def test_streamed_body_over_the_limit_is_cut_with_413() -> None:
    status, _, body = asyncio.run(call(guard(Gate()), chunks=(b"x" * 600, b"x" * 600)))
    assert (status, body["error"]) == (413, "request too large")


def test_other_routes_pass_through_unchecked() -> None:
    async def scenario() -> int:
        app = Gate()
        app.opened.set()
        status, _, _ = await call(guard(app), headers=[(b"content-type", b"text/plain")], path="/health")
        return status

    assert asyncio.run(scenario()) == 200


def test_other_routes_errors_answered_as_text_get_the_json_body_and_their_own_json_stays() -> None:
    def answering(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Any:
        async def app(scope: Scope, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return app

    text = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"18")]
    own = {"error": "the route's own words", "detail": [{"type": "off", "loc": [], "msg": "monitoring is off"}]}

    async def scenario() -> list[tuple[int, dict[bytes, bytes], Any]]:
        return [
            await call(guard(answering(404, text, b"Not Found")), path="/nope"),
            await call(guard(answering(405, [(b"allow", b"GET, HEAD"), *text], b"Method Not Allowed")), path="/health"),
            await call(guard(answering(500, text, b"Internal Server Error")), path="/v1/model"),
            await call(guard(answering(404, JSON, json.dumps(own).encode())), path="/v1/monitoring"),
            await call(guard(answering(200, text, b'"page"')), path="/metrics"),
        ]

    (missing, wrong_method, failed, kept, page) = asyncio.run(scenario())
    assert missing[0::2] == (404, {"error": "not found", "detail": []})
    assert missing[1][b"content-type"] == b"application/json"
    assert missing[1][b"content-length"] == str(len(b'{"error":"not found","detail":[]}')).encode()
    assert wrong_method[0::2] == (405, {"error": "method not allowed", "detail": []})
    assert wrong_method[1][b"allow"] == b"GET, HEAD"
    assert failed[0::2] == (500, {"error": "internal error, see the server log", "detail": []})
    assert kept[0::2] == (404, own)
    assert page[0::2] == (200, "page")


def test_requests_beyond_max_in_flight_are_shed_with_503_and_retry_after() -> None:
    async def scenario() -> list[Any]:
        app = Gate()
        checked = guard(app, max_in_flight=2)
        held = await started(call(checked), call(checked))
        shed = await call(checked)
        app.opened.set()
        return [shed, *[await task for task in held], await call(checked)]

    shed, *answered = asyncio.run(scenario())
    assert shed[0] == 503
    assert shed[1][b"retry-after"] == b"1"
    assert shed[2]["error"] == "overloaded, retry shortly"
    assert [status for status, _, _ in answered] == [200, 200, 200]


def test_large_bodies_past_the_bytes_in_flight_are_shed_while_small_ones_still_fit() -> None:
    large, small = (b'{"flights":"' + b"x" * 600 + b'"}',), (b"{}",)

    async def scenario() -> list[int]:
        app = Gate()
        checked = guard(app, max_bytes_in_flight=1_000)
        held = await started(call(checked, chunks=large))  # 614 of 1,000 bytes in flight
        shed = await call(checked, chunks=large)  # 1,228 would pass the bound
        small_one = await started(call(checked, chunks=small))
        app.opened.set()
        return [shed[0], *[(await task)[0] for task in held + small_one], (await call(checked, chunks=large))[0]]

    assert asyncio.run(scenario()) == [503, 200, 200, 200]


def test_requests_are_shed_while_the_oldest_has_waited_too_long() -> None:
    """The early request comes 10 ms after the held one, the late one 600 ms after: a bound of 0.5 s
    between them leaves room for a busy machine (0.05 s failed once in CI, with the tests in two
    processes on two cores)."""

    async def scenario() -> list[int]:
        app = Gate()
        checked = guard(app, shed_after_s=0.5)
        held = await started(call(checked))
        early = asyncio.create_task(call(checked))
        await asyncio.sleep(0.6)
        late = await call(checked)
        app.opened.set()
        return [(await early)[0], late[0], (await held[0])[0], (await call(checked))[0]]

    early, late, held, after = asyncio.run(scenario())
    assert (early, late, held, after) == (200, 503, 200, 200)


def test_a_request_not_answered_in_time_gets_504_and_is_counted() -> None:
    statuses: list[int] = []

    async def scenario() -> tuple[int, dict[bytes, bytes], Any]:
        checked = guard(Gate(), timeout_s=0.05)  # the gate never opens
        checked.on_error_response = statuses.append
        return await call(checked)

    status, _, body = asyncio.run(scenario())
    assert (status, body["error"]) == (504, "timed out")
    assert statuses == [504]


def test_deadlines_are_checked_by_one_timer_that_stops_when_none_is_open() -> None:
    """Deadlines of 0.5 s, counted 10 ms after the requests, leave room for a busy machine."""

    async def scenario() -> tuple[list[int], int, bool, bool]:
        app = Gate()
        checked = guard(app, timeout_s=0.5)
        late = [asyncio.create_task(call(checked)) for _ in range(3)]
        await asyncio.sleep(0.01)
        open_deadlines, one_timer = len(checked.deadlines), checked.checking is not None
        statuses = [(await task)[0] for task in late]
        app.opened.set()
        assert (await call(checked))[0] == 200
        await asyncio.sleep(0.2)  # the next check (every 0.05 s) finds no deadline open and schedules no other
        return statuses, open_deadlines, one_timer, checked.checking is None and not checked.expired

    statuses, open_deadlines, one_timer, stopped = asyncio.run(scenario())
    assert statuses == [504, 504, 504] and open_deadlines == 3 and one_timer and stopped


def test_a_request_cancelled_by_the_server_is_not_answered_504() -> None:
    """A client that leaves gets its request's task cancelled by the server: that cancellation goes on,
    even when the deadline passes at the same time."""

    async def scenario() -> bool:
        checked = guard(Gate(), timeout_s=60.0)
        request = asyncio.create_task(call(checked))
        await asyncio.sleep(0.01)  # waiting at the gate
        request.cancel()  # the server's cancellation
        checked.deadlines[request] = 0.0  # and the deadline's, before the task runs again
        checked.check_deadlines()
        try:
            await request
        except asyncio.CancelledError:
            return not checked.expired
        return False

    assert asyncio.run(scenario())


def test_a_deadline_cancellation_caught_below_is_taken_back() -> None:
    """BentoML's dispatcher catches the cancellation and raises its own 503 instead: the task is not
    left cancelling, which would cut the connection's next await."""

    class Catching:
        async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
            await receive()
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                self.cancelling = asyncio.current_task().cancelling()  # type: ignore[union-attr]
            await send({"type": "http.response.start", "status": 503, "headers": JSON})
            await send({"type": "http.response.body", "body": b"[]"})

    async def scenario() -> tuple[int, int, int]:
        app = Catching()
        checked = guard(app, timeout_s=0.05)
        request = asyncio.create_task(call(checked))
        status = (await request)[0]
        return status, app.cancelling, request.cancelling()

    assert asyncio.run(scenario()) == (503, 1, 0)


def test_a_slow_upload_does_not_make_others_shed() -> None:
    async def scenario() -> int:
        app = Gate()
        app.opened.set()
        checked = guard(app, shed_after_s=0.05)
        await started(call(checked, body_ends=False))
        await asyncio.sleep(0.1)
        return (await call(checked))[0]

    assert asyncio.run(scenario()) == 200


def test_slow_uploads_do_not_fill_the_in_flight_limit() -> None:
    """A request counts in flight only once its body is in: 30,000 slow uploads otherwise shed half
    of the requests sent meanwhile (loadtest/reliability.py slow-clients, slow-body, 2026-12-03)."""

    async def scenario() -> int:
        app = Gate()
        app.opened.set()
        checked = guard(app, max_in_flight=2)
        await started(*(call(checked, body_ends=False) for _ in range(5)))
        return (await call(checked))[0]

    assert asyncio.run(scenario()) == 200


def test_error_bodies_keep_only_field_problem_and_location() -> None:
    async def invalid(scope: Scope, receive: Any, send: Any) -> None:
        problem = {"type": "missing", "loc": ["flights"], "msg": "Field required", "input": {"secret": 1},
                   "url": "https://errors.pydantic.dev/2.13/v/missing"}  # fmt: skip
        await send({"type": "http.response.start", "status": 400, "headers": JSON})
        await send({"type": "http.response.body", "body": json.dumps({"detail": [problem]}).encode()})

    status, headers, body = asyncio.run(call(guard(invalid)))
    assert status == 400
    assert body == {
        "error": "invalid request: 1 problem(s)",
        "detail": [{"type": "missing", "loc": ["flights"], "msg": "Field required"}],
    }
    assert headers[b"content-length"] == str(len(json.dumps(body, separators=(",", ":")))).encode()


def test_a_400_from_the_app_lists_its_first_100_problems_and_hands_on_all() -> None:
    problems = [{"type": "missing", "loc": ["flights", i, "MES"], "msg": "Field required"} for i in range(150)]

    async def invalid(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 400, "headers": JSON})
        await send({"type": "http.response.body", "body": json.dumps({"detail": problems}).encode()})

    handed: list[list[dict[str, Any]]] = []
    checked = guard(invalid)
    checked.on_invalid = lambda problems, body: handed.append(problems)
    status, _, body = asyncio.run(call(checked))
    assert (status, body["error"]) == (400, "invalid request: 150 problem(s), the first 100 listed")
    assert body["detail"] == problems[:100]
    assert handed == [problems]


def test_a_server_error_body_says_only_internal_error() -> None:
    async def failing(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": JSON})
        await send({"type": "http.response.body", "body": b'Traceback (most recent call last): File "/app/x.py"'})

    status, _, body = asyncio.run(call(guard(failing)))
    assert (status, body) == (500, {"error": "internal error, see the server log", "detail": []})


async def shut_down(checked: RequestLayer) -> None:
    """Stop the layer as the server does at shutdown: a lifespan whose only event is the shutdown."""

    async def lifespan(scope: Scope, receive: Any, send: Any) -> None:
        await receive()

    async def shutdown_event() -> dict[str, str]:
        return {"type": "lifespan.shutdown"}

    async def no_send(message: Any) -> None:
        pass

    checked.app = lifespan
    await checked({"type": "lifespan"}, shutdown_event, no_send)


def test_shutdown_logs_requests_accepted_answered_and_cut(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        app = Gate()
        checked = guard(app)
        held = await started(call(checked))
        held[0].cancel()  # as the server cancels a request at its graceful-shutdown time-out
        await asyncio.gather(*held, return_exceptions=True)
        app.opened.set()
        await call(checked)
        await shut_down(checked)

    with caplog.at_level(logging.INFO, logger="bentoml.flight_delay"):
        asyncio.run(scenario())
    assert shutdown_counts(caplog.text) == [{"accepted": 2, "answered": 1, "cut": 1}]


def test_shutdown_writes_the_request_metrics_kept_since_the_last_write() -> None:
    """A worker that stops loses none of its last requests' counts to MetricWrites' interval."""
    counter = Counter("shutdown_requests", "", registry=CollectorRegistry())  # a name of its own: multiprocess files

    async def scenario() -> None:
        writes = MetricWrites()
        writes.inc(counter, 2)  # as requests ended just before the stop, their write WRITE_EVERY_S away
        checked = guard(None)
        checked.metrics = SimpleNamespace(writes=writes)  # type: ignore[assignment]  # all that shutdown needs
        await shut_down(checked)
        assert counter._value.get() == 2  # before the loop could run the interval's write
        assert writes.timer is None

    asyncio.run(scenario())
