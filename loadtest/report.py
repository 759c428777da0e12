"""Reading wrk's JSON summary line (from script.lua's done()) and writing the Markdown report and PNG plot."""

import json
from pathlib import Path
from typing import Any

BAR_REQUESTS = 50_000  # the reference bar: this many requests in 45 s, with no error of any kind
SOCKET_ERRORS = ("connect", "read", "write", "timeout")


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


def markdown(runs: dict[str, dict[str, Any]], title: str, command: str) -> str:
    """A table of every run, with ratios to the first run (the service)."""
    names = list(runs)
    head = runs[names[0]]
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`",
        "",
        "| target | requests | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | non-2xx | socket errors | "
        f"req/s vs {names[0]} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in runs.items():
        latency = run["latency_ms"]
        sockets = sum(run["errors"][kind] for kind in SOCKET_ERRORS)
        lines.append(
            f"| {name} | {run['requests']:,} | {run['requests_per_s']:,.0f} | {latency['p50']:.1f} | "
            f"{latency['p90']:.1f} | {latency['p99']:.1f} | {latency['p99_9']:.1f} | {latency['max']:.1f} | "
            f"{run['non_2xx']} | {sockets} | {run['requests_per_s'] / head['requests_per_s']:.2f}x |"
        )
    lines += ["", f"Verdict for {names[0]}: {verdict(head)}", ""]
    return "\n".join(lines)


def plot(runs: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Latency percentiles and throughput of every run, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    percentiles = ("p50", "p90", "p99", "p99_9")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(runs)
    for i, (name, run) in enumerate(runs.items()):
        xs = [p + i * width for p in range(len(percentiles))]
        left.bar(xs, [run["latency_ms"][p] for p in percentiles], width, label=name)
    left.set_xticks([p + 0.4 - width / 2 for p in range(len(percentiles))], ["p50", "p90", "p99", "p99.9"])
    left.set_ylabel("latency (ms)")
    left.set_yscale("log")
    left.set_title("latency percentiles")
    left.legend()
    right.bar(list(runs), [run["requests_per_s"] for run in runs.values()], color=[f"C{i}" for i in range(len(runs))])
    right.set_ylabel("requests / s")
    right.set_title("throughput")
    for i, run in enumerate(runs.values()):
        right.annotate(f"{run['requests_per_s']:,.0f}", (i, run["requests_per_s"]), ha="center", va="bottom")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
