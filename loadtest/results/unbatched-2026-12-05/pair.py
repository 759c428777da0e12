"""Paired rounds of the service at REV against this checkout, in five shapes of closed-loop traffic (wrk).

    .venv/bin/python loadtest/results/unbatched-2026-12-05/pair.py REV ROUNDS SECONDS   (from the project root,
    with PYTHONPATH=.; this run: d12499b 3 10). SHAPES, comma-separated, keeps only the shapes named
    (added for loadtest/results/one-send-2026-12-06/).

Both servers stay up; each shape runs against one while the other idles, alternating, after 2 s of warm-up.
"""

import os
import statistics
import sys
from contextlib import ExitStack
from functools import partial
from typing import Any

from loadtest.servers import alternate, checkout, server
from loadtest.wrk import parse_summary, wrk

SHAPES = {  # name: flights per request, connections, a new connection per request, wrk threads
    "keepalive200": (1, 200, False, 4),
    "newconn64": (1, 64, True, 4),
    "flights100": (100, 64, False, 4),
    "lone": (1, 1, False, 1),
    "flights1000": (1000, 8, False, 4),
}


def run(url: str, shape: str, seconds: int) -> dict[str, Any]:
    flights, connections, new, threads = SHAPES[shape]
    wrk(url, 2, threads, connections, flights, "warm-up", new)
    return parse_summary(wrk(url, seconds, threads, connections, flights, shape, new))


def main() -> None:
    revision, rounds, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for shape in set(SHAPES) - set(os.environ.get("SHAPES", ",".join(SHAPES)).split(",")):
        del SHAPES[shape]
    with ExitStack() as stack:
        code = stack.enter_context(checkout(revision))
        urls = {"before": stack.enter_context(server("service", code=code))[0]}
        urls["after"] = stack.enter_context(server("service"))[0]
        sides = {f"{side}|{shape}": partial(run, url, shape, seconds) for shape in SHAPES for side, url in urls.items()}
        runs = alternate(sides, rounds)
    for shape in SHAPES:
        before, after = runs[f"before|{shape}"], runs[f"after|{shape}"]

        def median(side: list[dict[str, Any]], key: str) -> float:
            return statistics.median(r["requests_per_s"] if key == "rps" else r["latency_ms"][key] for r in side)

        print(
            f"{shape:12s} before {[r['requests_per_s'] for r in before]} after {[r['requests_per_s'] for r in after]} "
            f"ratio {median(after, 'rps') / median(before, 'rps'):.3f} | p50 {median(before, 'p50'):.3f} -> "
            f"{median(after, 'p50'):.3f} ms | p99 {median(before, 'p99'):.2f} -> {median(after, 'p99'):.2f}"
        )


if __name__ == "__main__":
    main()
