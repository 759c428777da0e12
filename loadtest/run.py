"""The stress test: start the service, warm it up, run wrk with the reference parameters, report.

    python -m loadtest.run                      # reference run: wrk -t4 -c200 -d45s on a fresh service
    python -m loadtest.run --url http://127.0.0.1:3000 --duration 10 --connections 50 --name ci

Writes loadtest/results/NAME/ (default reference-YYYY-MM-DD, today): wrk's raw output, summary.json,
report.md, plot.png. A folder that exists is refused, unless --overwrite: the docs cite committed runs
by folder, and a rerun must not silently replace one. Exits 1 when the service answered anything but
2xx or wrk saw socket errors; never on throughput. Every shape on the service against other targets,
in alternating rounds, is `python -m loadtest.peers` (`make loadtest` runs both).
"""

import argparse
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from loadtest.results import RESULTS, dated, say, unused, write_json
from loadtest.servers import server
from loadtest.wrk import failures, markdown, parse_summary, plot, verdict, wrk


def measure(url: str, args: argparse.Namespace, results: Path) -> dict[str, Any]:
    """Warm up, then the measured run; the raw output is kept next to the report."""
    if args.warmup:
        say(f"service: warming up for {args.warmup} s")
        wrk(url, args.warmup, args.threads, args.connections, args.flights_per_request, "service warm-up")
    say(f"service: measuring wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
        f"{args.flights_per_request} flight(s) a request")  # fmt: skip
    raw = wrk(url, args.duration, args.threads, args.connections, args.flights_per_request, "service")
    (results / "service.wrk.txt").write_text(raw)
    summary = parse_summary(raw)
    say(f"service: {summary['requests']:,} requests, {summary['requests_per_s']:,.0f} req/s, "
        f"p99 {summary['latency_ms']['p99']:.1f} ms, {failures(summary)} failed")  # fmt: skip
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="base URL of a running service (default: start `bentoml serve`)")
    parser.add_argument("--duration", type=int, default=45, help="seconds of the measured run (default 45)")
    parser.add_argument("--threads", type=int, default=4, help="wrk threads (default 4)")
    parser.add_argument("--connections", type=int, default=200, help="wrk connections (default 200)")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of warm-up before measuring (default 5)")
    parser.add_argument("--flights-per-request", type=int, default=1, help="flights in each request (default 1)")
    parser.add_argument(
        "--name", default=dated("reference"), help="results folder under loadtest/results/ (default reference-TODAY)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the results folder if it exists")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the reference test and write the report; 1 if the service failed any request."""
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    results = RESULTS / args.name
    unused(results, overwrite=args.overwrite)
    results.mkdir(parents=True, exist_ok=True)
    with nullcontext((args.url.rstrip("/"), None)) if args.url else server("service") as (url, _process):
        run = measure(url, args, results)
    command = (f"python -m loadtest.run --duration {args.duration} --threads {args.threads} "
               f"--connections {args.connections} --flights-per-request {args.flights_per_request}")  # fmt: skip
    title = f"Stress test, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores"
    write_json(results / "summary.json", {"command": command, "runs": {"service": run}})
    (results / "report.md").write_text(markdown(run, title, command))
    plot({"service": run}, results / "plot.png", title)
    say(f"report: {results / 'report.md'}")
    print(verdict(run) if args.duration >= 45 else f"short run: {failures(run)} failed")
    return 1 if failures(run) else 0


if __name__ == "__main__":
    sys.exit(main())
