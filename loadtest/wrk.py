"""wrk runs with script.lua, the reference closed-loop figures: running wrk, reading its JSON line, reporting."""

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, NamedTuple

from loadtest.results import figure, say

HERE = Path(__file__).resolve().parent
BAR_REQUESTS = 50_000  # the reference bar: this many requests in 45 s, with no error of any kind
SOCKET_ERRORS = ("connect", "read", "write", "timeout")


class Shape(NamedTuple):
    """A shape of closed-loop traffic: its key (loadtest.peers --shapes), its name in reports, flights in
    each request, wrk's connections, keep-alive or not."""

    key: str
    name: str
    flights: int
    connections: int
    new_connections: bool = False


# Every shape of traffic a change is measured in (issue 27): the standing rows of make loadtest, make
# peers and the ablation; the first is the stress test's. The open-loop curve at fixed rates is the
# fifth (loadtest.client.fixed_rates).
SHAPES = (
    Shape("keepalive200", "1 flight, keep-alive, 200 connections (the stress test's)", 1, 200),
    Shape("newconn64", "1 flight, a new connection per request, 64 connections", 1, 64, new_connections=True),
    Shape("flights100", "100 flights, keep-alive, 64 connections", 100, 64),
    Shape("flights1000", "1,000 flights, keep-alive, 8 connections", 1000, 8),
)
# Requests one at a time (wrk -t1 -c1): the latency of a request alone, asked for by name, not a standing row.
LONE = Shape("lone", "1 flight, keep-alive, 1 connection (lone requests)", 1, 1)
CURVE_RATES = (500, 1000, 2000, 4000)  # req/s of the open-loop curve, one flight a request


def wrk_process(
    url: str, seconds: int, threads: int, connections: int, flights_per_request: int, new_connections: bool = False
) -> subprocess.Popen[str]:
    """wrk with script.lua against url/v1/prediction, started; its stdout is piped. With `new_connections`
    every request goes on a connection of its own (Connection: close), as scripts without a session,
    serverless callers and many gateways send them."""
    close = ["-H", "Connection: close"] if new_connections else []
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "2s", *close,
        "-s", str(HERE / "script.lua"), f"{url}/v1/prediction",
    ]  # fmt: skip
    env = {**os.environ, "FLIGHTS_PER_REQUEST": str(flights_per_request), "FLIGHTS_FILE": str(HERE / "flights.jsonl")}
    return subprocess.Popen(command, cwd=HERE.parent, env=env, stdout=subprocess.PIPE, text=True)


def wrk(
    url: str,
    seconds: int,
    threads: int,
    connections: int,
    flights_per_request: int,
    label: str,
    new_connections: bool = False,
) -> str:
    """Run wrk to the end, printing the seconds left; its raw output."""
    process = wrk_process(url, seconds, threads, connections, flights_per_request, new_connections)
    end = time.monotonic() + seconds
    while process.poll() is None:
        left = end - time.monotonic()
        if left > 1:
            say(f"{label}: {left:.0f} s left")
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=min(10, max(left, 1)))
    output = process.stdout.read() if process.stdout else ""
    if process.returncode:
        sys.exit(f"wrk failed with code {process.returncode}: {output}")
    return output


def wrk_summary(url: str, seconds: int, threads: int, connections: int, flights: int, label: str) -> dict[str, Any]:
    """A wrk run's JSON summary (see wrk())."""
    return parse_summary(wrk(url, seconds, threads, connections, flights, label))


def in_background(target: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run target(*args) in a thread; its return value lands in the dict under "result"."""
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(result=target(*args)), daemon=True)
    thread.start()
    return thread, box


def parse_summary(wrk_output: str) -> dict[str, Any]:
    """The JSON line script.lua's done() printed; ValueError if wrk printed none."""
    for line in reversed(wrk_output.splitlines()):
        if line.startswith('{"requests"'):
            return dict(json.loads(line))
    raise ValueError("wrk printed no JSON summary line: was it run with -s loadtest/script.lua?")


def failures(summary: dict[str, Any]) -> int:
    """Non-2xx answers plus socket errors of every kind."""
    return int(summary["non_2xx"]) + sum(int(summary["errors"][kind]) for kind in SOCKET_ERRORS)


def verdict(summary: dict[str, Any]) -> str:
    """PASS or FAIL against the reference bar, with the reason."""
    if failures(summary):
        return f"FAIL: {failures(summary)} failed requests (non-2xx or socket errors)"
    if summary["requests"] < BAR_REQUESTS:
        return f"FAIL: {summary['requests']:,} requests, below the bar of {BAR_REQUESTS:,}"
    return f"PASS: {summary['requests']:,} requests in {summary['duration_s']:.0f} s, no errors"


def markdown(run: dict[str, Any], title: str, command: str) -> str:
    """The stress test's report: the service's run as a table row, and its verdict."""
    latency = run["latency_ms"]
    sockets = sum(run["errors"][kind] for kind in SOCKET_ERRORS)
    return "\n".join([
        f"# {title}",
        "",
        f"Command: `{command}`",
        "",
        "| target | requests | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | non-2xx | socket errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| service | {run['requests']:,} | {run['requests_per_s']:,.0f} | {latency['p50']:.1f} | "
        f"{latency['p90']:.1f} | {latency['p99']:.1f} | {latency['p99_9']:.1f} | {latency['max']:.1f} | "
        f"{run['non_2xx']} | {sockets} |",
        "",
        f"Verdict for service: {verdict(run)}",
        "",
    ])  # fmt: skip


def plot(runs: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Latency percentiles and throughput of every run, side by side, as a PNG."""
    percentiles = ("p50", "p90", "p99", "p99_9")
    with figure(path, 2, (11, 4.2)) as (drawn, (left, right)):
        width = 0.8 / len(runs)
        for i, (name, run) in enumerate(runs.items()):
            xs = [p + i * width for p in range(len(percentiles))]
            left.bar(xs, [run["latency_ms"][p] for p in percentiles], width, label=name)
        left.set_xticks([p + 0.4 - width / 2 for p in range(len(percentiles))], ["p50", "p90", "p99", "p99.9"])
        left.set(ylabel="latency (ms)", yscale="log", title="latency percentiles")
        left.legend()
        right.bar(list(runs), [r["requests_per_s"] for r in runs.values()], color=[f"C{i}" for i in range(len(runs))])
        right.set(ylabel="requests / s", title="throughput")
        for i, run in enumerate(runs.values()):
            right.annotate(f"{run['requests_per_s']:,.0f}", (i, run["requests_per_s"]), ha="center", va="bottom")
        drawn.suptitle(title)
