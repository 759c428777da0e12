"""`make peers` and make loadtest's standing rows: every target in every shape, in alternating rounds.

    python -m loadtest.peers          # 2 rounds, 15 s a run: loadtest/results/peers/peers-TODAY.{json,md}
    python -m loadtest.peers --against main   # and the service at a git revision, for a code change
    python -m loadtest.peers --targets service baseline ceiling --name standing-TODAY   # make loadtest's rows
    python -m loadtest.peers --targets service --against main --shapes lone keepalive200 --rates   # no curve
    python -m loadtest.peers --rounds 1 --duration 5 --rates 500 --name smoke

Targets (--targets, any of loadtest.servers.SERVERS, the service always among them; default the service,
loadtest.servers.PEERS and the bare ASGI server "ceiling"; --against REV adds the service at a git
revision, "service@REV") are started once, and each but the ceiling checked to give the service's
answers. Shapes (--shapes, by key; default every shape of loadtest.wrk.SHAPES): keepalive200, newconn64,
flights100, flights1000, and lone (loadtest.wrk.LONE: one connection, so one wrk thread) on request.
In each round every shape is run against every target in turn while the others idle (wrk, closed
loop), so the machine's drift falls on all alike; each run is followed by the memory of the target's
processes (their PSS: shared pages counted once). Last, unless --rates is given no rate, the open-loop
Poisson curve: each target but the ceiling at the same fixed rates (loadtest.client, latency from each
request's due time). The report gives the median of the rounds, and the service's lead over the best
other target serving the model and its share of the ceiling, where those are among the targets.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from typing import Any

from loadtest.client import fixed_rates
from loadtest.probes import sample_answers
from loadtest.results import RESULTS as ALL_RESULTS
from loadtest.results import dated, machine, say, unused, write_json
from loadtest.servers import PEERS, PROJECT_DIR, SERVERS, alternate, checkout, server
from loadtest.stats import tree_cpu_s, tree_memory_mib
from loadtest.wrk import CURVE_RATES, LONE, SHAPES, Shape, failures, parse_summary, wrk

RESULTS = ALL_RESULTS / "peers"
TARGETS = ("service", *PEERS, "ceiling")
BY_KEY = {shape.key: shape for shape in (*SHAPES, LONE)}
THREADS = 4  # wrk's threads, or one a connection where there are fewer (wrk needs threads <= connections)


def run_shape(url: str, pid: int, shape: Shape, args: argparse.Namespace, label: str) -> dict[str, Any]:
    """A short warm-up, the measured wrk run with the target's CPU time a request, then its memory."""
    load = (min(THREADS, shape.connections), shape.connections, shape.flights)
    wrk(url, args.warmup, *load, f"{label} warm-up", shape.new_connections)
    cpu_s = tree_cpu_s(pid)
    summary = parse_summary(wrk(url, args.duration, *load, label, shape.new_connections))
    summary["cpu_us_per_request"] = round((tree_cpu_s(pid) - cpu_s) * 1e6 / max(summary["requests"], 1))
    summary["memory_mib"] = tree_memory_mib(pid)
    say(f"{label}: {summary['requests_per_s']:,.0f} req/s, p99 {summary['latency_ms']['p99']:.1f} ms, "
        f"{failures(summary)} failed, {summary['cpu_us_per_request']:,} us CPU a request, "
        f"{summary['memory_mib']:,.0f} MiB")  # fmt: skip
    return summary


def closed_loop(
    targets: dict[str, tuple[str, int]], shapes: Sequence[Shape], args: argparse.Namespace
) -> dict[str, dict[str, list[Any]]]:
    """Every shape against every target, in alternating rounds: {shape: {target: [run per round]}}."""
    sides: dict[str, Callable[[], dict[str, Any]]] = {
        f"{target}|{shape.name}": partial(run_shape, url, pid, shape, args, f"{target}, {shape.name}")
        for shape in shapes
        for target, (url, pid) in targets.items()
    }
    runs = alternate(sides, args.rounds)
    out: dict[str, dict[str, list[Any]]] = {shape.name: {} for shape in shapes}
    for key, rounds in runs.items():
        target, shape_name = key.split("|", 1)
        out[shape_name][target] = rounds
    return out


def open_loop(targets: dict[str, tuple[str, int]], args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Each model-serving target at each fixed rate, Poisson arrivals, one flight a request; none without rates."""
    return {
        target: fixed_rates(url, pid, args.rates, args.curve_duration, target)
        for target, (url, pid) in targets.items()
        if target != "ceiling" and args.rates
    }


def median_of(rounds: list[dict[str, Any]], key: str) -> float:
    values = [run[key] if key != "p99" else run["latency_ms"]["p99"] for run in rounds]
    return float(statistics.median(values))


def markdown(outcome: dict[str, Any]) -> str:
    """The report: per shape, each target's median throughput, p99 and memory; the service's ratios to the
    best other model-serving target, the ceiling and the service at a revision, each where it was measured."""
    targets = outcome["targets"]
    before = next((target for target in targets if target.startswith("service@")), None)
    rivals = [target for target in targets if target not in ("service", "ceiling", before)]
    ratios = ["lead over the best peer"] if rivals else []
    ratios += ["share of the ceiling"] if "ceiling" in targets else []
    ratios += [f"the service over {before}"] if before else []
    lines = [
        f"# The service and its peers, {outcome['date']}",
        "",
        f"`{outcome['command']}` on {outcome['machine']}.",
        "",
        f"Closed loop (wrk -t{THREADS}, or one thread a connection where fewer, {outcome['duration_s']} s a run "
        f"after {outcome['warmup_s']} s of warm-up), medians of {outcome['rounds']} alternating rounds. CPU: the "
        "target's processes' CPU time (user and system) during the run, per request answered. Memory: PSS "
        "of the target's processes after its last run, MiB. Lead: the service over the best other target serving "
        "the model; ceiling: the service over the bare ASGI server.",
        "",
        "| shape | " + " | ".join(targets + ratios) + " |",
        "|---|" + "---:|" * (len(targets) + len(ratios)),
    ]
    for shape, by_target in outcome["closed_loop"].items():
        cells = []
        for target in targets:
            rounds = by_target[target]
            failed = sum(failures(run) for run in rounds)
            cells.append(
                f"{median_of(rounds, 'requests_per_s'):,.0f} req/s, p99 {median_of(rounds, 'p99'):.1f} ms, "
                f"{median_of(rounds, 'cpu_us_per_request'):,.0f} us CPU, {rounds[-1]['memory_mib']:,.0f} MiB"
                + (f", **{failed:,} failed**" if failed else "")
            )
        rate = {target: median_of(rounds, "requests_per_s") for target, rounds in by_target.items()}
        if rivals:
            best = max(rivals, key=rate.__getitem__)
            cells.append(f"{rate['service'] / rate[best]:.2f}x ({best})")
        cells += [f"{rate['service'] / rate[other]:.2f}x" for other in ("ceiling", before) if other in targets]
        lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    if not outcome["open_loop"]:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"Open loop: Poisson arrivals at fixed rates, one flight a request, {outcome['curve_duration_s']} s each; "
        "p50 / p99 in ms from each request's due time, and the share of requests answered 2xx.",
        "",
        "| rate, req/s | " + " | ".join(outcome["open_loop"]) + " |",
        "|---:|" + "---|" * len(outcome["open_loop"]),
    ]
    for index, rate_s in enumerate(outcome["rates"]):
        runs = [curve[index] for curve in outcome["open_loop"].values()]
        cells = [f"{run['latency_ms']['p50']:.1f} / {run['latency_ms']['p99']:.1f}, "
                 f"{run['ok'] / max(run['due'], 1):.1%}" for run in runs]  # fmt: skip
        lines.append(f"| {rate_s:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", nargs="+", choices=SERVERS, default=list(TARGETS),
                        help="any of SERVERS, the service among them (default: service, PEERS, ceiling)")  # fmt: skip
    parser.add_argument("--shapes", nargs="+", choices=BY_KEY, default=[shape.key for shape in SHAPES],
                        help="by key (default: every shape of loadtest.wrk.SHAPES; lone on request)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of every shape (default 2)")
    parser.add_argument("--duration", type=int, default=15, help="seconds of each measured wrk run (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each run (default 3)")
    parser.add_argument("--rates", type=int, nargs="*", default=list(CURVE_RATES),
                        help="open-loop req/s (default 500 1000 2000 4000); none: no open-loop curve")  # fmt: skip
    parser.add_argument("--curve-duration", type=int, default=10, help="seconds at each open-loop rate (default 10)")
    parser.add_argument("--name", default=dated("peers"), help="results in loadtest/results/peers/ (peers-TODAY)")
    parser.add_argument("--against", help="also the service at this git revision (target service@REV)")
    parser.add_argument("--overwrite", action="store_true", help="replace results of the same name")
    args = parser.parse_args(argv)
    if "service" not in args.targets:
        parser.error("--targets needs the service: every ratio is the service's")
    RESULTS.mkdir(parents=True, exist_ok=True)
    unused(RESULTS / f"{args.name}.json", overwrite=args.overwrite)
    names = list(args.targets)
    if args.against:
        names.insert(names.index("service") + 1, f"service@{args.against}")
    with ExitStack() as stack:
        code = stack.enter_context(checkout(args.against))
        targets: dict[str, tuple[str, int]] = {}
        answers = None
        for target in names:
            kind, _, revision = target.partition("@")
            url, process = stack.enter_context(server(kind, code=code if revision else PROJECT_DIR))
            if target != "ceiling":
                given = sample_answers(url)
                answers = answers or given
                if given != answers:
                    sys.exit(f"{target} does not answer as the service does: not measured")
            targets[target] = (url, process.pid)
        closed = closed_loop(targets, [BY_KEY[key] for key in args.shapes], args)
        curve = open_loop(targets, args)
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    outcome = {
        "command": f"python -m loadtest.peers {argv_text}".strip(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "targets": names,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "closed_loop": closed,
        "rates": args.rates,
        "curve_duration_s": args.curve_duration,
        "open_loop": curve,
    }
    write_json(RESULTS / f"{args.name}.json", outcome)
    (RESULTS / f"{args.name}.md").write_text(markdown(outcome))
    say(f"report: {RESULTS / f'{args.name}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
