"""The drills' one HTTP load client: keep-alive connections parsed by httptools, sent on a schedule.

Three schedules share one connection and pool:
- open loop: each request has a due time, at a fixed rate or with Poisson arrivals (exponential gaps,
  as MLPerf Inference's Server scenario), and its latency runs from that due time to the last byte of
  its answer, so a stall counts for every request due during it (no "coordinated omission"). The pool
  grows on demand up to max_connections per process; a request that finds none free waits in the
  client, and that wait counts. `paced()` is the open loop at a fixed rate over a small pool.
- closed loop: N connections, each sending its next request at its due time or on the answer to its
  last, whichever is later (what wrk does), latency from the actual send.
- back to back until stopped (BackgroundLoad): the closed loop without due times, for the drills that
  act on a server under load and then account for every request sent.
Latencies go into HDR histograms (loadtest.stats). With `accounting`, a request that got no complete
answer is sorted by what happened to it:
- "refused": the connection could not be opened, nothing was sent;
- "unanswered on a new connection" / "... on a reused connection": sent, then the connection closed
  before any byte of an answer (a new one: accepted by the kernel's listening queue, never by the
  server; a reused one: closed by the server as idle);
- "cut": the connection closed in the middle of an answer;
- "timed out": no complete answer within TIMEOUT_S.
Without it (the open-loop results), such a request is "connection lost" and a failed connect
"connect: REASON".
"""

import asyncio
import json
import resource
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import suppress
from dataclasses import asdict, dataclass, fields
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import httptools
import numpy as np
import uvloop
from hdrh.histogram import HdrHistogram

from loadtest.results import say
from loadtest.stats import histogram, percentiles, tree_cpu_s

FLIGHTS = Path(__file__).resolve().parent / "flights.jsonl"
IDLE_S = 4.0  # a connection idle longer is closed, not reused: uvicorn closes idle ones after 5 s, and a
# request sent just as the server closes its connection would be lost (a load balancer's pool does the same)
GRACE_S = 10.0  # how long answers are awaited after the last request is due; later ones count as unanswered
PREOPENED = 16  # connections each process opens before its first request is due
TIMEOUT_S = 30.0  # closed loops: a request unanswered this long is "timed out" and its connection closed
RETRY_S = 0.05  # closed loops: the wait after a refused connect

Arrivals = Literal["poisson", "fixed"]


@dataclass(frozen=True)
class Load:
    """One run: where, how fast, how long, and how requests are sent."""

    url: str
    rate: float
    seconds: float
    arrivals: Arrivals = "poisson"
    closed: int = 0  # connections of the closed-loop comparison; 0 = open loop
    max_connections: int = 256  # per process, open loop
    flights_per_request: int = 1
    seed: int = 0
    new_connections: bool = False  # each request on a connection of its own (Connection: close), open loop
    body: str = ""  # the JSON of every request; "" = flights of flights.jsonl, as script.lua sends them
    accounting: bool = False  # sort each failed request by what happened to it (the module's docstring)


RESULT_FIELDS = [f.name for f in fields(Load) if f.name not in ("url", "body", "accounting")]


def due_times(load: Load, process: int = 0, processes: int = 1) -> np.ndarray:
    """Seconds from the start at which this process's requests are due.

    Fixed rate: the processes take every processes-th slot of one evenly spaced schedule. Poisson:
    each process draws its own stream at rate / processes, so together they are one at rate.
    """
    if load.arrivals == "fixed":
        return np.arange(process, int(load.rate * load.seconds), processes) / load.rate
    rng = np.random.default_rng([load.seed, process])
    share = load.rate / processes
    times = np.cumsum(rng.exponential(1 / share, int(share * load.seconds * 1.2) + 100))
    while times[-1] < load.seconds:
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1 / share, len(times)))])
    return times[times < load.seconds]


def payloads(url: str, flights_per_request: int, close: bool = False, body: str = "") -> list[bytes]:
    """Whole HTTP requests: of `body`, or one per starting flight of flights.jsonl as script.lua builds
    them; `close` asks the server to close each connection after its answer."""
    parts = urlsplit(url)
    pool = [line for line in FLIGHTS.read_text().splitlines() if line]
    closing = "Connection: close\r\n" if close else ""
    bodies = [body] if body else [
        f'{{"flights":[{",".join(pool[(first + k) % len(pool)] for k in range(flights_per_request))}]}}'
        for first in range(len(pool))
    ]  # fmt: skip
    requests = []
    for text in bodies:
        encoded = text.encode()
        head = (
            f"POST {parts.path or '/v1/prediction'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(encoded)}\r\n{closing}\r\n"
        )
        requests.append(head.encode() + encoded)
    return requests


class Exchange(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its answer parsed by httptools."""

    def __init__(self, client: "Client", grown: bool = False) -> None:
        self.client = client
        self.grown = grown  # opened by Client.grow, for a waiting request
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.due = self.sent = self.idle_since = 0.0
        self.busy = self.begun = False
        self.sends = 0
        self.body = bytearray()
        self.answer: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not a subclass
        if self.grown:  # up: no longer on its way, before it takes a request (Client.due counts on it)
            self.client.connecting -= 1
        self.client.ready(self)

    def send(self, payload: bytes, due: float) -> None:
        assert self.transport is not None
        self.busy, self.begun, self.due, self.sent = True, False, due, time.monotonic()
        self.sends += 1
        self.transport.write(payload)

    def close(self) -> None:
        assert self.transport is not None
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.client.statuses["unparsable answer"] += 1
            self.close()

    def on_message_begin(self) -> None:  # httptools' callbacks
        self.begun = True
        self.body.clear()

    def on_body(self, body: bytes) -> None:
        if self.client.bodies is not None:
            self.body += body

    def on_message_complete(self) -> None:
        self.busy = False
        self.client.answered(self, self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost(self)


class Client:
    """Sends requests as they fall due and records each answer's latency from its due time and its send."""

    def __init__(self, load: Load, requests: list[bytes]) -> None:
        self.load = load
        self.requests = requests
        self.next_request = load.seed % len(requests)
        self.scheduled, self.from_send, self.lag = histogram(), histogram(), histogram()
        self.statuses: Counter[str] = Counter()
        self.bodies: Counter[bytes] | None = Counter() if load.accounting else None  # of 200 answers
        self.idle: list[Exchange] = []
        self.waiting: deque[float] = deque()
        self.open = self.most_open = self.connecting = self.outstanding = self.most_waiting = 0
        self.exchanges: set[Exchange] = set()
        self.finished = False

    def payload(self) -> bytes:
        self.next_request = (self.next_request + 1) % len(self.requests)
        return self.requests[self.next_request]

    async def connect(self, grown: bool = False) -> Exchange:
        parts = urlsplit(self.load.url)
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            _, exchange = await asyncio.get_running_loop().create_connection(
                lambda: Exchange(self, grown), parts.hostname or "127.0.0.1", parts.port or 80
            )
        except OSError:
            self.open -= 1
            raise
        return exchange

    def refused(self, error: OSError) -> None:
        self.statuses["refused" if self.load.accounting else f"connect: {error.strerror or error}"] += 1

    async def grow(self) -> None:
        """One more connection for the open loop; it takes a waiting request as soon as it is up.

        It counts as connecting from the moment it is asked for until it is up (its connection_made),
        not until this coroutine resumes: a request that fell due in between, while the new connection
        had taken an older one, would otherwise wait for a connection that is not coming."""
        try:
            await self.connect(grown=True)
        except OSError as error:
            self.connecting -= 1
            self.refused(error)

    def due(self, due: float) -> None:
        """A request falls due (open loop): a free connection sends it, or it waits for one. With new
        connections, it waits for a connection opened for it (the connect counts in its latency)."""
        self.outstanding += 1
        while self.idle and not self.load.new_connections:
            exchange = self.idle.pop()
            if time.monotonic() - exchange.idle_since < IDLE_S:
                exchange.send(self.payload(), due)
                return
            exchange.close()  # connection_lost() counts it out
        self.waiting.append(due)
        self.most_waiting = max(self.most_waiting, len(self.waiting))
        if self.open < self.load.max_connections and self.connecting < len(self.waiting):
            self.connecting += 1
            asyncio.get_running_loop().create_task(self.grow())

    def ready(self, exchange: Exchange) -> None:
        """A connection is free: the oldest waiting request goes, else it waits for the next."""
        self.exchanges.add(exchange)
        if self.waiting:
            exchange.send(self.payload(), self.waiting.popleft())
        elif not self.load.closed:
            exchange.idle_since = time.monotonic()
            self.idle.append(exchange)

    def answered(self, exchange: Exchange, status: int) -> None:
        now = time.monotonic()
        self.outstanding -= 1
        self.statuses[str(status)] += 1
        if self.bodies is not None and status == 200:
            self.bodies[bytes(exchange.body)] += 1
        # from the due time, or from the send when the timer fired early (uvloop's timers have 1-ms ticks):
        # a late send counts in full, an early one is never credited
        self.scheduled.record_value(max(1, round((now - min(exchange.due, exchange.sent)) * 1e6)))
        self.from_send.record_value(max(1, round((now - exchange.sent) * 1e6)))
        self.lag.record_value(max(1, round((exchange.sent - exchange.due) * 1e6)))
        if exchange.answer is not None:
            if not exchange.answer.done():
                exchange.answer.set_result(None)
            if not exchange.parser.should_keep_alive():
                exchange.close()
        elif self.load.new_connections:  # the server closes it too; connection_lost() counts it out
            exchange.close()
        else:
            self.ready(exchange)

    def lost(self, exchange: Exchange) -> None:
        self.open -= 1
        self.exchanges.discard(exchange)
        if self.finished:  # closed by the client at the end: what was unanswered is counted already
            return
        if exchange in self.idle:
            self.idle.remove(exchange)
        if exchange.busy:
            fresh = "new" if exchange.sends == 1 else "reused"
            lost = ("cut" if exchange.begun else f"unanswered on a {fresh} connection") if self.load.accounting else ""
            self.statuses[lost or "connection lost"] += 1
            self.outstanding -= 1
        if exchange.answer is not None and not exchange.answer.done():
            exchange.answer.set_exception(ConnectionError("connection lost"))

    async def open_loop(self, times: np.ndarray, start: float) -> None:
        for _ in range(0 if self.load.new_connections else min(PREOPENED, self.load.max_connections)):
            await self.connect()
        for offset in times:
            delay = start + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.due(start + offset)

    async def closed_connection(self, own: Iterable[float | None], start: float) -> None:
        """One connection of a closed loop: each request at its offset from start (None: at once) or on
        the last answer, whichever is later; reconnecting after a close, counting what was lost (a request
        whose connection is refused is counted and not sent)."""
        exchange: Exchange | None = None
        loop = asyncio.get_running_loop()
        for offset in own:
            due = time.monotonic() if offset is None else start + offset
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            if exchange is None or exchange.transport is None or exchange.transport.is_closing():
                try:
                    exchange = await self.connect()
                except OSError as error:  # this request is not sent
                    self.refused(error)
                    exchange = None
                    await asyncio.sleep(RETRY_S)
                    continue
            exchange.answer = loop.create_future()
            self.outstanding += 1
            exchange.send(self.payload(), due)
            try:
                await asyncio.wait_for(exchange.answer, TIMEOUT_S)
            except TimeoutError:
                self.statuses["timed out"] += 1
                self.outstanding -= 1
                exchange.busy = False
                exchange.close()
            except ConnectionError:
                exchange = None
        if exchange is not None and exchange.transport is not None:
            exchange.close()

    async def closed_loop(self, times: np.ndarray, start: float) -> None:
        closed = self.load.closed
        await asyncio.gather(*(self.closed_connection(times[k::closed], start) for k in range(closed)))

    async def run(self, times: np.ndarray, start: float) -> None:
        """Send every request of times (seconds after start, a monotonic instant), then await the answers."""
        sending = self.closed_loop(times, start) if self.load.closed else self.open_loop(times, start)
        with suppress(TimeoutError):
            await asyncio.wait_for(sending, timeout=start + self.load.seconds + GRACE_S - time.monotonic())
        while self.outstanding and time.monotonic() < start + self.load.seconds + GRACE_S:
            await asyncio.sleep(0.05)
        self.finished = True
        for exchange in list(self.exchanges):  # a loop closed over open transports warns of each
            exchange.close()
        await asyncio.sleep(0)  # their connection_lost() callbacks


def run_process(load: Load, process: int, processes: int, start_wall: float) -> dict[str, Any]:
    """One client process's share of the load: its histograms (encoded), statuses and CPU seconds."""
    times = due_times(load, process, processes)
    closed = -(-load.closed // processes)  # the closed loop's connections, shared out
    client = Client(Load(**{**asdict(load), "seed": load.seed + process, "closed": closed}),
                    payloads(load.url, load.flights_per_request, load.new_connections, load.body))  # fmt: skip
    start = time.monotonic() + (start_wall - time.time())
    before = resource.getrusage(resource.RUSAGE_SELF)
    uvloop.run(client.run(times, start))
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "due": len(times),
        "unanswered": client.outstanding,
        "statuses": dict(client.statuses),
        "histograms": {name: h.encode() for name, h in
                       (("scheduled", client.scheduled), ("sent", client.from_send), ("lag", client.lag))},
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "connections": client.most_open,
        "most_waiting": client.most_waiting,
    }  # fmt: skip


def measure(load: Load, processes: int, server_pid: int | None = None) -> dict[str, Any]:
    """Run load from `processes` client processes starting together; the merged result, with the CPU the
    server's processes used over the run's seconds when its pid is known."""
    start_wall = time.time() + 1.0  # time to fork and open the first connections
    before = tree_cpu_s(server_pid) if server_pid else 0.0
    with ProcessPoolExecutor(processes, mp_context=get_context("fork")) as pool:
        parts = list(pool.map(run_process, [load] * processes, range(processes), [processes] * processes,
                              [start_wall] * processes))  # fmt: skip
    result = summarize(load, parts)
    if server_pid:
        result["server_cores"] = round((tree_cpu_s(server_pid) - before) / load.seconds, 3)
    return result


def fixed_rates(url: str, pid: int | None, rates: Sequence[int], seconds: int, label: str) -> list[dict[str, Any]]:
    """The open-loop curve: Poisson arrivals at each rate in turn, one flight a request, 2 client processes."""
    curve = []
    for rate in rates:
        result = measure(Load(f"{url}/v1/prediction", rate, seconds), 2, pid)
        latency = result["latency_ms"]
        say(f"{label}, open loop {rate:,} req/s: {result['ok']:,} ok of {result['due']:,}, "
            f"p50 {latency['p50']:.1f} p99 {latency['p99']:.1f} ms")  # fmt: skip
        curve.append(result)
    return curve


def paced(url: str, rate: float, seconds: float, payload: dict[str, Any], connections: int = 64) -> dict[str, Any]:
    """payload at a fixed rate over at most `connections` keep-alive connections, in this process: the
    open loop's result (latency from each request's due time)."""
    load = Load(url, rate, seconds, "fixed", max_connections=connections, body=json.dumps(payload))
    return summarize(load, [run_process(load, 0, 1, time.time() + 0.5)])


def summarize(load: Load, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The processes' parts of one run merged: counts added, histograms merged, CPU summed."""
    merged = {name: histogram() for name in ("scheduled", "sent", "lag")}
    for part in parts:
        for name, h in merged.items():
            h.add(HdrHistogram.decode(part["histograms"][name]))
    statuses: Counter[str] = Counter()
    for part in parts:
        statuses.update(part["statuses"])
    answered = sum(count for status, count in statuses.items() if status.isdigit())
    ok = sum(count for status, count in statuses.items() if status.startswith("2"))
    due = sum(part["due"] for part in parts)
    return {
        **{key: getattr(load, key) for key in RESULT_FIELDS},
        "mode": "closed" if load.closed else "open",
        "processes": len(parts),
        "due": due,
        "answered": answered,
        "ok": ok,
        "failed": due - ok,
        "unanswered": sum(part["unanswered"] for part in parts),
        "statuses": dict(sorted(statuses.items())),
        "ok_per_s": round(ok / load.seconds, 1),
        # open loop: from the due time; closed loop: from the send, as a closed-loop tool reports it
        "latency_ms": percentiles(merged["sent" if load.closed else "scheduled"]),
        "from_send_ms": percentiles(merged["sent"]),
        "send_lag_ms": percentiles(merged["lag"]),
        "client_cores": round(sum(part["cpu_s"] for part in parts) / load.seconds, 3),
        "connections": sum(part["connections"] for part in parts),  # the most open at once, per process
        "most_waiting": max(part["most_waiting"] for part in parts),
    }


def until(stop: threading.Event) -> Iterator[None]:
    """A closed loop's schedule without due times: the next request at once, until stop is set."""
    while not stop.is_set():
        yield None


class BackgroundLoad:
    """`connections` keep-alive connections posting payload to url back to back, in a thread, from
    construction until stop(); every request sorted by outcome, every 200 answer's body counted (a
    model rollout tells the old model's answers from the new one's by their bodies)."""

    def __init__(self, url: str, connections: int, payload: dict[str, Any]) -> None:
        self.stopping = threading.Event()
        load = Load(url, 0, 0, closed=connections, body=json.dumps(payload), accounting=True)
        self.client = Client(load, payloads(url, 1, body=load.body))
        self.counts = self.client.statuses
        self.bodies: Counter[bytes] = cast(Counter[bytes], self.client.bodies)
        self.thread = threading.Thread(target=uvloop.run, args=(self.run(connections),), daemon=True)
        self.thread.start()

    async def run(self, connections: int) -> None:
        await asyncio.gather(*(self.client.closed_connection(until(self.stopping), 0.0) for _ in range(connections)))

    def stop(self) -> Counter[str]:
        """Stop every connection after its current request; the outcome counts."""
        self.stopping.set()
        self.thread.join()
        return self.counts
