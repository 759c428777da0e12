"""The service against FastAPI (the best peer) at 100 and 1,000 flights a request, in more alternating
rounds than make peers runs: both servers up, each shape against one while the other idles.

    PYTHONPATH=. .venv/bin/python loadtest/results/plain-columns-2026-12-06/against_fastapi.py ROUNDS SECONDS
"""

import statistics
import sys
from contextlib import ExitStack
from functools import partial
from typing import Any

from loadtest.servers import alternate, server
from loadtest.wrk import SHAPES, parse_summary, wrk

LARGE = [shape for shape in SHAPES if shape.flights >= 100]


def run(url: str, flights: int, connections: int, seconds: int) -> dict[str, Any]:
    wrk(url, 2, 4, connections, flights, "warm-up")
    return parse_summary(wrk(url, seconds, 4, connections, flights, f"{flights} flights"))


def main() -> None:
    rounds, seconds = int(sys.argv[1]), int(sys.argv[2])
    with ExitStack() as stack:
        urls = {target: stack.enter_context(server(target))[0] for target in ("service", "fastapi")}
        sides = {
            f"{target}|{shape.flights}": partial(run, url, shape.flights, shape.connections, seconds)
            for shape in LARGE
            for target, url in urls.items()
        }
        runs = alternate(sides, rounds)
    for shape in LARGE:
        service, fastapi = (runs[f"{target}|{shape.flights}"] for target in ("service", "fastapi"))
        ratios = [s["requests_per_s"] / f["requests_per_s"] for s, f in zip(service, fastapi, strict=True)]
        print(
            f"{shape.name}: service {[r['requests_per_s'] for r in service]} fastapi "
            f"{[r['requests_per_s'] for r in fastapi]} per-round ratios {[round(r, 2) for r in ratios]} "
            f"median {statistics.median(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
