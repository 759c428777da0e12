"""The measured answer to "how could the performance be improved?": one knob at a time.

Each configuration starts a fresh service with its environment, warms it up and runs wrk with
script.lua. The machine is shared and noisy, so every round runs all configurations back to back,
each is compared with the default of its own round, and the table gives medians over the rounds:
loadtest/results/ablation/NAME.md (and NAME.json with every run; NAME defaults to ablation-YYYY-MM-DD,
today; existing files are refused unless --overwrite).

    python -m loadtest.ablation [--rounds 3] [--duration 10] [--only KNOB ...] [--against REV] [--name NAME]

--against REV measures a code change: each round also runs the code of git revision REV (checked
out in a temporary worktree, same model store) in every shape of loadtest.wrk.SHAPES (the reference,
a new connection per request, 100 and 1,000 flights a request), next to this checkout's rows of the
same shapes. The fifth shape, the open-loop curve, is paired by `python -m loadtest.open_loop paired
--against REV` (and `--new-connections`).
"""

import argparse
import os
import shlex
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from loadtest.results import RESULTS, dated, say, unused, write_json
from loadtest.servers import PROJECT_DIR, checkout, server
from loadtest.wrk import SHAPES, failures, parse_summary, wrk


def shadow_fast_loops() -> str:
    """A folder whose uvloop and httptools fail to import, so uvicorn falls back to asyncio and h11."""
    folder = tempfile.mkdtemp(prefix="no-uvloop-")
    for name in ("uvloop", "httptools"):
        Path(folder, f"{name}.py").write_text(f'raise ImportError("{name} disabled for the ablation")\n')
    return folder


# Everything serving/monitoring.py and serving/prediction_log.py do, off.
MONITORING_OFF = {"FLIGHT_DELAY_MONITORING": "false", "FLIGHT_DELAY_LOG_SAMPLE": "0"}
# Rows whose knob names it send every request on a connection of its own (wrk -H 'Connection: close').
NEW_CONNECTIONS = "new connection per request, 64 connections"
# The shapes besides the reference, as rows: (knob, wrk connections, flights per request).
SHAPE_ROWS = [
    (
        NEW_CONNECTIONS
        if shape.new_connections
        else f"{shape.flights:,} flights per request, {shape.connections} connections",
        shape.connections,
        shape.flights,
    )
    for shape in SHAPES[1:]
]
# (knob, value, service environment, wrk connections, flights per request); the first row is the default.
CONFIGS: list[tuple[str, str, dict[str, str], int, int]] = [
    ("default", "as shipped", {}, 200, 1),
    ("adaptive batching", "off", {"FLIGHT_DELAY_BATCHING": "false"}, 200, 1),
    ("max_batch_size", "32", {"FLIGHT_DELAY_MAX_BATCH_SIZE": "32"}, 200, 1),
    ("max_batch_size", "1000", {"FLIGHT_DELAY_MAX_BATCH_SIZE": "1000"}, 200, 1),
    ("greedy batching (serving/internals.py)", "off", {"FLIGHT_DELAY_GREEDY_BATCHING": "false"}, 200, 1),
    ("max_latency_ms", "100", {"FLIGHT_DELAY_MAX_LATENCY_MS": "100"}, 200, 1),
    ("max_latency_ms", "10000", {"FLIGHT_DELAY_MAX_LATENCY_MS": "10000"}, 200, 1),
    ("workers", "1", {"FLIGHT_DELAY_WORKERS": "1"}, 200, 1),
    ("workers", "3", {"FLIGHT_DELAY_WORKERS": "3"}, 200, 1),
    ("tracing middleware", "on, every request", {"FLIGHT_DELAY_UNTRACED_ROUTES": "[]"}, 200, 1),
    ("Prometheus metrics", "all off", {"FLIGHT_DELAY_METRICS": "false"}, 200, 1),
    ("monitoring and prediction log", "off", MONITORING_OFF, 200, 1),
    ("monitoring and prediction log, 100 flights per request, 64 connections", "on", {}, 64, 100),
    ("monitoring and prediction log, 100 flights per request, 64 connections", "off", MONITORING_OFF, 64, 100),
    ("gc.freeze() after load", "off", {"FLIGHT_DELAY_GC_FREEZE": "false"}, 200, 1),
    ("access log", "on", {"FLIGHT_DELAY_ACCESS_LOG": "true"}, 200, 1),
    ("uvloop + httptools", "off", {"PYTHONPATH": "<shadow>"}, 200, 1),
    ("flights per request", "10", {}, 200, 10),
    ("flights per request", "100", {}, 200, 100),
    ("lean route (serving/layer.py)", "off", {"FLIGHT_DELAY_LEAN_ROUTE": "false"}, 200, 1),
    ("100 flights per request, 64 connections", "lean route off", {"FLIGHT_DELAY_LEAN_ROUTE": "false"}, 64, 100),
    ("connections", "400", {}, 400, 1),
    *((knob, "as shipped", {}, connections, flights) for knob, connections, flights in SHAPE_ROWS),
    # code at another revision (--against): the value is replaced by "at REV"
    ("code", "<revision>", {}, 200, 1),
    *((f"code, {knob}", "<revision>", {}, connections, flights) for knob, connections, flights in SHAPE_ROWS),
    ("connections", "800", {}, 800, 1),
    ("default", "again, last of the round", {}, 200, 1),  # shows any drift within a round
]


def row(knob: str, value: str, runs: list[dict[str, Any]], ratios: list[float], flights: int) -> str:
    """One Markdown table row: medians over the rounds."""
    rps = median([r["requests_per_s"] for r in runs])
    errors = sum(failures(r) for r in runs)
    return (
        f"| {knob} | {value} | {rps:,.0f} | {rps * flights:,.0f} | {median(ratios):.2f}x "
        f"({min(ratios):.2f} to {max(ratios):.2f}) | {median([r['latency_ms']['p50'] for r in runs]):.1f} | "
        f"{median([r['latency_ms']['p99'] for r in runs]):.1f} | {errors} |"
    )


def command(args: argparse.Namespace) -> str:
    """The command line that repeats this ablation, every option spelt out."""
    words = ["python", "-m", "loadtest.ablation", "--rounds", str(args.rounds), "--duration", str(args.duration)]
    words += ["--warmup", str(args.warmup), *(["--only", *args.only] if args.only else [])]
    return shlex.join([*words, *(["--against", args.against] if args.against else []), "--name", args.name])


def main(argv: list[str] | None = None) -> None:
    """Run every configuration, round after round, and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all configurations (default 3)")
    parser.add_argument("--duration", type=int, default=10, help="seconds measured per run (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per run (default 3)")
    parser.add_argument("--only", nargs="*", default=[], help="knobs to run, besides the default")
    parser.add_argument(
        "--name", default=dated("ablation"), help="file name of the table and runs (default ablation-TODAY)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the table and runs if they exist")
    parser.add_argument("--against", help="git revision whose code to measure next to this checkout's")
    args = parser.parse_args(argv)
    knobs = {knob for knob, *_ in CONFIGS}
    if unknown := sorted(set(args.only) - knobs):  # a name that matched nothing measured the default alone
        parser.error(f"--only: no knob {', '.join(map(repr, unknown))}; the knobs: {', '.join(sorted(knobs))}")
    results = RESULTS / "ablation"
    unused(results / f"{args.name}.md", results / f"{args.name}.json", overwrite=args.overwrite)
    results.mkdir(parents=True, exist_ok=True)
    shadow = shadow_fast_loops()
    configs = [c for c in CONFIGS if c[1] != "<revision>" and (c[0] == "default" or not args.only or c[0] in args.only)]
    if args.against:
        configs += [
            (knob, f"at {args.against}", env, c, f) for knob, value, env, c, f in CONFIGS if value == "<revision>"
        ]
    runs: list[dict[str, Any]] = []
    with checkout(args.against) as other:
        for round_number in range(1, args.rounds + 1):
            for number, (knob, value, env, connections, flights) in enumerate(configs, 1):
                env = {key: shadow if text == "<shadow>" else text for key, text in env.items()}
                say(f"round {round_number}/{args.rounds}, configuration {number}/{len(configs)}: {knob} = {value}")
                code = other if value.startswith("at ") else PROJECT_DIR
                new = NEW_CONNECTIONS in knob
                with server("service", env, code=code) as (url, _):
                    wrk(url, args.warmup, 4, connections, flights, "warm-up", new)
                    summary = parse_summary(wrk(url, args.duration, 4, connections, flights, f"{knob} = {value}", new))
                run = {"round": round_number, "knob": knob, "value": value, "env": env}
                runs.append({**run, "connections": connections, "flights_per_request": flights, "summary": summary})
    default_rps = {
        r["round"]: r["summary"]["requests_per_s"] for r in runs if (r["knob"], r["value"]) == CONFIGS[0][:2]
    }
    lines = [
        f"Ablation, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {args.rounds} rounds of wrk -t4 "
        f"-d{args.duration}s (-c200 unless the row says otherwise) after a {args.warmup} s warm-up, "
        f"medians over the rounds; `{command(args)}`",
        "",
        "| knob | value | req/s | flights/s | req/s vs default of the same round (min to max) | p50 ms | p99 ms | "
        "errors (all rounds) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for knob, value, _env, _connections, flights in configs:
        mine = [r for r in runs if (r["knob"], r["value"]) == (knob, value)]
        ratios = [r["summary"]["requests_per_s"] / default_rps[r["round"]] for r in mine]
        lines.append(row(knob, value, [r["summary"] for r in mine], ratios, flights))
    (results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    write_json(results / f"{args.name}.json", runs)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
