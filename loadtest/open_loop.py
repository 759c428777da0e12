"""Open-loop load: requests sent on a schedule, latency measured from each request's scheduled send time.

A closed-loop client (wrk) sends a connection's next request only after the last answer, so when the
service stalls it stops sending: the stall is measured once instead of for every request that should
have gone out meanwhile ("coordinated omission"). loadtest.client sends each request at its due time
and measures from it; its pool grows on demand up to 256 connections per process (512 in all, one
worker's cap on requests in flight; a load balancer keeps such a pool to each pod). `--closed N`
sends the same schedule the closed-loop way, for comparison (latency from the actual send).

    python -m loadtest.open_loop point --rate 2000 --duration 30       # one rate, a fresh service
    python -m loadtest.open_loop point --rate 2000 --target ceiling    # the bare ASGI server: the client's floor
    python -m loadtest.open_loop curve                                 # 10% to 100% of closed-loop capacity
    python -m loadtest.open_loop curve --new-connections --name curve-new-connections   # a connection per request
    python -m loadtest.open_loop headline                              # highest Poisson rate with p99 <= 25 ms
    python -m loadtest.open_loop headline --workers 1 --server-cpus 0 --client-cpus 1   # one core's worth
    python -m loadtest.open_loop crosscheck --rate 1500 --duration 10  # the same rate by httperf --period=e
    python -m loadtest.open_loop paired --against REV --rates 2000 4000 --duration 30   # a code change

The client runs in --processes processes (each a share of the schedule; Poisson streams add up to a
Poisson stream) on uvloop with httptools' parser, and reports the CPU it used. Results go to
loadtest/results/open-loop/NAME.json and NAME.md (curve: also NAME.png).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from loadtest.client import Load, measure, payloads
from loadtest.results import RESULTS as ALL_RESULTS
from loadtest.results import dated, figure, say, unused, write_json
from loadtest.servers import PROJECT_DIR, alternate, checkout, server
from loadtest.wrk import failures, parse_summary, wrk

RESULTS = ALL_RESULTS / "open-loop"
SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def line(result: dict[str, Any]) -> str:
    """One progress line for a run."""
    latency = result["latency_ms"]
    return (
        f"{result['mode']} {result['arrivals']} {result['rate']:,.0f} req/s: {result['ok']:,} ok of {result['due']:,}, "
        f"p50 {latency['p50']:.2f} p99 {latency['p99']:.2f} p99.9 {latency['p99_9']:.2f} max {latency['max']:.1f} ms, "
        f"client {result['client_cores']:.2f} cores, {result['connections']} connections"
    )


def bisect_rate(
    passes: Callable[[float], bool], low: float, high: float, steps: int
) -> tuple[float, list[tuple[float, bool]]]:
    """The highest rate in [low, high] that passes, to (high - low) / 2**steps, and every rate tried.

    low is tried first: if it fails, the answer is 0. high is never assumed to pass or fail.
    """
    tried = [(low, passes(low))]
    if not tried[0][1]:
        return 0.0, tried
    for _ in range(steps):
        rate = (low + high) / 2
        tried.append((rate, passes(rate)))
        low, high = (rate, high) if tried[-1][1] else (low, rate)
    return low, tried


@contextmanager
def target(kind: str, args: argparse.Namespace) -> Iterator[tuple[str, int | None]]:
    """A running target and its pid: --url if given (the service only; pid unknown), else a fresh one on
    --server-cpus."""
    if kind == "service" and args.url:
        yield args.url.rstrip("/"), None
        return
    env = {"FLIGHT_DELAY_WORKERS": str(args.workers)} if kind == "service" else {}
    with server(kind, env=env, cpus=args.server_cpus, workers=args.workers) as (url, process):
        yield url, process.pid


def warm_up(url: str, args: argparse.Namespace) -> None:
    if args.warmup:
        say(f"warming up for {args.warmup} s")
        wrk(url, args.warmup, 4, 64, args.flights_per_request, "warm-up")


def capacity(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The closed-loop throughput: wrk with the reference's threads and connections."""
    say(f"closed-loop capacity: wrk -t4 -c200 -d{args.capacity_duration}s")
    summary = parse_summary(wrk(url, args.capacity_duration, 4, 200, args.flights_per_request, "capacity"))
    say(f"capacity {summary['requests_per_s']:,.0f} req/s, p99 {summary['latency_ms']['p99']:.1f} ms, "
        f"{failures(summary)} failed")  # fmt: skip
    return summary


def load_at(url: str, rate: float, args: argparse.Namespace, closed: int = 0, seconds: float | None = None) -> Load:
    return Load(
        f"{url}/v1/prediction", rate, seconds or args.duration, args.arrivals, closed,
        flights_per_request=args.flights_per_request, seed=args.seed,
        new_connections=args.new_connections and not closed,
    )  # fmt: skip


def point(args: argparse.Namespace) -> dict[str, Any]:
    with target(args.target, args) as (url, pid):
        warm_up(url, args)
        result = measure(load_at(url, args.rate, args, args.closed), args.processes, pid)
    say(line(result))
    return {"runs": [result]}


def curve(args: argparse.Namespace) -> dict[str, Any]:
    """Each target at the same rates: shares of the service's closed-loop capacity in this run."""
    runs: dict[str, dict[str, Any]] = {}
    rates: list[float] = []
    for kind in ("service", "baseline", "ceiling"):
        with target(kind, args) as (url, pid):
            warm_up(url, args)
            runs[kind] = {"capacity": capacity(url, args), "open": [], "closed": []}
            if kind == "service":
                rates = [round(share * runs[kind]["capacity"]["requests_per_s"]) for share in args.shares]
            for rate in rates:
                runs[kind]["open"].append(measure(load_at(url, rate, args), args.processes, pid))
                say(f"{kind}: {line(runs[kind]['open'][-1])}")
                if kind == "service":
                    runs[kind]["closed"].append(measure(load_at(url, rate, args, closed=200), args.processes, pid))
                    say(f"{kind}: {line(runs[kind]['closed'][-1])}")
    return {"shares": list(args.shares), "rates": rates, "targets": runs}


def headline(args: argparse.Namespace) -> dict[str, Any]:
    """MLPerf-style: the highest Poisson rate whose p99 stays under the bound, as a share of capacity."""
    steps: list[dict[str, Any]] = []

    with target("service", args) as (url, pid):
        warm_up(url, args)
        closed = capacity(url, args)
        top = closed["requests_per_s"]

        def passes(rate: float) -> bool:
            result = measure(load_at(url, rate, args, seconds=args.step_duration), args.processes, pid)
            result["passed"] = result["failed"] == 0 and result["latency_ms"]["p99"] <= args.bound_ms
            steps.append(result)
            say(f"{'pass' if result['passed'] else 'fail'}: {line(result)}")
            return bool(result["passed"])

        rate, _ = bisect_rate(passes, args.low * top, top, args.steps)
    return {
        "bound_ms": args.bound_ms,
        "capacity": closed,
        "sustainable_rate": round(rate),
        "share_of_capacity": round(rate / top, 3),
        "steps": steps,
    }


def httperf(url: str, rate: float, seconds: float, flights_per_request: int, folder: Path) -> dict[str, Any]:
    """Debian's httperf at the same Poisson rate (--period=e): one session, one connection, per request.

    httperf opens each connection at its scheduled time whatever the answers do, so it is open-loop
    too; its times run from the connection's start, so they include the TCP handshake.
    """
    sessions = folder / "httperf-sessions.txt"
    bodies = [request.split(b"\r\n\r\n", 1)[1].decode() for request in payloads(url, flights_per_request)]
    sessions.write_text("\n\n".join(f"{urlsplit(url).path} method=POST contents='{body}'" for body in bodies) + "\n")
    parts = urlsplit(url)
    command = [
        "httperf", "--hog", "--server", str(parts.hostname), "--port", str(parts.port), "--timeout", "5",
        "--add-header", "Content-Type: application/json\\n", "--period", f"e{1 / rate:.9f}",
        "--wsesslog", f"{round(rate * seconds)},0,{sessions}",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    connection = re.search(r"Connection time \[ms\]: min (\S+) avg (\S+) max (\S+) median (\S+) stddev (\S+)", output)
    replies = re.search(r"Reply status: 1xx=(\d+) 2xx=(\d+) 3xx=(\d+) 4xx=(\d+) 5xx=(\d+)", output)
    errors = re.search(r"Errors: total (\d+)", output)
    assert connection and replies and errors, output
    return {
        "command": " ".join(command),
        "connection_ms": dict(
            zip(("min", "mean", "max", "median", "stddev"), map(float, connection.groups()), strict=True)
        ),
        "ok": int(replies.group(2)),
        "errors": int(errors.group(1)),
        "output": output,
    }


def crosscheck(args: argparse.Namespace) -> dict[str, Any]:
    """One rate measured by this client and by httperf, one after the other, on the service and on the
    bare ASGI server (each tool's own floor)."""
    targets: dict[str, dict[str, Any]] = {}
    for kind in ("service", "ceiling"):
        with target(kind, args) as (url, pid):
            warm_up(url, args)
            ours = measure(load_at(url, args.rate, args), args.processes, pid)
            say(f"{kind}: {line(ours)}")
            folder = Path(tempfile.mkdtemp())
            theirs = httperf(f"{url}/v1/prediction", args.rate, args.duration, args.flights_per_request, folder)
            say(f"{kind}: httperf {theirs['ok']:,} ok, {theirs['errors']} errors, connection time median "
                f"{theirs['connection_ms']['median']} ms, mean {theirs['connection_ms']['mean']} ms")  # fmt: skip
            targets[kind] = {"ours": ours, "httperf": theirs}
    return {"rate": args.rate, "targets": targets}


LEFT = ("mode", "percentile", "target", "client", "p99 within bound")  # text columns; figures align right


def table(rows: list[dict[str, str]]) -> list[str]:
    """Rows of cells by column name as a Markdown table."""
    rule = "|".join("---" if name in LEFT else "---:" for name in rows[0])
    return [f"| {' | '.join(rows[0])} |", f"|{rule}|", *(f"| {' | '.join(row.values())} |" for row in rows)]


def cells(result: dict[str, Any], passed: bool | None = None) -> dict[str, str]:
    """One run's table cells (with the bound's verdict for a headline step)."""
    latency, server_cores = result["latency_ms"], result.get("server_cores")
    row = {"rate req/s": f"{result['rate']:,.0f}", "mode": f"{result['mode']} {result['arrivals']}",
           "ok": f"{result['ok']:,}", "failed": f"{result['failed']:,}",
           **{f"{key.replace('_', '.')} ms": f"{latency[key]:.2f}" for key in ("p50", "p99", "p99_9")},
           "max ms": f"{latency['max']:.1f}", "client cores": f"{result['client_cores']:.2f}",
           "server cores": "-" if server_cores is None else f"{server_cores:.2f}"}  # fmt: skip
    return row if passed is None else {**row, "p99 within bound": "yes" if passed else "no"}


def paired(args: argparse.Namespace) -> dict[str, Any]:
    """This checkout against the code of --against, alternating in rounds (loadtest.servers.alternate), at
    the same open-loop rates."""

    def curve(side: str, code: Path) -> list[dict[str, Any]]:
        with server("service", env={"FLIGHT_DELAY_WORKERS": str(args.workers)}, code=code) as (url, process):
            warm_up(url, args)
            runs = [measure(load_at(url, rate, args), args.processes, process.pid) for rate in args.rates]
        say(f"{side}: " + "; ".join(line(r) for r in runs))
        return runs

    with checkout(args.against) as other:
        sides = alternate(
            {
                "this checkout": partial(curve, "this checkout", PROJECT_DIR),
                args.against: partial(curve, args.against, other),
            },
            args.rounds,
        )
    return {"rates": args.rates, "rounds": args.rounds, "sides": sides}


def paired_rows(outcome: dict[str, Any]) -> list[dict[str, str]]:
    """Medians over the rounds of each side's p50, p99 and p99.9 at each rate, and their ratios."""
    (mine, theirs), names = outcome["sides"].values(), list(outcome["sides"])
    rows = []
    for index, rate in enumerate(outcome["rates"]):
        for key in ("p50", "p99", "p99_9"):
            a, b = (float(np.median([runs[index]["latency_ms"][key] for runs in side])) for side in (mine, theirs))
            failed = sum(runs[index]["failed"] for side in (mine, theirs) for runs in side)
            rows.append({"rate req/s": f"{rate:,.0f}", "percentile": key.replace("_", "."),
                         f"{names[0]} ms": f"{a:.2f}", f"{names[1]} ms": f"{b:.2f}", "ratio": f"{a / b:.2f}x",
                         "failed": str(failed)})  # fmt: skip
    return rows


def markdown(kind: str, outcome: dict[str, Any], command: str) -> str:
    """The report of one command's outcome."""
    title = f"# Open-loop {kind}, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores"
    lines = [title, "", f"Command: `{command}`", ""]
    if kind == "headline":
        lines += [f"Closed-loop capacity (wrk -t4 -c200): **{outcome['capacity']['requests_per_s']:,.0f} req/s**. "
                  f"Highest Poisson rate with p99 <= {outcome['bound_ms']:g} ms: **{outcome['sustainable_rate']:,} "
                  f"req/s, {outcome['share_of_capacity']:.2f}x** the closed-loop throughput.", "",
                  *table([cells(step, step["passed"]) for step in outcome["steps"]])]  # fmt: skip
    elif kind == "curve":
        for name, run in outcome["targets"].items():
            capacity, runs = run["capacity"], sorted(run["open"] + run["closed"], key=lambda r: (r["rate"], r["mode"]))
            closed = f"{capacity['requests_per_s']:,.0f} req/s, p99 {capacity['latency_ms']['p99']:.1f} ms"
            lines += [f"## {name}", "", f"Closed-loop capacity: {closed}.", "", *table([cells(r) for r in runs]), ""]
    elif kind == "crosscheck":
        rows = []
        for name, pair in outcome["targets"].items():
            ours, theirs = pair["ours"], pair["httperf"]
            for client, ok, failed, times, p99 in (
                (
                    "this client (keep-alive)",
                    ours["ok"],
                    ours["failed"],
                    ours["latency_ms"],
                    f"{ours['latency_ms']['p99']:.2f}",
                ),
                ("httperf (a connection per request)", theirs["ok"], theirs["errors"], theirs["connection_ms"], ""),
            ):
                median = times.get("median", times.get("p50"))
                rows.append({"target": name, "client": client, "ok": f"{ok:,}", "failed": f"{failed:,}",
                             "median ms": f"{median:.2f}", "mean ms": f"{times['mean']:.2f}",
                             "p99 ms": p99, "max ms": f"{times['max']:.1f}"})  # fmt: skip
        lines += [*table(rows), "", f"httperf's command: `{outcome['targets']['service']['httperf']['command']}`"]
    elif kind == "paired":
        lines += [f"Medians of {outcome['rounds']} alternating rounds.", "", *table(paired_rows(outcome))]
    else:
        lines += table([cells(result) for result in outcome["runs"]])
    return "\n".join(lines) + "\n"


def plot_curve(outcome: dict[str, Any], path: Path) -> None:
    """Open-loop p50, p99, p99.9 against the offered rate for each target; the service's closed vs open p99."""
    colors = {"service": "tab:blue", "baseline": "tab:orange", "ceiling": "tab:green"}
    with figure(path, 2, (13, 5), dpi=110) as (_, (left, right)):
        for name, run in outcome["targets"].items():
            rates = [r["rate"] for r in run["open"]]
            for key, style in (("p50", ":"), ("p99", "-"), ("p99_9", "--")):
                left.plot(rates, [r["latency_ms"][key] for r in run["open"]], style, marker=".", color=colors[name],
                          label=f"{name} {key.replace('_', '.')}")  # fmt: skip
        left.axhline(25, color="grey", linewidth=0.8)
        left.set(yscale="log", xlabel="offered requests/s (Poisson)", ylabel="latency from the scheduled send, ms",
                 title="Open loop: latency against offered load")  # fmt: skip
        left.legend(fontsize="x-small", ncol=3)
        service = outcome["targets"]["service"]
        rates = [r["rate"] for r in service["open"]]
        for mode, marker, label in (("open", "o", "open loop p99 (from due time)"),
                                    ("closed", "s", "closed loop p99 (200 conn., from send)")):  # fmt: skip
            right.plot(rates, [r["latency_ms"]["p99"] for r in service[mode]], marker=marker, label=label)
        right.set(yscale="log", xlabel="requests/s", ylabel="p99 ms", title="The service: closed-loop vs open-loop p99")
        right.legend(fontsize="small")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("point", "curve", "headline", "crosscheck", "paired"))
    parser.add_argument("--url", help="a running service instead of a fresh one (point and headline)")
    parser.add_argument("--target", choices=("service", "baseline", "ceiling"), default="service", help="point only")
    parser.add_argument("--rate", type=float, default=1000, help="requests/s (point)")
    parser.add_argument("--duration", type=float, default=15, help="seconds of each point (point, curve)")
    parser.add_argument("--arrivals", choices=("poisson", "fixed"), default="poisson")
    parser.add_argument("--closed", type=int, default=0, help="point: closed loop over this many connections")
    parser.add_argument("--against", help="paired: the git revision to compare this checkout with")
    parser.add_argument("--rates", type=float, nargs="+", default=[2000, 4000], help="paired: req/s")
    parser.add_argument("--rounds", type=int, default=3, help="paired: alternating rounds")
    parser.add_argument("--shares", type=float, nargs="+", default=SHARES, help="curve: shares of capacity")
    parser.add_argument("--bound-ms", type=float, default=25.0, help="headline: the p99 bound")
    parser.add_argument("--steps", type=int, default=6, help="headline: bisection steps after the lowest rate")
    parser.add_argument(
        "--step-duration", type=float, default=30, help="headline: seconds of each step (MLPerf: >= 30)"
    )
    parser.add_argument("--low", type=float, default=0.1, help="headline: lowest rate tried, share of capacity")
    parser.add_argument("--capacity-duration", type=int, default=30, help="seconds of the closed-loop wrk run")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of wrk before measuring")
    parser.add_argument("--workers", type=int, default=2, help="server workers (FLIGHT_DELAY_WORKERS for the service)")
    parser.add_argument("--server-cpus", help="CPUs the server runs on (taskset list, e.g. 0)")
    parser.add_argument("--client-cpus", help="CPUs the client and wrk run on (e.g. 1)")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--flights-per-request", type=int, default=1)
    parser.add_argument(
        "--new-connections", action="store_true", help="open loop: each request on a connection of its own"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="results file name under loadtest/results/open-loop/ (default COMMAND-TODAY)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None and args.command != "point":
        sys.exit("wrk is not installed: apt-get install -y wrk")
    if args.client_cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in args.client_cpus.split(",")})
    name = args.name or dated(args.command)
    paths = [RESULTS / f"{name}.json", RESULTS / f"{name}.md"]
    unused(*paths, overwrite=args.overwrite)
    commands = {"point": point, "curve": curve, "headline": headline, "crosscheck": crosscheck, "paired": paired}
    outcome = commands[args.command](args)
    command = "python -m loadtest.open_loop " + " ".join(argv if argv is not None else sys.argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}"
    write_json(paths[0], {"command": command, "machine": machine, **outcome})
    paths[1].write_text(markdown(args.command, outcome, command))
    if args.command == "curve":
        plot_curve(outcome, RESULTS / f"{name}.png")
    say(f"results: {paths[1].relative_to(PROJECT_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
