"""Where a worker's time goes under the reference load: py-spy samples, grouped by layer.

    python -m loadtest.cpu_profile [--seconds 15] [--connections 200] [--flights-per-request 1]
                                   [--new-connections] [--name NAME]

Starts the service, drives it with wrk -t4 (200 connections, 1 flight per request unless told; with
--new-connections each request on a connection of its own), samples one worker with py-spy (needs
root or ptrace rights) and writes loadtest/results/profile/NAME.md with each layer's share of
samples (NAME defaults to profile-YYYY-MM-DD, today; existing files are refused unless --overwrite).
"""

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

from loadtest.results import RESULTS, dated, say, unused
from loadtest.servers import server, service_workers
from loadtest.wrk import in_background, wrk

# First match wins, from the innermost frame outwards: (layer, fragments of a frame's text).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("model: scikit-learn predict", ("sklearn/",)),
    ("model: ONNX Runtime", ("models/predictor.py", "onnxruntime/")),
    ("model: feature encoding (numpy)", ("models/features.py",)),
    ("request parsing and validation (pydantic)", ("model_validate", "from_http_request", "parse_request")),
    ("response serialization", ("to_http_response", "serialize_model", "IterableResponse", "model_dump_json")),
    ("adaptive batching (dispatcher, thread hop)", ("dispatcher.py", "batch_infer", "anyio/", "to_thread")),
    ("metrics middleware (Prometheus)", ("instruments.py", "prometheus_client")),
    ("tracing middleware (OpenTelemetry)", ("opentelemetry",)),
    ("monitoring and prediction log", ("serving/monitoring.py", "serving/prediction_log.py")),
    ("building the answers (service.py, serving/routes.py)", ("service.py", "serving/routes.py")),
    ("request layer (serving/layer.py)", ("serving/layer.py", "serving/internals.py")),
    ("BentoML app and context", ("_bentoml_impl/", "_bentoml_sdk/", "bentoml/_internal/")),
    ("Starlette routing and middleware", ("starlette/",)),
    ("uvicorn HTTP protocol (httptools)", ("uvicorn/",)),
]


PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")  # installed beside Python


def layer(stack: list[str]) -> str:
    """The layer a sample belongs to: its innermost frame that names one."""
    for frame in reversed(stack):
        for name, fragments in LAYERS:
            if any(fragment in frame for fragment in fragments):
                return name
    return "event loop and other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=15, help="seconds sampled")
    parser.add_argument("--connections", type=int, default=200, help="wrk connections (default 200)")
    parser.add_argument("--flights-per-request", type=int, default=1, help="flights in each request (default 1)")
    parser.add_argument("--new-connections", action="store_true", help="a new connection per request")
    parser.add_argument("--name", default=dated("profile"), help="file name of the table (default profile-TODAY)")
    parser.add_argument("--overwrite", action="store_true", help="replace the table and samples if they exist")
    args = parser.parse_args()
    results = RESULTS / "profile"
    raw = results / f"{args.name}.py-spy.raw.txt"
    unused(results / f"{args.name}.md", raw, overwrite=args.overwrite)
    results.mkdir(parents=True, exist_ok=True)
    with server("service") as (url, process):
        load = (4, args.connections, args.flights_per_request)
        wrk(url, 3, *load, "warm-up", args.new_connections)
        thread, _box = in_background(wrk, url, args.seconds + 6, *load, "load", args.new_connections)
        time.sleep(3)
        worker = next(iter(service_workers(process.pid)))
        say(f"sampling worker {worker} for {args.seconds} s")
        subprocess.run(
            [PY_SPY, "record", "-p", str(worker), "-d", str(args.seconds), "-f", "raw", "-o", str(raw),
             "--nonblocking", "--threads"],
            check=True, capture_output=True,
        )  # fmt: skip
        thread.join()
    shares: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        shares[layer(stack.split(";"))] += int(count)
    total = sum(shares.values())
    lines = [
        f"Profile of one worker under wrk -t4 -c{args.connections}, {args.flights_per_request} flight(s) per request"
        f"{', a new connection per request' if args.new_connections else ''}, "
        f"{time.strftime('%Y-%m-%d')}, {total} py-spy samples; "
        f"`python -m loadtest.cpu_profile {' '.join(sys.argv[1:])}`",
        "",
        "| layer | share of samples |",
        "|---|---:|",
        *(f"| {name} | {count / total:.1%} |" for name, count in shares.most_common()),
        "",
    ]
    (results / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
