"""The measured answer to "how could the performance be improved?": one knob at a time.

Each configuration starts a fresh service with its environment, warms it up, runs wrk with
script.lua, and becomes one row of loadtest/results/ablation/ablation.md (and ablation.json).

    python loadtest/ablation.py [--duration 15]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import SOCKET_ERRORS, parse_summary  # noqa: E402
from run import say, server, wrk  # noqa: E402


def shadow_fast_loops() -> str:
    """A folder whose uvloop and httptools fail to import, so uvicorn falls back to asyncio and h11."""
    folder = tempfile.mkdtemp(prefix="no-uvloop-")
    for name in ("uvloop", "httptools"):
        Path(folder, f"{name}.py").write_text(f'raise ImportError("{name} disabled for the ablation")\n')
    return folder


# (knob, value, service environment, wrk connections, flights per request); the first row is the default.
CONFIGS: list[tuple[str, str, dict[str, str], int, int]] = [
    ("default", "as shipped", {}, 200, 1),
    ("adaptive batching", "off", {"FLIGHT_DELAY_BATCHING": "false"}, 200, 1),
    ("max_batch_size", "32", {"FLIGHT_DELAY_MAX_BATCH_SIZE": "32"}, 200, 1),
    ("max_batch_size", "1000", {"FLIGHT_DELAY_MAX_BATCH_SIZE": "1000"}, 200, 1),
    ("max_latency_ms", "100", {"FLIGHT_DELAY_MAX_LATENCY_MS": "100"}, 200, 1),
    ("max_latency_ms", "10000", {"FLIGHT_DELAY_MAX_LATENCY_MS": "10000"}, 200, 1),
    ("workers", "1", {"FLIGHT_DELAY_WORKERS": "1"}, 200, 1),
    ("workers", "3", {"FLIGHT_DELAY_WORKERS": "3"}, 200, 1),
    ("tracing middleware", "on, every request", {"FLIGHT_DELAY_UNTRACED_ROUTES": "[]"}, 200, 1),
    ("Prometheus metrics", "off", {"FLIGHT_DELAY_METRICS": "false"}, 200, 1),
    ("access log", "on", {"FLIGHT_DELAY_ACCESS_LOG": "true"}, 200, 1),
    ("uvloop + httptools", "off", {"PYTHONPATH": "<shadow>"}, 200, 1),
    ("flights per request", "10", {}, 200, 10),
    ("flights per request", "100", {}, 200, 100),
    ("connections", "400", {}, 400, 1),
    ("connections", "800", {}, 800, 1),
]


def row(knob: str, value: str, summary: dict[str, Any], flights: int, base: dict[str, Any]) -> str:
    """One Markdown table row."""
    errors = summary["non_2xx"] + sum(summary["errors"][kind] for kind in SOCKET_ERRORS)
    return (
        f"| {knob} | {value} | {summary['requests_per_s']:,.0f} | {summary['requests_per_s'] * flights:,.0f} | "
        f"{summary['requests_per_s'] / base['requests_per_s']:.2f}x | {summary['latency_ms']['p50']:.1f} | "
        f"{summary['latency_ms']['p99']:.1f} | {errors} |"
    )


def main() -> None:
    """Run every configuration back to back and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds measured per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per configuration")
    args = parser.parse_args()
    results = HERE / "results" / "ablation"
    results.mkdir(parents=True, exist_ok=True)
    shadow = shadow_fast_loops()
    runs: list[dict[str, Any]] = []
    for number, (knob, value, env, connections, flights) in enumerate(CONFIGS, 1):
        env = {key: shadow if text == "<shadow>" else text for key, text in env.items()}
        say(f"configuration {number}/{len(CONFIGS)}: {knob} = {value}")
        with server("service", env) as url:
            wrk(url, args.warmup, 4, connections, flights, "warm-up")
            summary = parse_summary(wrk(url, args.duration, 4, connections, flights, f"{knob} = {value}"))
        runs.append({"knob": knob, "value": value, "env": env, "connections": connections,
                     "flights_per_request": flights, "summary": summary})  # fmt: skip
    base = runs[0]["summary"]
    lines = [
        f"Ablation, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, wrk -t4 -d{args.duration}s "
        f"(-c200 unless the row says otherwise), after a {args.warmup} s warm-up; `python loadtest/ablation.py`",
        "",
        "| knob | value | req/s | flights/s | req/s vs default | p50 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *(row(r["knob"], r["value"], r["summary"], r["flights_per_request"], base) for r in runs),
        "",
    ]
    (results / "ablation.md").write_text("\n".join(lines))
    (results / "ablation.json").write_text(json.dumps(runs, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
