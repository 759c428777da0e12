"""`make peers`: the service against the same model behind the frameworks a user would pick instead,
in every shape of traffic, in one run.

    python -m loadtest.peers          # 2 rounds, 15 s a run: loadtest/results/peers/peers-TODAY.{json,md}
    python -m loadtest.peers --against main   # and the service at a git revision, for a code change
    python -m loadtest.peers --rounds 1 --duration 5 --rates 500 --name smoke

Every target (loadtest.servers.PEERS, the service, and the bare ASGI server as the machine's ceiling)
is started once and checked to give the service's answers. Then, in each round, every shape is run
against every target in turn while the others idle (wrk, closed loop), so the machine's drift falls
on all alike; each run is followed by the memory of the target's processes (their PSS: shared pages
counted once). Last, the open-loop Poisson curve: each target at the same fixed rates
(loadtest.client, latency from each request's due time). The report gives the median of the rounds.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import Any

from loadtest.client import fixed_rates
from loadtest.probes import sample_answers
from loadtest.results import RESULTS as ALL_RESULTS
from loadtest.results import dated, machine, say, unused, write_json
from loadtest.servers import PEERS, PROJECT_DIR, alternate, checkout, server
from loadtest.stats import tree_memory_mib
from loadtest.wrk import CURVE_RATES, SHAPES, Shape, failures, parse_summary, wrk

RESULTS = ALL_RESULTS / "peers"
TARGETS = ("service", *PEERS, "ceiling")


def run_shape(url: str, pid: int, shape: Shape, args: argparse.Namespace, label: str) -> dict[str, Any]:
    """A short warm-up, the measured wrk run, then the target's memory."""
    wrk(url, args.warmup, 4, shape.connections, shape.flights, f"{label} warm-up", shape.new_connections)
    summary = parse_summary(wrk(url, args.duration, 4, shape.connections, shape.flights, label, shape.new_connections))
    summary["memory_mib"] = tree_memory_mib(pid)
    say(f"{label}: {summary['requests_per_s']:,.0f} req/s, p99 {summary['latency_ms']['p99']:.1f} ms, "
        f"{failures(summary)} failed, {summary['memory_mib']:,.0f} MiB")  # fmt: skip
    return summary


def closed_loop(targets: dict[str, tuple[str, int]], args: argparse.Namespace) -> dict[str, dict[str, list[Any]]]:
    """Every shape against every target, in alternating rounds: {shape: {target: [run per round]}}."""
    sides: dict[str, Callable[[], dict[str, Any]]] = {
        f"{target}|{shape.name}": partial(run_shape, url, pid, shape, args, f"{target}, {shape.name}")
        for shape in SHAPES
        for target, (url, pid) in targets.items()
    }
    runs = alternate(sides, args.rounds)
    out: dict[str, dict[str, list[Any]]] = {shape.name: {} for shape in SHAPES}
    for key, rounds in runs.items():
        target, shape_name = key.split("|", 1)
        out[shape_name][target] = rounds
    return out


def open_loop(targets: dict[str, tuple[str, int]], args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Each model-serving target at each fixed rate, Poisson arrivals, one flight a request."""
    return {
        target: fixed_rates(url, pid, args.rates, args.curve_duration, target)
        for target, (url, pid) in targets.items()
        if target != "ceiling"
    }


def median_of(rounds: list[dict[str, Any]], key: str) -> float:
    values = [run[key] if key != "p99" else run["latency_ms"]["p99"] for run in rounds]
    return float(statistics.median(values))


def markdown(outcome: dict[str, Any]) -> str:
    """The report: per shape, each target's median throughput, p99 and memory; the service's lead."""
    targets = outcome["targets"]
    peers = [target for target in targets if target in PEERS]
    before = next((target for target in targets if target.startswith("service@")), None)
    paired = f" | the service over {before}" if before else ""
    lines = [
        f"# The service and its peers, {outcome['date']}",
        "",
        f"`{outcome['command']}` on {outcome['machine']}.",
        "",
        f"Closed loop (wrk -t4, {outcome['duration_s']} s a run after {outcome['warmup_s']} s of warm-up), "
        f"medians of {outcome['rounds']} alternating rounds. Memory: PSS of the target's processes after "
        "its last run, MiB. Lead: the service over the best peer; ceiling: the service over the bare ASGI server.",
        "",
        "| shape | " + " | ".join(targets) + f" | lead over the best peer | share of the ceiling{paired} |",
        "|---|" + "---:|" * (len(targets) + 2 + bool(before)),
    ]
    for shape, by_target in outcome["closed_loop"].items():
        cells = []
        for target in targets:
            rounds = by_target[target]
            failed = sum(failures(run) for run in rounds)
            cells.append(
                f"{median_of(rounds, 'requests_per_s'):,.0f} req/s, p99 {median_of(rounds, 'p99'):.1f} ms, "
                f"{rounds[-1]['memory_mib']:,.0f} MiB" + (f", **{failed:,} failed**" if failed else "")
            )
        service = median_of(by_target["service"], "requests_per_s")
        best = max(peers, key=lambda peer: median_of(by_target[peer], "requests_per_s"))
        lead = service / median_of(by_target[best], "requests_per_s")
        share = service / median_of(by_target["ceiling"], "requests_per_s")
        change = f" | {service / median_of(by_target[before], 'requests_per_s'):.2f}x" if before else ""
        lines.append(f"| {shape} | " + " | ".join(cells) + f" | {lead:.2f}x ({best}) | {share:.2f}x{change} |")
    lines += [
        "",
        f"Open loop: Poisson arrivals at fixed rates, one flight a request, {outcome['curve_duration_s']} s each; "
        "p50 / p99 in ms from each request's due time, and the share of requests answered 2xx.",
        "",
        "| rate, req/s | " + " | ".join(outcome["open_loop"]) + " |",
        "|---:|" + "---|" * len(outcome["open_loop"]),
    ]
    for index, rate in enumerate(outcome["rates"]):
        cells = []
        for runs in outcome["open_loop"].values():
            run = runs[index]
            cells.append(f"{run['latency_ms']['p50']:.1f} / {run['latency_ms']['p99']:.1f}, "
                         f"{run['ok'] / max(run['due'], 1):.1%}")  # fmt: skip
        lines.append(f"| {rate:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of every shape (default 2)")
    parser.add_argument("--duration", type=int, default=15, help="seconds of each measured wrk run (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each run (default 3)")
    parser.add_argument("--rates", type=int, nargs="+", default=list(CURVE_RATES), help="open-loop req/s")
    parser.add_argument("--curve-duration", type=int, default=10, help="seconds at each open-loop rate (default 10)")
    parser.add_argument("--name", default=dated("peers"), help="results in loadtest/results/peers/ (peers-TODAY)")
    parser.add_argument("--against", help="also the service at this git revision (target service@REV)")
    parser.add_argument("--overwrite", action="store_true", help="replace results of the same name")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    unused(RESULTS / f"{args.name}.json", overwrite=args.overwrite)
    names = list(TARGETS)
    if args.against:
        names.insert(1, f"service@{args.against}")
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
        closed = closed_loop(targets, args)
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
