"""Open-loop load: requests sent on a schedule, latency measured from each request's scheduled send time.

A closed-loop client (wrk) sends a connection's next request only after the last answer, so when the
service stalls it stops sending: the stall is measured once instead of for every request that should
have gone out meanwhile ("coordinated omission"). Here each request has a due time, at a fixed rate or
with Poisson arrivals (exponential gaps, as MLPerf Inference's Server scenario), and its latency runs
from that due time to the last byte of its answer, into an HDR histogram (the hdrhistogram package:
exact percentiles to 3 significant digits without keeping every sample). Requests go out on
keep-alive connections of a pool that grows on demand up to 256 per process (512 in all, one worker's
cap on requests in flight; a load balancer keeps such a pool to each pod); a request that finds none
free waits in the client, and that wait counts. `--closed N` sends the same schedule the closed-loop way, for
comparison: N connections, each sending its next request at its due time or on the answer to its
last, whichever is later, latency from the actual send (what a closed-loop tool reports).

    python loadtest/open_loop.py point --rate 2000 --duration 30       # one rate, a fresh service
    python loadtest/open_loop.py point --rate 2000 --target ceiling    # the bare ASGI server: the client's floor
    python loadtest/open_loop.py curve                                 # 10% to 100% of closed-loop capacity
    python loadtest/open_loop.py curve --new-connections --name curve-new-connections   # a connection per request
    python loadtest/open_loop.py headline                              # highest Poisson rate with p99 <= 25 ms
    python loadtest/open_loop.py headline --workers 1 --server-cpus 0 --client-cpus 1   # one core's worth
    python loadtest/open_loop.py crosscheck --rate 1500 --duration 10  # the same rate by httperf --period=e
    python loadtest/open_loop.py paired --against REV --rates 2000 4000 --duration 30   # a code change

The client runs in --processes processes (each a share of the schedule; Poisson streams add up to a
Poisson stream) on uvloop with httptools' parser, and reports the CPU it used. Results go to
loadtest/results/open-loop/NAME.json and NAME.md (curve: also NAME.png).
"""

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import httptools
import numpy as np
import uvloop
from hdrh.histogram import HdrHistogram

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import failures, parse_summary  # noqa: E402
from run import PROJECT_DIR, checkout, dated, say, server, unused, wrk  # noqa: E402

RESULTS = HERE / "results" / "open-loop"
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99_9": 99.9}
HIGHEST_US = 3_600_000_000  # an hour: any latency a run can see
IDLE_S = 4.0  # a connection idle longer is closed, not reused: uvicorn closes idle ones after 5 s, and a
# request sent just as the server closes its connection would be lost (a load balancer's pool does the same)
GRACE_S = 10.0  # how long answers are awaited after the last request is due; later ones count as unanswered
PREOPENED = 16  # connections each process opens before its first request is due
SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

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


def payloads(url: str, flights_per_request: int, close: bool = False) -> list[bytes]:
    """Whole HTTP requests, one per starting flight of loadtest/flights.jsonl, as script.lua builds them;
    `close` asks the server to close each connection after its answer."""
    parts = urlsplit(url)
    pool = [line for line in (HERE / "flights.jsonl").read_text().splitlines() if line]
    closing = "Connection: close\r\n" if close else ""
    requests = []
    for first in range(len(pool)):
        flights = ",".join(pool[(first + k) % len(pool)] for k in range(flights_per_request))
        body = f'{{"flights":[{flights}]}}'.encode()
        head = (
            f"POST {parts.path or '/v1/prediction'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{closing}\r\n"
        )
        requests.append(head.encode() + body)
    return requests


def histogram() -> HdrHistogram:
    """Microseconds from 1 to an hour, 3 significant digits."""
    return HdrHistogram(1, HIGHEST_US, 3)


class Exchange(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its answer parsed by httptools."""

    def __init__(self, client: "Client") -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.due = self.sent = self.idle_since = 0.0
        self.busy = False
        self.answer: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not a subclass
        self.client.ready(self)

    def send(self, payload: bytes, due: float) -> None:
        assert self.transport is not None
        self.busy, self.due, self.sent = True, due, time.monotonic()
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.client.statuses["unparsable answer"] += 1
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:  # httptools' callback
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
        self.idle: list[Exchange] = []
        self.waiting: deque[float] = deque()
        self.open = self.most_open = self.connecting = self.outstanding = self.most_waiting = 0
        self.exchanges: set[Exchange] = set()
        self.finished = False

    def payload(self) -> bytes:
        self.next_request = (self.next_request + 1) % len(self.requests)
        return self.requests[self.next_request]

    async def connect(self) -> Exchange:
        parts = urlsplit(self.load.url)
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            _, exchange = await asyncio.get_running_loop().create_connection(
                lambda: Exchange(self), parts.hostname or "127.0.0.1", parts.port or 80
            )
        except OSError:
            self.open -= 1
            raise
        return exchange

    async def grow(self) -> None:
        """One more connection for the open loop; it takes a waiting request as soon as it is up."""
        self.connecting += 1
        try:
            await self.connect()
        except OSError as error:
            self.statuses[f"connect: {error.strerror or error}"] += 1
        finally:
            self.connecting -= 1

    def due(self, due: float) -> None:
        """A request falls due (open loop): a free connection sends it, or it waits for one. With new
        connections, it waits for a connection opened for it (the connect counts in its latency)."""
        self.outstanding += 1
        while self.idle and not self.load.new_connections:
            exchange = self.idle.pop()
            if time.monotonic() - exchange.idle_since < IDLE_S:
                exchange.send(self.payload(), due)
                return
            assert exchange.transport is not None
            exchange.transport.close()  # connection_lost() counts it out
        self.waiting.append(due)
        self.most_waiting = max(self.most_waiting, len(self.waiting))
        if self.open < self.load.max_connections and self.connecting < len(self.waiting):
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
        # from the due time, or from the send when the timer fired early (uvloop's timers have 1-ms ticks):
        # a late send counts in full, an early one is never credited
        self.scheduled.record_value(max(1, round((now - min(exchange.due, exchange.sent)) * 1e6)))
        self.from_send.record_value(max(1, round((now - exchange.sent) * 1e6)))
        self.lag.record_value(max(1, round((exchange.sent - exchange.due) * 1e6)))
        if exchange.answer is not None:
            exchange.answer.set_result(None)
        elif self.load.new_connections:  # the server closes it too; connection_lost() counts it out
            assert exchange.transport is not None
            exchange.transport.close()
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
            self.statuses["connection lost"] += 1
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

    async def closed_loop(self, times: np.ndarray, start: float) -> None:
        async def one(own: np.ndarray) -> None:
            exchange = await self.connect()
            for offset in own:
                delay = start + offset - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                exchange.answer = asyncio.get_running_loop().create_future()
                self.outstanding += 1
                exchange.send(self.payload(), start + offset)
                try:
                    await exchange.answer
                except ConnectionError:
                    exchange = await self.connect()

        await asyncio.gather(*(one(times[k :: self.load.closed]) for k in range(self.load.closed)))

    async def run(self, times: np.ndarray, start: float) -> None:
        """Send every request of times (seconds after start, a monotonic instant), then await the answers."""
        sending = self.closed_loop(times, start) if self.load.closed else self.open_loop(times, start)
        with suppress(TimeoutError):
            await asyncio.wait_for(sending, timeout=start + self.load.seconds + GRACE_S - time.monotonic())
        while self.outstanding and time.monotonic() < start + self.load.seconds + GRACE_S:
            await asyncio.sleep(0.05)
        self.finished = True
        for exchange in list(self.exchanges):  # a loop closed over open transports warns of each
            assert exchange.transport is not None
            exchange.transport.close()
        await asyncio.sleep(0)  # their connection_lost() callbacks


def run_process(load: Load, process: int, processes: int, start_wall: float) -> dict[str, Any]:
    """One client process's share of the load: its histograms (encoded), statuses and CPU seconds."""
    times = due_times(load, process, processes)
    closed = -(-load.closed // processes)  # the closed loop's connections, shared out
    client = Client(Load(**{**asdict(load), "seed": load.seed + process, "closed": closed}),
                    payloads(load.url, load.flights_per_request, load.new_connections))  # fmt: skip
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


def percentiles(h: HdrHistogram) -> dict[str, float]:
    """p50 to p99.9 and max of a histogram of microseconds, in milliseconds."""
    values = {name: h.get_value_at_percentile(p) / 1000 for name, p in PERCENTILES.items()}
    return {**values, "max": h.get_max_value() / 1000, "mean": round(h.get_mean_value() / 1000, 3)}


def process_tree_cpu_s(root: int) -> float:
    """CPU seconds (user and system) a process and all its descendants have used so far, from /proc."""
    used: dict[int, int] = {}
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except OSError:  # the process ended meanwhile
            continue
        used[int(stat.parent.name)] = int(fields[11]) + int(fields[12])  # utime, stime
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += used.get(pid, 0)
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def measure(load: Load, processes: int, server_pid: int | None = None) -> dict[str, Any]:
    """Run load from `processes` client processes starting together; the merged result, with the CPU the
    server's processes used over the run's seconds when its pid is known."""
    start_wall = time.time() + 1.0  # time to fork and open the first connections
    before = process_tree_cpu_s(server_pid) if server_pid else 0.0
    with ProcessPoolExecutor(processes, mp_context=get_context("fork")) as pool:
        parts = list(pool.map(run_process, [load] * processes, range(processes), [processes] * processes,
                              [start_wall] * processes))  # fmt: skip
    result = summarize(load, parts)
    if server_pid:
        result["server_cores"] = round((process_tree_cpu_s(server_pid) - before) / load.seconds, 3)
    return result


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
    unanswered = sum(part["unanswered"] for part in parts)
    return {
        **{key: value for key, value in asdict(load).items() if key != "url"},
        "mode": "closed" if load.closed else "open",
        "processes": len(parts),
        "due": due,
        "answered": answered,
        "ok": ok,
        "failed": due - ok,
        "unanswered": unanswered,
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


def line(result: dict[str, Any]) -> str:
    """One progress line for a run."""
    latency = result["latency_ms"]
    return (
        f"{result['mode']} {result['arrivals']} {result['rate']:,.0f} req/s: {result['ok']:,} ok of {result['due']:,}, "
        f"p50 {latency['p50']:.2f} p99 {latency['p99']:.2f} p99.9 {latency['p99_9']:.2f} max {latency['max']:.1f} ms, "
        f"client {result['client_cores']:.2f} cores, {result['connections']} connections"
    )


def bisect_rate(
    passes: Callable[[float], bool], low: float, high: float, steps: int
) -> tuple[float, list[tuple[float, bool]]]:
    """The highest rate in [low, high] that passes, to (high - low) / 2**steps, and every rate tried.

    low is tried first: if it fails, the answer is 0. high is never assumed to pass or fail.
    """
    tried = [(low, passes(low))]
    if not tried[0][1]:
        return 0.0, tried
    for _ in range(steps):
        rate = (low + high) / 2
        tried.append((rate, passes(rate)))
        low, high = (rate, high) if tried[-1][1] else (low, rate)
    return low, tried


@contextmanager
def target(kind: str, args: argparse.Namespace) -> Iterator[tuple[str, int | None]]:
    """A running target and its pid: --url if given (the service only; pid unknown), else a fresh one on
    --server-cpus."""
    if kind == "service" and args.url:
        yield args.url.rstrip("/"), None
        return
    env = {"FLIGHT_DELAY_WORKERS": str(args.workers)} if kind == "service" else {}
    with server(kind, env=env, cpus=args.server_cpus, workers=args.workers) as (url, process):
        yield url, process.pid


def warm_up(url: str, args: argparse.Namespace) -> None:
    if args.warmup:
        say(f"warming up for {args.warmup} s")
        wrk(url, args.warmup, 4, 64, args.flights_per_request, "warm-up")


def capacity(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The closed-loop throughput: wrk with the reference's threads and connections."""
    say(f"closed-loop capacity: wrk -t4 -c200 -d{args.capacity_duration}s")
    summary = parse_summary(wrk(url, args.capacity_duration, 4, 200, args.flights_per_request, "capacity"))
    say(f"capacity {summary['requests_per_s']:,.0f} req/s, p99 {summary['latency_ms']['p99']:.1f} ms, "
        f"{failures(summary)} failed")  # fmt: skip
    return summary


def load_at(url: str, rate: float, args: argparse.Namespace, closed: int = 0, seconds: float | None = None) -> Load:
    return Load(
        f"{url}/v1/prediction", rate, seconds or args.duration, args.arrivals, closed,
        flights_per_request=args.flights_per_request, seed=args.seed,
        new_connections=args.new_connections and not closed,
    )  # fmt: skip


def point(args: argparse.Namespace) -> dict[str, Any]:
    with target(args.target, args) as (url, pid):
        warm_up(url, args)
        result = measure(load_at(url, args.rate, args, args.closed), args.processes, pid)
    say(line(result))
    return {"runs": [result]}


def curve(args: argparse.Namespace) -> dict[str, Any]:
    """Each target at the same rates: shares of the service's closed-loop capacity in this run."""
    runs: dict[str, dict[str, Any]] = {}
    rates: list[float] = []
    for kind in ("service", "baseline", "ceiling"):
        with target(kind, args) as (url, pid):
            warm_up(url, args)
            runs[kind] = {"capacity": capacity(url, args), "open": [], "closed": []}
            if kind == "service":
                rates = [round(share * runs[kind]["capacity"]["requests_per_s"]) for share in args.shares]
            for rate in rates:
                runs[kind]["open"].append(measure(load_at(url, rate, args), args.processes, pid))
                say(f"{kind}: {line(runs[kind]['open'][-1])}")
                if kind == "service":
                    runs[kind]["closed"].append(measure(load_at(url, rate, args, closed=200), args.processes, pid))
                    say(f"{kind}: {line(runs[kind]['closed'][-1])}")
    return {"shares": list(args.shares), "rates": rates, "targets": runs}


def headline(args: argparse.Namespace) -> dict[str, Any]:
    """MLPerf-style: the highest Poisson rate whose p99 stays under the bound, as a share of capacity."""
    steps: list[dict[str, Any]] = []

    with target("service", args) as (url, pid):
        warm_up(url, args)
        closed = capacity(url, args)
        top = closed["requests_per_s"]

        def passes(rate: float) -> bool:
            result = measure(load_at(url, rate, args, seconds=args.step_duration), args.processes, pid)
            result["passed"] = result["failed"] == 0 and result["latency_ms"]["p99"] <= args.bound_ms
            steps.append(result)
            say(f"{'pass' if result['passed'] else 'fail'}: {line(result)}")
            return bool(result["passed"])

        rate, _ = bisect_rate(passes, args.low * top, top, args.steps)
    return {
        "bound_ms": args.bound_ms,
        "capacity": closed,
        "sustainable_rate": round(rate),
        "share_of_capacity": round(rate / top, 3),
        "steps": steps,
    }


def httperf(url: str, rate: float, seconds: float, flights_per_request: int, folder: Path) -> dict[str, Any]:
    """Debian's httperf at the same Poisson rate (--period=e): one session, one connection, per request.

    httperf opens each connection at its scheduled time whatever the answers do, so it is open-loop
    too; its times run from the connection's start, so they include the TCP handshake.
    """
    sessions = folder / "httperf-sessions.txt"
    bodies = [request.split(b"\r\n\r\n", 1)[1].decode() for request in payloads(url, flights_per_request)]
    sessions.write_text("\n\n".join(f"{urlsplit(url).path} method=POST contents='{body}'" for body in bodies) + "\n")
    parts = urlsplit(url)
    command = [
        "httperf", "--hog", "--server", str(parts.hostname), "--port", str(parts.port), "--timeout", "5",
        "--add-header", "Content-Type: application/json\\n", "--period", f"e{1 / rate:.9f}",
        "--wsesslog", f"{round(rate * seconds)},0,{sessions}",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    connection = re.search(r"Connection time \[ms\]: min (\S+) avg (\S+) max (\S+) median (\S+) stddev (\S+)", output)
    replies = re.search(r"Reply status: 1xx=(\d+) 2xx=(\d+) 3xx=(\d+) 4xx=(\d+) 5xx=(\d+)", output)
    errors = re.search(r"Errors: total (\d+)", output)
    assert connection and replies and errors, output
    return {
        "command": " ".join(command),
        "connection_ms": dict(
            zip(("min", "mean", "max", "median", "stddev"), map(float, connection.groups()), strict=True)
        ),
        "ok": int(replies.group(2)),
        "errors": int(errors.group(1)),
        "output": output,
    }


def crosscheck(args: argparse.Namespace) -> dict[str, Any]:
    """One rate measured by this client and by httperf, one after the other, on the service and on the
    bare ASGI server (each tool's own floor)."""
    targets: dict[str, dict[str, Any]] = {}
    for kind in ("service", "ceiling"):
        with target(kind, args) as (url, pid):
            warm_up(url, args)
            ours = measure(load_at(url, args.rate, args), args.processes, pid)
            say(f"{kind}: {line(ours)}")
            folder = Path(tempfile.mkdtemp())
            theirs = httperf(f"{url}/v1/prediction", args.rate, args.duration, args.flights_per_request, folder)
            say(f"{kind}: httperf {theirs['ok']:,} ok, {theirs['errors']} errors, connection time median "
                f"{theirs['connection_ms']['median']} ms, mean {theirs['connection_ms']['mean']} ms")  # fmt: skip
            targets[kind] = {"ours": ours, "httperf": theirs}
    return {"rate": args.rate, "targets": targets}


def row(result: dict[str, Any], passed: bool | None = None) -> str:
    """One run as a Markdown table row (with the bound's verdict for a headline step)."""
    latency = result["latency_ms"]
    cells = [
        f"{result['rate']:,.0f}", f"{result['mode']} {result['arrivals']}",
        f"{result['ok']:,}", f"{result['failed']:,}",
        *(f"{latency[key]:.2f}" for key in ("p50", "p99", "p99_9")), f"{latency['max']:.1f}",
        f"{result['client_cores']:.2f}", f"{result['server_cores']:.2f}" if "server_cores" in result else "-",
        *([] if passed is None else ["yes" if passed else "no"]),
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def paired(args: argparse.Namespace) -> dict[str, Any]:
    """This checkout against the code of --against, alternating in rounds, at the same open-loop rates."""
    sides: dict[str, list[list[dict[str, Any]]]] = {"this checkout": [], args.against: []}
    with checkout(args.against) as other:
        for round_number in range(args.rounds):
            for side, code in (("this checkout", PROJECT_DIR), (args.against, other)):
                with server("service", env={"FLIGHT_DELAY_WORKERS": str(args.workers)}, code=code) as (url, process):
                    warm_up(url, args)
                    sides[side].append(
                        [measure(load_at(url, rate, args), args.processes, process.pid) for rate in args.rates]
                    )
                    say(f"round {round_number + 1}, {side}: " + "; ".join(line(r) for r in sides[side][-1]))
    return {"rates": args.rates, "rounds": args.rounds, "sides": sides}


def paired_table(outcome: dict[str, Any]) -> list[str]:
    """Medians over the rounds of each side's p50, p99 and p99.9 at each rate, and their ratios."""
    (mine, theirs), keys = outcome["sides"].values(), ("p50", "p99", "p99_9")
    names = list(outcome["sides"])
    lines = [
        f"| rate req/s | percentile | {names[0]} ms | {names[1]} ms | ratio | failed |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for index, rate in enumerate(outcome["rates"]):
        for key in keys:
            a, b = (float(np.median([runs[index]["latency_ms"][key] for runs in side])) for side in (mine, theirs))
            failed = sum(runs[index]["failed"] for side in (mine, theirs) for runs in side)
            lines.append(f"| {rate:,.0f} | {key.replace('_', '.')} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {failed} |")
    return lines


def markdown(kind: str, outcome: dict[str, Any], command: str) -> str:
    """The report of one command's outcome."""
    title = f"# Open-loop {kind}, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores"
    lines = [title, "", f"Command: `{command}`", ""]
    head = "| rate req/s | mode | ok | failed | p50 ms | p99 ms | p99.9 ms | max ms | client cores | server cores |"
    rule = "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    if kind == "headline":
        top = outcome["capacity"]["requests_per_s"]
        lines += [
            f"Closed-loop capacity (wrk -t4 -c200): **{top:,.0f} req/s**. Highest Poisson rate with p99 <= "
            f"{outcome['bound_ms']:g} ms: **{outcome['sustainable_rate']:,} req/s, "
            f"{outcome['share_of_capacity']:.2f}x** the closed-loop throughput.",
            "",
            head + " p99 within bound |",
            rule + "---|",
            *(row(step, step["passed"]) for step in outcome["steps"]),
        ]
    elif kind == "curve":
        for name, run in outcome["targets"].items():
            capacity = run["capacity"]
            lines += [
                f"## {name}",
                "",
                f"Closed-loop capacity: {capacity['requests_per_s']:,.0f} req/s, "
                f"p99 {capacity['latency_ms']['p99']:.1f} ms.",
                "",
                head,
                rule,
                *(row(result) for result in sorted(run["open"] + run["closed"], key=lambda r: (r["rate"], r["mode"]))),
                "",
            ]
    elif kind == "crosscheck":
        lines += [
            "| target | client | ok | failed | median ms | mean ms | p99 ms | max ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, pair in outcome["targets"].items():
            ours, theirs = pair["ours"], pair["httperf"]
            latency, times = ours["latency_ms"], theirs["connection_ms"]
            lines += [
                f"| {name} | this client (keep-alive) | {ours['ok']:,} | {ours['failed']:,} | {latency['p50']:.2f} | "
                f"{latency['mean']:.2f} | {latency['p99']:.2f} | {latency['max']:.1f} |",
                f"| {name} | httperf (a connection per request) | {theirs['ok']:,} | {theirs['errors']:,} | "
                f"{times['median']:.2f} | {times['mean']:.2f} | | {times['max']:.1f} |",
            ]
        lines += ["", f"httperf's command: `{outcome['targets']['service']['httperf']['command']}`"]
    elif kind == "paired":
        lines += [f"Medians of {outcome['rounds']} alternating rounds.", "", *paired_table(outcome)]
    else:
        lines += [head, rule, *(row(result) for result in outcome["runs"])]
    return "\n".join(lines) + "\n"


def plot_curve(outcome: dict[str, Any], path: Path) -> None:
    """Open-loop p50, p99, p99.9 against the offered rate for each target; the service's closed vs open p99."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    colors = {"service": "tab:blue", "baseline": "tab:orange", "ceiling": "tab:green"}
    for name, run in outcome["targets"].items():
        rates = [r["rate"] for r in run["open"]]
        for key, style in (("p50", ":"), ("p99", "-"), ("p99_9", "--")):
            left.plot(rates, [r["latency_ms"][key] for r in run["open"]], style, marker=".", color=colors[name],
                      label=f"{name} {key.replace('_', '.')}")  # fmt: skip
    left.axhline(25, color="grey", linewidth=0.8)
    left.set(yscale="log", xlabel="offered requests/s (Poisson)", ylabel="latency from the scheduled send, ms",
             title="Open loop: latency against offered load")  # fmt: skip
    left.legend(fontsize="x-small", ncol=3)
    service = outcome["targets"]["service"]
    rates = [r["rate"] for r in service["open"]]
    right.plot(
        rates, [r["latency_ms"]["p99"] for r in service["open"]], marker="o", label="open loop p99 (from due time)"
    )
    right.plot(
        rates,
        [r["latency_ms"]["p99"] for r in service["closed"]],
        marker="s",
        label="closed loop p99 (200 conn., from send)",
    )
    right.set(yscale="log", xlabel="requests/s", ylabel="p99 ms", title="The service: closed-loop vs open-loop p99")
    right.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("point", "curve", "headline", "crosscheck", "paired"))
    parser.add_argument("--url", help="a running service instead of a fresh one (point and headline)")
    parser.add_argument("--target", choices=("service", "baseline", "ceiling"), default="service", help="point only")
    parser.add_argument("--rate", type=float, default=1000, help="requests/s (point)")
    parser.add_argument("--duration", type=float, default=15, help="seconds of each point (point, curve)")
    parser.add_argument("--arrivals", choices=("poisson", "fixed"), default="poisson")
    parser.add_argument("--closed", type=int, default=0, help="point: closed loop over this many connections")
    parser.add_argument("--against", help="paired: the git revision to compare this checkout with")
    parser.add_argument("--rates", type=float, nargs="+", default=[2000, 4000], help="paired: req/s")
    parser.add_argument("--rounds", type=int, default=3, help="paired: alternating rounds")
    parser.add_argument("--shares", type=float, nargs="+", default=SHARES, help="curve: shares of capacity")
    parser.add_argument("--bound-ms", type=float, default=25.0, help="headline: the p99 bound")
    parser.add_argument("--steps", type=int, default=6, help="headline: bisection steps after the lowest rate")
    parser.add_argument(
        "--step-duration", type=float, default=30, help="headline: seconds of each step (MLPerf: >= 30)"
    )
    parser.add_argument("--low", type=float, default=0.1, help="headline: lowest rate tried, share of capacity")
    parser.add_argument("--capacity-duration", type=int, default=30, help="seconds of the closed-loop wrk run")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of wrk before measuring")
    parser.add_argument("--workers", type=int, default=2, help="server workers (FLIGHT_DELAY_WORKERS for the service)")
    parser.add_argument("--server-cpus", help="CPUs the server runs on (taskset list, e.g. 0)")
    parser.add_argument("--client-cpus", help="CPUs the client and wrk run on (e.g. 1)")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--flights-per-request", type=int, default=1)
    parser.add_argument(
        "--new-connections", action="store_true", help="open loop: each request on a connection of its own"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="results file name under loadtest/results/open-loop/ (default COMMAND-TODAY)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None and args.command != "point":
        sys.exit("wrk is not installed: apt-get install -y wrk")
    if args.client_cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in args.client_cpus.split(",")})
    name = args.name or dated(args.command)
    paths = [RESULTS / f"{name}.json", RESULTS / f"{name}.md"]
    unused(*paths, overwrite=args.overwrite)
    commands = {"point": point, "curve": curve, "headline": headline, "crosscheck": crosscheck, "paired": paired}
    outcome = commands[args.command](args)
    command = "python loadtest/open_loop.py " + " ".join(argv if argv is not None else sys.argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}"
    paths[0].write_text(json.dumps({"command": command, "machine": machine, **outcome}, indent=2) + "\n")
    paths[1].write_text(markdown(args.command, outcome, command))
    if args.command == "curve":
        plot_curve(outcome, RESULTS / f"{name}.png")
    say(f"results: {paths[1].relative_to(PROJECT_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
