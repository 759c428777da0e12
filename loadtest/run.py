"""The stress test: start the service, warm it up, run wrk with the reference parameters, report.

    python loadtest/run.py                      # reference run: wrk -t4 -c200 -d45s on a fresh service
    python loadtest/run.py --baselines          # then the per-request baseline and the Python ceiling
    python loadtest/run.py --url http://127.0.0.1:3000 --duration 10 --connections 50 --name ci

Writes loadtest/results/NAME/ (default reference-YYYY-MM-DD, today): TARGET.wrk.txt (raw wrk output),
summary.json, report.md, plot.png. A folder that exists is refused, unless --overwrite: the docs cite
committed runs by folder, and a rerun must not silently replace one.
Exits 1 when the service answered anything but 2xx or wrk saw socket errors; never on throughput.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.request import urlopen

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import failures, markdown, parse_summary, plot, verdict  # noqa: E402

PROJECT_DIR = HERE.parent
STARTUP_SECONDS = 90
SERVERS = {
    "service": [sys.executable, "-m", "bentoml", "serve", "service:FlightDelay", "--host", "127.0.0.1", "--port"],
    "baseline": [sys.executable, str(HERE / "baseline.py"), "--port"],
    "ceiling": [sys.executable, str(HERE / "ceiling.py"), "--port"],
    "fastapi": [sys.executable, str(HERE / "peer_fastapi.py"), "--port"],  # make peers: requirements-peers.txt
}
PEERS = ("fastapi",)


def say(message: str) -> None:
    """A progress line."""
    print(f"[loadtest {time.strftime('%H:%M:%S')}] {message}", flush=True)


def dated(prefix: str) -> str:
    """prefix-YYYY-MM-DD with today's date: the default name of a results folder or file."""
    return f"{prefix}-{time.strftime('%Y-%m-%d')}"


def unused(*paths: Path, overwrite: bool = False) -> None:
    """Exit with one line if any of paths exists, unless overwrite: a rerun never replaces a cited result."""
    taken = [path.relative_to(PROJECT_DIR).as_posix() for path in paths if path.exists()]
    if taken and not overwrite:
        sys.exit(f"already there: {', '.join(taken)}; choose another --name, or --overwrite to replace")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ready(url: str, path: str = "/readyz") -> bool:
    """Whether url + path answers 200 now."""
    try:
        with urlopen(f"{url}{path}", timeout=1) as answer:
            return bool(answer.status == 200)
    except (URLError, OSError):
        return False


def wait_ready(url: str, process: subprocess.Popen[bytes] | None) -> None:
    """Poll /readyz until it answers 200."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            sys.exit(f"the server exited with code {process.returncode} before it was ready")
        if ready(url):
            return
        time.sleep(0.3)
    sys.exit(f"{url}/readyz did not answer 200 within {STARTUP_SECONDS} s")


@contextmanager
def checkout(revision: str | None) -> Iterator[Path]:
    """This checkout, or the project's code at a git revision in a temporary worktree (removed afterwards).

    Either runs on the same model store, so a code change can be measured against the code before it.
    """
    if revision is None:
        yield PROJECT_DIR
        return
    folder = Path(tempfile.mkdtemp(prefix="flight-delay-code-")) / "checkout"
    git = ["git", "-C", str(PROJECT_DIR), "worktree"]
    subprocess.run([*git, "add", "--detach", str(folder), revision], check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run([*git, "remove", "--force", str(folder)], check=True)


@contextmanager
def server(
    kind: str,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    code: Path = PROJECT_DIR,
    port: int | None = None,
    cpus: str | None = None,
    workers: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start one of SERVERS on `port` (default: a free one), yield its base URL and process once ready,
    stop it afterwards.

    Its output goes to log, if given; `code` is the project checkout it runs from; `cpus` pins it
    (a taskset list); `workers` sets the baselines' worker count (the service's is FLIGHT_DELAY_WORKERS).
    """
    port = port or free_port()
    pinned = ["taskset", "-c", cpus] if cpus else []
    count = ["--workers", str(workers)] if workers and kind != "service" else []
    with open(log or os.devnull, "wb") as output:  # the child keeps its own copy of the file
        process = subprocess.Popen(
            [*pinned, *SERVERS[kind], str(port), *count],
            cwd=code,
            env={**os.environ, **(env or {})},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        wait_ready(url, process)
        say(f"{kind} ready in {time.monotonic() - started:.1f} s at {url}")
        yield url, process
    finally:
        with suppress(ProcessLookupError):  # a drill may have stopped it already
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


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
    return subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=subprocess.PIPE, text=True)


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


NEW_CONNECTION_ROW = "new connection per request"
NEW_CONNECTION_CLIENTS = 64  # wrk connections of the new-connection-per-request row (issue 25's measurement)


def measure(
    url: str, kind: str, args: argparse.Namespace, results: Path, new_connections: bool = False
) -> dict[str, Any]:
    """Warm up, then the measured run; the raw output is kept next to the report. With `new_connections`,
    a connection per request over NEW_CONNECTION_CLIENTS connections."""
    connections = NEW_CONNECTION_CLIENTS if new_connections else args.connections
    if args.warmup:
        say(f"{kind}: warming up for {args.warmup} s")
        wrk(url, args.warmup, args.threads, connections, args.flights_per_request, f"{kind} warm-up", new_connections)
    header = " -H 'Connection: close'" if new_connections else ""
    say(f"{kind}: measuring wrk -t{args.threads} -c{connections} -d{args.duration}s{header}")
    raw = wrk(url, args.duration, args.threads, connections, args.flights_per_request, kind, new_connections)
    (results / f"{kind.replace(', ', '-').replace(' ', '-')}.wrk.txt").write_text(raw)
    summary = parse_summary(raw)
    say(f"{kind}: {summary['requests']:,} requests, {summary['requests_per_s']:,.0f} req/s, "
        f"p99 {summary['latency_ms']['p99']:.1f} ms, {failures(summary)} failed")  # fmt: skip
    return summary


def sample_answers(url: str) -> list[Any]:
    """The answers to the load test's first 50 bodies of 1 to 50 flights: a peer must give the same."""
    pool = [json.loads(line) for line in (HERE / "flights.jsonl").read_text().splitlines() if line]
    with httpx.Client(base_url=url, timeout=30) as http:
        return [http.post("/v1/prediction", json={"flights": pool[:size]}).json() for size in range(1, 51)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="base URL of a running service (default: start `bentoml serve`)")
    parser.add_argument("--duration", type=int, default=45, help="seconds of the measured run (default 45)")
    parser.add_argument("--threads", type=int, default=4, help="wrk threads (default 4)")
    parser.add_argument("--connections", type=int, default=200, help="wrk connections (default 200)")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of warm-up before measuring (default 5)")
    parser.add_argument("--flights-per-request", type=int, default=1, help="flights in each request (default 1)")
    parser.add_argument("--baselines", action="store_true", help="also run the per-request baseline and the ceiling")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also the model behind FastAPI (requirements-peers.txt), answers checked first",
    )
    parser.add_argument(
        "--name", default=dated("reference"), help="results folder under loadtest/results/ (default reference-TODAY)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the results folder if it exists")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every target back to back and write the report; 1 if the service failed any request."""
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    results = HERE / "results" / args.name
    unused(results, overwrite=args.overwrite)
    results.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, Any]] = {}
    answers = None
    if args.url:
        runs["service"] = measure(args.url.rstrip("/"), "service", args, results)
    else:
        with server("service") as (url, _):
            answers = sample_answers(url) if args.peers else None
            runs["service"] = measure(url, "service", args, results)
            if args.baselines or args.peers:
                runs[NEW_CONNECTION_ROW] = measure(url, NEW_CONNECTION_ROW, args, results, new_connections=True)
    kinds = (("baseline", "ceiling") if args.baselines else ()) + (PEERS if args.peers else ())
    for kind in kinds:
        with server(kind) as (url, _):
            if kind in PEERS and sample_answers(url) != answers:
                sys.exit(f"{kind} does not answer as the service does: not measured")
            runs[kind] = measure(url, kind, args, results)
            runs[f"{kind}, {NEW_CONNECTION_ROW}"] = measure(
                url, f"{kind}, {NEW_CONNECTION_ROW}", args, results, new_connections=True
            )
    command = (f"python loadtest/run.py --duration {args.duration} --threads {args.threads} "
               f"--connections {args.connections} --flights-per-request {args.flights_per_request}"
               + (" --baselines" if args.baselines else "") + (" --peers" if args.peers else ""))  # fmt: skip
    title = f"Stress test, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores"
    (results / "summary.json").write_text(json.dumps({"command": command, "runs": runs}, indent=2) + "\n")
    (results / "report.md").write_text(markdown(runs, title, command))
    plot(runs, results / "plot.png", title)
    say(f"report: {results / 'report.md'}")
    print(verdict(runs["service"]) if args.duration >= 45 else f"short run: {failures(runs['service'])} failed")
    return 1 if failures(runs["service"]) else 0


if __name__ == "__main__":
    sys.exit(main())
