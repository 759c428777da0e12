"""serving/connections.py and the bounded metrics against hostile clients: slow connections are closed
at their deadline, clients at a normal pace and keep-alive reuse are not, a new connection at the cap
evicts a waiting one, the 413 reaches urllib, and unknown paths add no metric series."""

import asyncio
import contextlib
import http.client
import inspect
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from helpers import bentoml_serve

from loadtest.probes import fresh
from models.schema import EXAMPLE_REQUEST
from serving import connections
from serving.connections import DeadlineProtocol, Limits
from serving.internals import install_connection_limits

IDLE_S, REQUEST_S, CAP = 1.0, 2.0, 40
SLACK_S = 1.0  # a close counts as on time within the deadline plus this (the bound)
BODY = json.dumps(EXAMPLE_REQUEST).encode()


@pytest.fixture(scope="module")
def strict_url(trained_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-worker service with short deadlines and a small connection cap."""
    env = {
        "FLIGHT_DELAY_WORKERS": "1",
        "FLIGHT_DELAY_IDLE_TIMEOUT_S": str(IDLE_S),
        "FLIGHT_DELAY_REQUEST_TIMEOUT_S": str(REQUEST_S),
        "FLIGHT_DELAY_MAX_CONNECTIONS": str(CAP),
    }
    with bentoml_serve(tmp_path_factory.mktemp("strict") / "serve.log", env) as (url, _process):
        yield url


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_until_closed(sock: socket.socket, trickle: bytes = b"", every_s: float = 0.25) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and the seconds that took; `trickle` is sent every
    `every_s` meanwhile, as a slow client would."""
    started = time.monotonic()
    sock.settimeout(every_s)
    received = b""
    while time.monotonic() - started < 30:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            if trickle:
                try:
                    sock.sendall(trickle)
                except OSError:
                    break
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def closed_reasons(url: str) -> dict[str, float]:
    """connections_closed_total by reason, from /metrics."""
    counts = {}
    for line in fresh().get(f"{url}/metrics").text.splitlines():
        if line.startswith("connections_closed_total{"):
            counts[line.split('reason="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return counts


@pytest.mark.integration
def test_silent_connection_is_closed_at_the_idle_deadline(strict_url: str) -> None:
    with connect(strict_url) as sock:
        received, seconds = read_until_closed(sock)
    assert received == b""
    assert IDLE_S - 0.1 <= seconds <= IDLE_S + SLACK_S


@pytest.mark.integration
def test_slow_headers_get_408_at_the_request_deadline(strict_url: str) -> None:
    with connect(strict_url) as sock:
        sock.sendall(b"POST /v1/prediction HTTP/1.1\r\nHost: test\r\n")
        received, seconds = read_until_closed(sock, trickle=b"X-Slow: 1\r\n")
    assert received.startswith(b"HTTP/1.1 408 ")
    assert json.loads(received.split(b"\r\n\r\n", 1)[1])["error"] == "request timeout"
    assert REQUEST_S - 0.1 <= seconds <= REQUEST_S + SLACK_S


@pytest.mark.integration
def test_slow_body_gets_408_at_the_request_deadline(strict_url: str) -> None:
    with connect(strict_url) as sock:
        sock.sendall(
            b"POST /v1/prediction HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        received, seconds = read_until_closed(sock, trickle=b" ")
    assert received.startswith(b"HTTP/1.1 408 ")
    assert REQUEST_S - 0.1 <= seconds <= REQUEST_S + SLACK_S


@pytest.mark.integration
def test_request_sent_at_a_normal_pace_within_the_deadline_is_answered(strict_url: str) -> None:
    with connect(strict_url) as sock:
        sock.sendall(b"POST /v1/prediction HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n")
        time.sleep(0.5)  # longer than nothing, shorter than the request deadline in all
        sock.sendall(b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:10])
        time.sleep(0.5)
        sock.sendall(BODY[10:])
        received, _seconds = read_until_closed(sock)  # then idle: closed at the idle deadline
    assert received.startswith(b"HTTP/1.1 200 ")
    assert len(json.loads(received.split(b"\r\n\r\n", 1)[1])) == len(EXAMPLE_REQUEST["flights"])


@pytest.mark.integration
def test_keep_alive_connection_is_reused_then_closed_when_idle(strict_url: str) -> None:
    host, port = strict_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    answers = []
    for _ in range(3):
        connection.request("POST", "/v1/prediction", BODY, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answers.append((response.status, response.read()))
        time.sleep(IDLE_S / 2)  # idle, but within the deadline
    sock = connection.sock
    assert sock is not None  # http.client drops its socket when the server closed it
    assert [status for status, _ in answers] == [200, 200, 200]
    with sock:
        received, seconds = read_until_closed(sock)
    assert received == b"" and seconds <= IDLE_S + SLACK_S


@pytest.mark.integration
def test_new_connection_at_the_cap_evicts_the_oldest_waiting_one(strict_url: str) -> None:
    before = closed_reasons(strict_url).get("evicted", 0)
    hogs = [connect(strict_url) for _ in range(CAP + 10)]
    try:
        time.sleep(0.2)
        answer = fresh().post(f"{strict_url}/v1/prediction", json=EXAMPLE_REQUEST, timeout=10)
        assert answer.status_code == 200
        assert closed_reasons(strict_url)["evicted"] - before >= 10
        assert reset_or_closed(hogs[0], 2)  # the oldest hog was aborted
    finally:
        for hog in hogs:
            hog.close()


@pytest.mark.integration
def test_413_reaches_urllib_which_sends_the_whole_body_first(service_url: str) -> None:
    request = urllib.request.Request(
        f"{service_url}/v1/prediction", data=b" " * 3_000_000, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413
    assert json.loads(refused.value.read())["error"] == "request too large"


def metric_series(url: str) -> set[str]:
    """The names and labels of every series on /metrics (values left out)."""
    lines = fresh().get(f"{url}/metrics").text.splitlines()
    return {line.rsplit(" ", 1)[0] for line in lines if line and not line.startswith("#")}


@pytest.mark.integration
def test_random_paths_add_no_metric_series(served_client: httpx.Client, service_url: str) -> None:
    client = served_client
    for path in ("/does-not-exist", "/static_content/nothing"):  # the fixed few: one series set each
        client.get(path)
    before = metric_series(service_url)
    rng = random.Random(18)
    for _ in range(1_500):
        path = "/x" + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789/", k=12))
        assert client.get(path).status_code in (404, 405)
        assert client.get(f"/static_content/{rng.random()}").status_code == 404
    after = metric_series(service_url)
    assert any('endpoint="other"' in series for series in before)  # unknown paths are counted, as one
    assert after == before


def test_uvicorn_as_bentoml_configures_it_serves_with_the_deadline_protocol() -> None:
    """BentoML's worker builds uvicorn.Config without http=, so "auto" decides the protocol: pinned here."""
    import inspect

    from _bentoml_impl.worker import service as worker

    config_call = inspect.getsource(worker.main.callback)  # type: ignore[arg-type]  # click's Command wraps it.split("uvicorn.Config(", 1)[1].split("\n    )", 1)[0]
    assert "http=" not in config_call
    install_connection_limits(Limits(idle_s=1, request_s=2, max_connections=10))
    config = uvicorn.Config(app=lambda scope, receive, send: None)
    config.load()
    assert config.http_protocol_class is DeadlineProtocol


def test_install_keeps_the_cap_under_the_open_file_limit() -> None:
    import resource

    installed = install_connection_limits(Limits(idle_s=1, request_s=2, max_connections=10**9))
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert installed.max_connections == soft - connections.FD_RESERVE


def test_raise_open_file_limit_lifts_the_soft_limit_to_the_hard_one(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from serving.connections import raise_open_file_limit\n"
        "print(raise_open_file_limit() == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"


# The send side, against uvicorn with DeadlineProtocol in this process. Answers of 8 MB: more than the
# kernel's send buffer takes (net.ipv4.tcp_wmem allows 4 MB at most), so the rest waits in the worker.
# An app that answers
# GET /bytes/N with one body of N bytes, /chunks/N with N bytes in 64 KiB chunks, /sleep/S "xx"
# after S seconds, anything else "xx".
SEND_S = 0.5


async def sizes_app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def,type-arg]  # raw ASGI
    while scope["method"] == "POST" and (await receive()).get("more_body"):  # a POST's body is read first
        pass
    kind, _, size = scope["path"].strip("/").partition("/")
    if kind == "sleep":
        await asyncio.sleep(float(size))
    total = int(size) if size.isdigit() else 2
    chunk = 65_536 if kind == "chunks" else total
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(total).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for start in range(0, total, chunk):
        size_now = min(chunk, total - start)
        await send({"type": "http.response.body", "body": b"x" * size_now, "more_body": start + size_now < total})


SERVING: dict[int, tuple[uvicorn.Server, threading.Thread]] = {}  # deadline_server's, by port


@contextmanager
def deadline_server(**limits: Any) -> Iterator[tuple[int, list[str]]]:
    """uvicorn serving sizes_app with DeadlineProtocol and these limits in a thread: (port, closes by reason);
    the server and its thread in SERVING meanwhile."""
    closes: list[str] = []
    DeadlineProtocol.limits = Limits(
        **{"idle_s": 5.0, "request_s": 5.0, "max_connections": 100, **limits}, on_close=closes.append
    )
    DeadlineProtocol.response_408 = connections.timeout_response(DeadlineProtocol.limits.request_s)
    DeadlineProtocol.waiting.clear()
    DeadlineProtocol.stalled = connections.Held()
    DeadlineProtocol.arriving = connections.Held()
    config = uvicorn.Config(sizes_app, port=0, http=DeadlineProtocol, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    SERVING[port] = server, thread
    try:
        yield port, closes
    finally:
        server.should_exit = True
        thread.join(10)
        del SERVING[port]


def never_reading(port: int, path: str) -> socket.socket:
    """A connection with a 4 KB receive buffer that asks for `path` and reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return sock


def reset_or_closed(sock: socket.socket, within_s: float) -> bool:
    """Whether the server ended the connection (a reset, or its end after what it sent) within `within_s`."""
    sock.settimeout(within_s)
    deadline = time.monotonic() + within_s
    try:
        while time.monotonic() < deadline:
            if not sock.recv(1 << 20):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def wait_for(condition: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def get(port: int, path: str = "/ok") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/bytes/8000000", "/chunks/8000000"])
def test_answer_left_unread_is_aborted_at_the_send_deadline_and_frees_its_memory(path: str) -> None:
    with deadline_server(send_s=SEND_S) as (port, closes):
        sock = never_reading(port, path)
        started = time.monotonic()
        assert wait_for(lambda: closes == ["send_deadline"], 2 * SEND_S + SLACK_S), closes
        assert time.monotonic() - started >= SEND_S
        assert DeadlineProtocol.stalled.total == 0 and not DeadlineProtocol.stalled.sizes
        with sock:
            assert reset_or_closed(sock, 2)


def head_sent_in_pieces(port: int, size: int, ending: bytes) -> bytes:
    """Send a request head of `size` bytes before `ending` in pieces of 1 KB, then read to the close."""
    start = b"GET /2 HTTP/1.1\r\nHost: test\r\nX-Big: "
    head = start + b"a" * (size - len(start))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for offset in range(0, len(head), 1024):
            sock.sendall(head[offset : offset + 1024])
            time.sleep(0.002)  # each piece read on its own, as from a slow client
        sock.sendall(ending)
        sock.settimeout(5)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65_536):
                answer += chunk
    return answer


def test_a_head_still_arriving_past_its_bound_gets_431_and_a_close() -> None:
    with deadline_server() as (port, closes):
        answer = head_sent_in_pieces(port, connections.MAX_HEAD_BYTES + 1, b"")
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:100]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request header fields too large"
    assert closes == ["head_too_large"]


def test_a_head_within_its_bound_arriving_in_pieces_is_answered() -> None:
    with deadline_server() as (port, closes):
        answer = head_sent_in_pieces(port, connections.MAX_HEAD_BYTES - 100, b"\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:100]
    assert closes == []


def test_client_reading_slowly_keeps_its_answer_past_the_send_deadline() -> None:
    size = 400_000
    with deadline_server(send_s=SEND_S) as (port, closes):
        sock = never_reading(port, f"/bytes/{size}")
        received = b""
        sock.settimeout(5)
        started = time.monotonic()
        while not received.endswith(b"x" * 100) or len(received.split(b"\r\n\r\n", 1)[-1]) < size:
            received += sock.recv(8192)  # 8 KB at a time, with pauses shorter than the deadline
            time.sleep(0.005)
            assert time.monotonic() - started < 30
        sock.close()
        assert time.monotonic() - started > SEND_S  # it took longer than the deadline, and made progress
        assert closes == []


def test_stalled_answers_past_the_unsent_bound_abort_the_oldest() -> None:
    with deadline_server(send_s=30) as (port, closes):
        first = never_reading(port, "/bytes/8000000")  # more than the kernel's send buffer takes (4 MB at most)
        assert wait_for(lambda: DeadlineProtocol.stalled.total > 0, 2)
        time.sleep(0.2)
        # the bound: what the first holds now, and a little: the second stall passes it
        DeadlineProtocol.limits = replace(
            DeadlineProtocol.limits, max_unsent_bytes=DeadlineProtocol.stalled.total + 1000
        )
        second = never_reading(port, "/bytes/8000000")
        assert wait_for(lambda: closes == ["unsent_bytes"], 2), closes
        assert DeadlineProtocol.stalled.total <= DeadlineProtocol.limits.max_unsent_bytes
        with first, second:
            assert reset_or_closed(first, 2)
            assert not reset_or_closed(second, 0.3)  # the newer one is still served


def test_new_connection_at_the_cap_evicts_a_stalled_answer_and_is_answered() -> None:
    with deadline_server(send_s=30, max_connections=3) as (port, closes):
        stalled = [never_reading(port, "/chunks/8000000") for _ in range(3)]
        assert wait_for(lambda: len(DeadlineProtocol.stalled.sizes) == 3, 2)
        assert get(port) == (200, b"xx")
        assert closes == ["evicted"]
        try:
            assert reset_or_closed(stalled[0], 2)
        finally:
            for sock in stalled:
                sock.close()


def test_connection_closed_after_an_unread_answer_does_not_keep_its_slot() -> None:
    with deadline_server(send_s=SEND_S) as (port, closes):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /bytes/8000000 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        assert wait_for(lambda: closes == ["send_deadline"], 2 * SEND_S + SLACK_S), closes
        sock.close()


def sending_part_of_a_body(port: int, sent: int, length: int) -> socket.socket:
    """A connection that sends a POST's head and `sent` bytes of its `length`-byte body, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /ok HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % length + b" " * sent)
    return sock


def test_requests_arriving_past_the_workers_bound_abort_the_one_arriving_longest() -> None:
    """300 connections each sending all but 16 bytes of a 1 MiB body took a worker of the service from
    137 to 441 MiB in 0.2 s, held until the request deadline (20 s): at the cap of 4,096, 4 GiB."""
    bound, body = 1_000_000, 1_048_576
    with contextlib.ExitStack() as stack, deadline_server(max_arriving_bytes=bound) as (port, closes):
        first, second = (stack.enter_context(sending_part_of_a_body(port, 300_000, body)) for _ in range(2))
        assert wait_for(lambda: DeadlineProtocol.arriving.total >= 600_000, 5) and closes == []
        third = stack.enter_context(sending_part_of_a_body(port, 500_000, body))
        assert reset_or_closed(first, 5) and closes == ["arriving_bytes"]
        assert wait_for(lambda: 800_000 <= DeadlineProtocol.arriving.total < 801_000, 5)
        whole = stack.enter_context(sending_part_of_a_body(port, 150_000, 150_000))  # held only while arriving
        assert whole.recv(12) == b"HTTP/1.1 200"
        assert 800_000 <= DeadlineProtocol.arriving.total < 801_000 and closes == ["arriving_bytes"]
        assert not reset_or_closed(second, 0.1) and not reset_or_closed(third, 0.1)
        assert get(port) == (200, b"xx")


def test_shutdown_closes_a_request_still_arriving_and_aborts_the_rest_at_the_drain() -> None:
    """uvicorn waits for every connection to close before a worker's shutdown hooks run: in the
    service, a body sent slowly and an answer taken slowly each held a stopping worker 18 s. Here both
    deadlines are 30 s, so only the shutdown's rules end them: the request still arriving at once,
    the unread answer at the drain."""
    drain_s = 2.0  # apart from the closing at once by a margin that a busy machine (3 test processes) keeps
    with contextlib.ExitStack() as stack, deadline_server(request_s=30, send_s=30, drain_s=drain_s) as (port, closes):
        unread = never_reading(port, "/bytes/8000000")
        arriving = socket.create_connection(("127.0.0.1", port))
        stack.callback(unread.close)
        stack.callback(arriving.close)
        arriving.sendall(b"POST /ok HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n{")
        assert wait_for(lambda: len(DeadlineProtocol.stalled.sizes) == 1 and len(DeadlineProtocol.waiting) == 2, 5)
        server, thread = SERVING[port]
        started = time.monotonic()
        server.should_exit = True
        assert reset_or_closed(arriving, drain_s / 2)  # closed at once, without an answer
        thread.join(10)  # the deadlines would end them at 30 s
        assert not thread.is_alive() and time.monotonic() - started < drain_s + 4
        assert closes == ["shutdown", "shutdown"]
        assert reset_or_closed(unread, 0.1)


def test_reused_keep_alive_connection_goes_to_the_back_of_the_eviction_order() -> None:
    with deadline_server(max_connections=2) as (port, closes):
        first = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        first.connect()
        time.sleep(0.05)
        second = socket.create_connection(("127.0.0.1", port))
        time.sleep(0.05)
        first.request("GET", "/ok")
        assert first.getresponse().read() == b"xx"  # reused after the second connected: now the newest
        third = socket.create_connection(("127.0.0.1", port))
        try:
            assert wait_for(lambda: closes == ["evicted"], 2)
            assert reset_or_closed(second, 2)
            first.request("GET", "/ok")
            assert first.getresponse().read() == b"xx"
        finally:
            first.close()
            second.close()
            third.close()


def test_pipelined_connection_is_not_evictable_while_its_next_request_is_answered() -> None:
    with deadline_server() as (port, _closes):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\nGET /sleep/1 HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the first answer; the second is being made
        time.sleep(0.3)
        assert not DeadlineProtocol.waiting  # nothing to evict: its request is in the application
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.close()


class RecordingTransport:
    """A stand-in for uvloop's transport that records what the protocol writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5000) if name in ("peername", "sockname") else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def answered(app: Any, transport: RecordingTransport) -> list[bytes]:
    """What uvicorn, with the deadline protocol, writes to `transport` answering one request with `app`."""
    from uvicorn.server import ServerState

    async def serve() -> list[bytes]:
        install_connection_limits(Limits(idle_s=5, request_s=5, max_connections=10))
        config = uvicorn.Config(app=app, lifespan="off", access_log=False)
        config.load()
        loop = asyncio.get_running_loop()
        protocol = DeadlineProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        await asyncio.sleep(0.05)
        protocol.connection_lost(None)
        return transport.writes

    return asyncio.run(serve())


def test_answer_leaves_in_one_send_with_its_head() -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    writes = answered(app, RecordingTransport())
    assert len(writes) == 1, writes  # uvicorn alone writes the head and the body apart
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\n{}")


def test_head_whose_body_comes_later_is_sent_on_the_next_turn() -> None:
    transport = RecordingTransport()
    sent_before_body: list[bytes] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await asyncio.sleep(0.01)  # a file read, a slow generator: the client has the head meanwhile
        sent_before_body.extend(transport.writes)
        await send({"type": "http.response.body", "body": b"{}"})

    writes = answered(app, transport)
    assert len(sent_before_body) == 1 and sent_before_body[0].endswith(b"\r\n\r\n")
    assert writes == [sent_before_body[0], b"{}"]


def test_held_head_is_sent_before_a_close_dropped_by_an_abort_and_counted_as_unsent() -> None:
    loop = asyncio.new_event_loop()
    try:
        head = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        closing = RecordingTransport()
        held = connections.OneSendTransport(closing, loop)  # type: ignore[arg-type]
        held.write(head)
        assert closing.writes == [] and held.get_write_buffer_size() == len(head)
        held.close()
        assert closing.writes == [head] and closing.closed
        aborting = RecordingTransport()
        dropped = connections.OneSendTransport(aborting, loop)  # type: ignore[arg-type]
        dropped.write(head)
        dropped.abort()
        loop.run_until_complete(asyncio.sleep(0))  # the next turn's flush finds nothing to send
        assert aborting.writes == [] and aborting.aborted
    finally:
        loop.close()


def test_interim_100_continue_and_bodies_are_written_at_once() -> None:
    loop = asyncio.new_event_loop()
    try:
        transport = RecordingTransport()
        stand_in = connections.OneSendTransport(transport, loop)  # type: ignore[arg-type]
        stand_in.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        stand_in.write(b'{"flights": []}')
        assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", b'{"flights": []}']
    finally:
        loop.close()


def test_no_connection_event_assigns_to_an_attribute_of_a_class() -> None:
    """Every assignment to a class's attribute invalidates CPython's caches of that class's attributes:
    the sum of unsent bytes kept on DeadlineProtocol and updated at each connection's end made every
    connection look them up again (about 2% of a worker's CPU with a new connection per request). So
    no method of the module assigns to an attribute of a class; configure() does once per worker."""
    import ast

    tree = ast.parse(Path(connections.__file__).read_text())
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assigned = [
        f"{target.value.id}.{target.attr} (line {node.lineno})"
        for cls in tree.body
        if isinstance(cls, ast.ClassDef)
        for node in ast.walk(cls)
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id in classes
    ]
    assert "DeadlineProtocol" in classes
    assert assigned == []


class ExtraInfoNames:
    """A transport that passes every call on and notes the extra info names asked of it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.asked: list[str] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        self.asked.append(name)
        return self.transport.get_extra_info(name, default)


def test_protocol_reads_each_connections_addresses_without_its_socket() -> None:
    """uvicorn's protocol reads both addresses through `get_local_addr` and `get_remote_addr`, looked up
    in its module at each connection: read_cached_addresses() puts readers of the addresses uvloop
    keeps there, which give uvicorn's own answers without asking for the socket (a socket object per
    address and five system calls a connection). Pinned on real uvloop connections."""
    import uvloop
    from uvicorn.protocols import utils as uvicorn_utils
    from uvicorn.protocols.http import httptools_impl

    from serving.internals import read_cached_addresses

    source = inspect.getsource(httptools_impl.HttpToolsProtocol.connection_made)
    assert "get_local_addr(transport)" in source and "get_remote_addr(transport)" in source
    read_cached_addresses()
    seen: list[tuple[Any, ...]] = []

    class Recording(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            asked = ExtraInfoNames(transport)  # type: ignore[arg-type]
            ours = (httptools_impl.get_local_addr(asked), httptools_impl.get_remote_addr(asked))  # type: ignore[arg-type]
            uvicorn_own = (uvicorn_utils.get_local_addr(transport), uvicorn_utils.get_remote_addr(transport))  # type: ignore[arg-type]
            seen.append((ours, uvicorn_own, asked.asked))
            transport.close()

    async def connect(host: str, family: socket.AddressFamily) -> None:
        server = await asyncio.get_running_loop().create_server(Recording, host, 0, family=family)
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection(host, port)
        writer.close()
        server.close()

    uvloop.run(connect("127.0.0.1", socket.AF_INET))
    if socket.has_ipv6:
        with contextlib.suppress(OSError):  # a machine without IPv6 loopback
            uvloop.run(connect("::1", socket.AF_INET6))
    assert seen
    for ours, uvicorn_own, asked in seen:
        assert ours == uvicorn_own
        assert asked == ["sockname", "peername"]
