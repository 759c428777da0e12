"""The stress test: start the service, warm it up, run wrk with the reference parameters, report.

    python -m loadtest.run                      # reference run: wrk -t4 -c200 -d45s on a fresh service
    python -m loadtest.run --baselines          # make loadtest: every shape, the baseline and the ceiling
    python -m loadtest.run --url http://127.0.0.1:3000 --duration 10 --connections 50 --name ci

With --baselines or --peers every target runs every shape of traffic (loadtest.wrk.SHAPES: the
reference as given, then a new connection per request, 100 and 1,000 flights a request), and the
service and the per-request targets the open-loop curve at fixed rates (CURVE_RATES).
Writes loadtest/results/NAME/ (default reference-YYYY-MM-DD, today): one raw wrk output per run,
summary.json, report.md, plot.png (the reference shape). A folder that exists is refused, unless
--overwrite: the docs cite committed runs by folder, and a rerun must not silently replace one.
Exits 1 when the service answered anything but 2xx or wrk saw socket errors; never on throughput.
"""

import argparse
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from loadtest.client import fixed_rates
from loadtest.probes import sample_answers
from loadtest.results import RESULTS, dated, say, unused, write_json
from loadtest.servers import PEERS, server
from loadtest.wrk import CURVE_RATES, SHAPES, Shape, failures, markdown, parse_summary, plot, verdict, wrk

CURVE_SECONDS = 10


def measure(url: str, kind: str, shape: Shape, args: argparse.Namespace, results: Path) -> dict[str, Any]:
    """Warm up, then the measured run; the raw output is kept next to the report."""
    if args.warmup:
        say(f"{kind}: warming up for {args.warmup} s")
        wrk(url, args.warmup, args.threads, shape.connections, shape.flights, f"{kind} warm-up", shape.new_connections)
    header = " -H 'Connection: close'" if shape.new_connections else ""
    say(f"{kind}: measuring wrk -t{args.threads} -c{shape.connections} -d{args.duration}s{header}, "
        f"{shape.flights} flight(s) a request")  # fmt: skip
    raw = wrk(url, args.duration, args.threads, shape.connections, shape.flights, kind, shape.new_connections)
    (results / f"{kind.replace(', ', '-').replace(' ', '-')}.wrk.txt").write_text(raw)
    summary = {**parse_summary(raw), "shape": shape.name}
    say(f"{kind}: {summary['requests']:,} requests, {summary['requests_per_s']:,.0f} req/s, "
        f"p99 {summary['latency_ms']['p99']:.1f} ms, {failures(summary)} failed")  # fmt: skip
    return summary


def every_shape(url: str, kind: str, args: argparse.Namespace, results: Path) -> dict[str, dict[str, Any]]:
    """The reference run as the arguments give it, then every other shape: {row name: wrk summary}."""
    reference = Shape(SHAPES[0].name, args.flights_per_request, args.connections)
    runs = {kind: measure(url, kind, reference, args, results)}
    for shape in SHAPES[1:] if args.baselines or args.peers else ():
        row = f"{kind}, {shape.name}"
        runs[row] = measure(url, row, shape, args, results)
    return runs


def curve_table(curves: dict[str, list[dict[str, Any]]]) -> str:
    """The open-loop curves as Markdown: p50 / p99 ms from each request's due time, share answered."""
    lines = [
        f"Open loop: Poisson arrivals, one flight a request, {CURVE_SECONDS} s a rate; p50 / p99 ms, share answered.",
        "",
        "| rate, req/s | " + " | ".join(curves) + " |",
        "|---:|" + "---|" * len(curves),
    ]
    for index, rate in enumerate(CURVE_RATES):
        cells = [f"{c[index]['latency_ms']['p50']:.1f} / {c[index]['latency_ms']['p99']:.1f}, "
                 f"{c[index]['ok'] / max(c[index]['due'], 1):.1%}" for c in curves.values()]  # fmt: skip
        lines.append(f"| {rate:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
    curves: dict[str, list[dict[str, Any]]] = {}
    standing = args.baselines or args.peers
    kinds = ("service",) + (("baseline", "ceiling") if args.baselines else ()) + (PEERS if args.peers else ())
    answers = None
    for kind in kinds:
        given = kind == "service" and args.url
        with nullcontext((args.url.rstrip("/"), None)) if given else server(kind) as (url, process):
            if args.peers and kind != "ceiling":
                answers = answers or sample_answers(url)
                if sample_answers(url) != answers:
                    sys.exit(f"{kind} does not answer as the service does: not measured")
            runs |= every_shape(url, kind, args, results)
            if standing and kind != "ceiling":
                curves[kind] = fixed_rates(url, process.pid if process else None, CURVE_RATES, CURVE_SECONDS, kind)
    command = (f"python -m loadtest.run --duration {args.duration} --threads {args.threads} "
               f"--connections {args.connections} --flights-per-request {args.flights_per_request}"
               + (" --baselines" if args.baselines else "") + (" --peers" if args.peers else ""))  # fmt: skip
    title = f"Stress test, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores"
    write_json(results / "summary.json", {"command": command, "runs": runs, "open_loop": curves})
    (results / "report.md").write_text(markdown(runs, title, command) + ("\n" + curve_table(curves) if curves else ""))
    plot({name: run for name, run in runs.items() if run["shape"] == SHAPES[0].name}, results / "plot.png", title)
    say(f"report: {results / 'report.md'}")
    print(verdict(runs["service"]) if args.duration >= 45 else f"short run: {failures(runs['service'])} failed")
    return 1 if any(failures(run) for name, run in runs.items() if name.partition(",")[0] == "service") else 0


if __name__ == "__main__":
    sys.exit(main())
