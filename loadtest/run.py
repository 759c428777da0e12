"""The stress test: start the service, warm it up, run wrk with the reference parameters, report.

    python -m loadtest.run                      # reference run: wrk -t4 -c200 -d45s on a fresh service
    python -m loadtest.run --baselines          # then the per-request baseline and the Python ceiling
    python -m loadtest.run --url http://127.0.0.1:3000 --duration 10 --connections 50 --name ci

Writes loadtest/results/NAME/ (default reference-YYYY-MM-DD, today): TARGET.wrk.txt (raw wrk output),
summary.json, report.md, plot.png. A folder that exists is refused, unless --overwrite: the docs cite
committed runs by folder, and a rerun must not silently replace one.
Exits 1 when the service answered anything but 2xx or wrk saw socket errors; never on throughput.
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from loadtest.results import RESULTS, dated, say, unused, write_json
from loadtest.servers import PEERS, server
from loadtest.wrk import failures, markdown, parse_summary, plot, verdict, wrk

HERE = Path(__file__).resolve().parent
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
        "--peers", action="store_true", help="also the model behind FastAPI (requirements-peers.txt), answers checked"
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
    results = RESULTS / args.name
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
            row = f"{kind}, {NEW_CONNECTION_ROW}"
            runs[row] = measure(url, row, args, results, new_connections=True)
    command = (f"python -m loadtest.run --duration {args.duration} --threads {args.threads} "
               f"--connections {args.connections} --flights-per-request {args.flights_per_request}"
               + (" --baselines" if args.baselines else "") + (" --peers" if args.peers else ""))  # fmt: skip
    title = f"Stress test, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores"
    write_json(results / "summary.json", {"command": command, "runs": runs})
    (results / "report.md").write_text(markdown(runs, title, command))
    plot(runs, results / "plot.png", title)
    say(f"report: {results / 'report.md'}")
    print(verdict(runs["service"]) if args.duration >= 45 else f"short run: {failures(runs['service'])} failed")
    return 1 if failures(runs["service"]) else 0


if __name__ == "__main__":
    sys.exit(main())
