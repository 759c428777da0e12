"""Overload, long-run and fault drills against a fresh service; run by hand, not in CI.

    python -m loadtest.reliability DRILL [options]   # --help lists the drills and what each measures

Each writes loadtest/results/reliability/NAME.json (soak also soak.png) and prints it; NAME is the drill
and the options that change what it measures. A result that exists is refused unless --overwrite: the
docs cite them.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from loadtest.client import BackgroundLoad
from loadtest.cluster import LB_URL, SLOTS, Balancer, port
from loadtest.probes import closes, lone_times, new_connection_ms, probe
from loadtest.results import RESULTS as ALL_RESULTS
from loadtest.results import figure, say, unused, write_json
from loadtest.servers import PROJECT_DIR, alternate, checkout, server, service_workers
from loadtest.slow_client import KINDS, UNREAD_KINDS, more_files
from loadtest.stats import percentile
from loadtest.wrk import SOCKET_ERRORS, failures, in_background, parse_summary, wrk, wrk_summary
from models.schema import EXAMPLE_REQUEST
from serving.layer import shutdown_counts
from serving.settings import Settings

HERE = Path(__file__).resolve().parent
RESULTS = ALL_RESULTS / "reliability"
FRONTS = ("direct", "haproxy")
ATTACKERS = 3  # processes of loadtest.slow_client: a process may hold 20,000 open files here
ATTACK_CONNECTIONS = 30_000
ATTACK_SECONDS = 60
PROBE_EVERY_S = 0.25  # one new-connection, one-flight request every 250 ms during the attack
PROBE_SOURCE = "127.0.0.2"  # the probes' own address, so a front's per-source limit tells them from the attacker
FRONT_REQUEST_DEADLINE_S = 10  # deploy/local/haproxy.cfg: timeout http-request
PROBE_BODY = json.dumps({"flights": EXAMPLE_REQUEST["flights"][:1]})
NEVER_READING = 9_000  # the attack: one client's connections, each asking for a large answer
POD_MEMORY_LIMIT_MIB = 928  # deploy/k8s/base/deployment.yaml (768 until 2026-12-08): the two workers must stay under it
DRILL_KINDS = ("silent", "slow-headers", "slow-body", "large-body")  # slow-clients' default: each ended by a deadline
Served = tuple[str, subprocess.Popen[bytes]]  # a running server: its URL and process
Result = dict[str, Any]


def answers(summary: dict[str, Any]) -> Result:
    """What became of a wrk run's requests under overload: answered, shed by the service, or failed."""
    return {"answered_2xx": summary["requests"] - summary["non_2xx"], "shed_503": summary.get("status_503"),
            "other_5xx": summary.get("status_5xx_other")}  # fmt: skip


def recovered(latency_ms: Callable[[], float | str], since: float, within_s: float, key: str) -> Result | None:
    """The first request under 50 ms after `since` (a monotonic instant), tried every 100 ms for `within_s`."""
    while time.monotonic() - since < within_s:
        if isinstance(latency := latency_ms(), float) and latency < 50:
            return {key: round(time.monotonic() - since, 2), "latency_ms": round(latency, 1)}
        time.sleep(0.1)
    return None


def overload(_args: argparse.Namespace) -> Result:
    """2,000 connections for 20 s: answered or shed with 503, no crash; recovery after the load stops.

    The same wrk against the bare ASGI server gives the time-outs wrk itself counts at 2,000 connections
    (its 2-s check also counts connections still being set up).
    """
    with server("service") as (url, process):
        before = set(service_workers(process.pid))
        summary = wrk_summary(url, 20, 4, 2000, 1, "2,000 connections")
        recovery = recovered(lambda: probe(url), time.monotonic(), 5, "seconds_after_load")
        after = set(service_workers(process.pid))
    with server("ceiling") as (url, _process):
        floor = wrk_summary(url, 20, 4, 2000, 1, "2,000 connections, bare ASGI server")
    return {
        "wrk": summary,
        **answers(summary),
        "socket_errors": {kind: summary["errors"][kind] for kind in SOCKET_ERRORS},
        "first_request_under_50_ms_after_load": recovery,
        "worker_restarts": len(before - after),
        "timeouts_against_bare_asgi_server": floor["errors"]["timeout"],
    }


def big_request(_args: argparse.Namespace) -> Result:
    """Reference load for 20 s, alone and with one 1,000-flight request after another mixed in."""
    big = {"flights": [EXAMPLE_REQUEST["flights"][i % 2] for i in range(1000)]}
    latencies: list[float] = []
    done = threading.Event()

    def send_big(url: str) -> None:
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                started = time.perf_counter()
                response = client.post(f"{url}/v1/prediction", json=big)
                assert response.status_code == 200 and len(response.json()) == 1000
                latencies.append((time.perf_counter() - started) * 1000)

    with server("service") as (url, _process):
        wrk(url, 5, 4, 200, 1, "warm-up")
        alone = wrk_summary(url, 20, 4, 200, 1, "reference load alone")
        thread, _box = in_background(send_big, url)
        mixed = wrk_summary(url, 20, 4, 200, 1, "reference load + 1,000-flight requests")
        done.set()
        thread.join()
    return {
        "p99_ms_alone": alone["latency_ms"]["p99"],
        "p99_ms_with_big_requests": mixed["latency_ms"]["p99"],
        "requests_per_s_alone": alone["requests_per_s"],
        "requests_per_s_with_big_requests": mixed["requests_per_s"],
        "big_requests_sent": len(latencies),
        "big_request_median_ms": sorted(latencies)[len(latencies) // 2] if latencies else None,
        "failed": {"alone": failures(alone), "mixed": failures(mixed)},
    }


def heavy_overload(_args: argparse.Namespace) -> Result:
    """200 connections of 1,000-flight requests for 20 s, with the default wait bound and without it."""
    outcome = {}
    for label, shed_after_ms in (("shed_after_1000_ms", "1000"), ("no_wait_bound", "100000000")):
        with server("service", env={"FLIGHT_DELAY_SHED_AFTER_MS": shed_after_ms}) as (url, _process):
            summary = wrk_summary(url, 20, 4, 200, 1000, f"1,000-flight requests, {label}")
        outcome[label] = {**answers(summary), "client_timeouts": summary["errors"]["timeout"],
                          "latency_ms": summary["latency_ms"]}  # fmt: skip
    return outcome


def soak(args: argparse.Namespace) -> Result:
    """The reference load for N minutes; resident memory of every worker every 10 s, drawn in soak.png."""
    samples: list[dict[str, Any]] = []
    with server("service") as (url, process):
        thread, box = in_background(wrk, url, args.minutes * 60, 4, 200, 1, "soak")
        started = time.monotonic()
        while thread.is_alive():
            rss = {str(pid): p.memory_info().rss / 2**20 for pid, p in service_workers(process.pid).items()}
            samples.append({"t_s": round(time.monotonic() - started, 1), "rss_mib": rss})
            thread.join(timeout=10)
        summary = parse_summary(box["result"])

    def at(minute: int) -> dict[str, float]:
        return min(samples, key=lambda s: abs(s["t_s"] - minute * 60))["rss_mib"]

    growth = {pid: round(at(args.minutes)[pid] / at(1)[pid] - 1, 4) for pid in at(1) if pid in at(args.minutes)}
    with figure(RESULTS / "soak.png", size=(8, 4)) as (_, axis):
        for pid in samples[0]["rss_mib"]:
            points = [(s["t_s"] / 60, s["rss_mib"][pid]) for s in samples if pid in s["rss_mib"]]
            axis.plot(*zip(*points, strict=True), label=f"worker {pid}")
        axis.set(xlabel="minutes under wrk -t4 -c200", ylabel="resident memory (MiB)",
                 title=f"Soak, {args.minutes} min, {time.strftime('%Y-%m-%d')}")  # fmt: skip
        axis.set_ylim(bottom=0)
        axis.legend()
    return {"minutes": args.minutes, "wrk": summary, "failed": failures(summary), "growth_minute_1_to_end": growth,
            "samples": samples}  # fmt: skip


def sigterm(_args: argparse.Namespace) -> Result:
    """SIGTERM to `bentoml serve` under load from 200 keep-alive connections: what became of every request.

    Each worker logs the requests it accepted, answered and cut; the client sorts every request it sent
    by outcome. One the client saw "unanswered" that no worker counts as cut was never read by the service:
    it reached a keep-alive connection the server was closing as idle, or the listening queue as it stopped.
    """
    log = RESULTS / "sigterm.log"
    with server("service", log=log) as (url, process):
        load = BackgroundLoad(f"{url}/v1/prediction", 200, EXAMPLE_REQUEST)
        time.sleep(8)
        signalled = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        exited = time.monotonic()
        time.sleep(0.5)  # let the clients read what was already sent to them
        counts = load.stop()
    workers = shutdown_counts(log.read_text())
    return {
        "seconds_to_exit": round(exited - signalled, 2),
        "exit_code": process.returncode,
        "client_outcomes": dict(counts),
        "workers_at_exit": workers,
        "accepted_but_cut": sum(worker["cut"] for worker in workers),
        "answered_but_not_received": sum(worker["answered"] for worker in workers)
        - sum(n for outcome, n in counts.items() if outcome.isdigit()),
    }


def sigkill(_args: argparse.Namespace) -> Result:
    """SIGKILL one worker 5 s into 20 s of load: failed requests, and whether the service answers afterwards."""
    with server("service") as (url, process):
        before = service_workers(process.pid)
        thread, box = in_background(wrk, url, 20, 4, 200, 1, "load")
        time.sleep(5)
        next(iter(before.values())).kill()
        thread.join()
        summary = parse_summary(box["result"])
        time.sleep(2)
        after = service_workers(process.pid)
        answers_after = probe(url) < float("inf")
    return {"failed_requests": failures(summary), "requests_completed": summary["requests"],
            "errors": summary["errors"], "non_2xx": summary["non_2xx"], "workers_before": len(before),
            "workers_after": len(after), "answers_after": answers_after}  # fmt: skip


def after_burst(_args: argparse.Namespace) -> Result:
    """Milliseconds a lone request takes on an idle service, then for 12 s after a 10-s burst.

    Compare FLIGHT_DELAY_GREEDY_BATCHING=false (BentoML's own batching wait) with the default.
    """
    with server("service") as (url, _process):
        idle = [probe(url) for _ in range(20)]
        wrk(url, 10, 4, 200, 1, "burst")
        stopped, after = time.monotonic(), []
        while time.monotonic() - stopped < 12:
            after.append(probe(url))
            time.sleep(0.2)
    return {
        "greedy_batching": os.environ.get("FLIGHT_DELAY_GREEDY_BATCHING", "true"),
        "idle_median_ms": percentile(idle, 0.5),
        "after_burst_median_ms": percentile(after, 0.5),
        "after_burst_max_ms": round(max(after), 1),
        "lone_requests_after_burst": len(after),
    }


def median_and_p99(milliseconds: list[float]) -> dict[str, float | None]:
    """Median and p99 of lone requests' milliseconds, to 0.01 ms."""
    return {"median_ms": percentile(milliseconds, 0.5, 2), "p99_ms": percentile(milliseconds, 0.99, 2)}


def lone_requests(code: Path, env: dict[str, str] | None = None) -> Result:
    """Median and p99 of 200 lone requests (after 20 unmeasured) of 1, 100 and 1,000 flights from
    flights.jsonl, the load test's pool, to the service run from `code` with `env` set."""
    pool = [json.loads(line) for line in (HERE / "flights.jsonl").read_text().splitlines()]
    sizes: dict[str, Any] = {}
    with server("service", code=code, env=env) as (url, _process):
        for size in (1, 100, 1_000):
            body = json.dumps({"flights": [pool[i % len(pool)] for i in range(size)]})
            sizes[f"{size}_flights"] = median_and_p99(lone_times(url, body))
            say(f"{size} flights: {sizes[f'{size}_flights']}")
    return sizes


def lone(args: argparse.Namespace) -> Result:
    """Lone requests on an idle service, one keep-alive http.client connection, one at a time.

    --against REV: two rounds each of this checkout's code and REV's, alternating; --paired-env
    KEY=VALUE[,...]: --rounds rounds each of this checkout as shipped and with those settings.
    """
    if args.paired_env:
        settings = dict(pair.partition("=")[::2] for pair in args.paired_env.split(","))
        paired = {
            "as shipped": lambda: lone_requests(PROJECT_DIR),
            args.paired_env: lambda: lone_requests(PROJECT_DIR, settings),
        }
        return {"requests_each": 200, "rounds": alternate(paired, args.rounds)}
    if not args.against:
        return {"requests_each": 200, **lone_requests(PROJECT_DIR)}
    with checkout(args.against) as other:
        sides = {
            "this checkout": lambda: lone_requests(PROJECT_DIR),
            f"at {args.against}": lambda: lone_requests(other),
        }
        return {"requests_each": 200, "rounds": alternate(sides, 2)}


def polled_monitoring(args: argparse.Namespace) -> Result:
    """Lone one-flight predictions on an idle service, then while GET /v1/monitoring is polled (wrk -t1 -c4).

    The predictions go 5 ms apart; with --against REV, REV's code is measured too, in turns."""

    def polled(code: Path) -> Result:
        with server("service", code=code) as (url, _process):
            idle = median_and_p99(lone_times(url, PROBE_BODY, pause_s=0.005))
            poller = subprocess.Popen(["wrk", "-t1", "-c4", "-d30s", f"{url}/v1/monitoring"], stdout=subprocess.PIPE,
                                      text=True)  # fmt: skip
            time.sleep(1)
            polled = median_and_p99(lone_times(url, PROBE_BODY, pause_s=0.005))
            poller.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
            output = poller.communicate()[0]
        polls = next((line.split()[-1] for line in output.splitlines() if "Requests/sec" in line), None)
        say(f"idle {idle}, polled {polled}, {polls} polls/s")
        return {"idle": idle, "polled": polled, "polls_per_s": polls}

    with checkout(args.against) as other:
        sides = {"this checkout": lambda: polled(PROJECT_DIR)}
        if args.against:
            sides[f"at {args.against}"] = lambda: polled(other)
        return {"requests_each": 200, "rounds": alternate(sides, args.rounds)}


def slow_attack(kind: str, deadline_s: float, service: Served, front: Balancer | None, connections: int) -> Result:
    """`connections` slow connections of `kind` for ATTACK_SECONDS at the service, or at its HAProxy `front`,
    with probes on new connections meanwhile; how long the server kept the slow connections (as the attacker
    saw it, and the service's own closes by reason), the workers' memory and the recovery."""
    (service_url, process), url = service, LB_URL if front else service[0]
    host, port_ = url.removeprefix("http://").split(":")
    closes_before, front_before = closes(service_url), front.stats()["r1"] if front else {}
    command = [sys.executable, "-m", "loadtest.slow_client", kind, host, port_, str(connections // ATTACKERS)]
    attackers = [subprocess.Popen([*command, str(ATTACK_SECONDS)], cwd=PROJECT_DIR, stdout=subprocess.PIPE)
                 for _ in range(ATTACKERS)]  # fmt: skip
    memory: list[float] = []
    started = time.monotonic()
    with ThreadPoolExecutor(64) as pool:
        futures = []
        while (elapsed := time.monotonic() - started) < ATTACK_SECONDS:
            futures.append(pool.submit(new_connection_ms, host, int(port_), PROBE_BODY, PROBE_SOURCE))
            if len(futures) % int(1 / PROBE_EVERY_S) == 0:
                memory.append(sum(w.memory_info().rss for w in service_workers(process.pid).values()) / 2**20)
            time.sleep(max(0.0, len(futures) * PROBE_EVERY_S - elapsed))
        outcomes = [future.result() for future in futures]
    reports = [json.loads(attacker.communicate()[0]) for attacker in attackers]
    stopped = time.monotonic()
    closes_after, front_after = closes(service_url), front.stats()["r1"] if front else {}
    recovery = recovered(lambda: new_connection_ms(host, int(port_), PROBE_BODY, PROBE_SOURCE), stopped, 10,
                         "seconds_after_attack")  # fmt: skip
    lifetimes: Counter[float] = Counter()
    stats: Counter[str] = Counter()
    for report in reports:
        lifetimes.update({float(seconds): count for seconds, count in report["lifetimes_s"].items()})
        stats.update(report["stats"])
    closed = sum(lifetimes.values())
    answered = [outcome for outcome in outcomes if isinstance(outcome, float)]
    failed = Counter(outcome for outcome in outcomes if isinstance(outcome, str))
    held = [sum(values) for values in zip(*(report["held_per_second"] for report in reports), strict=False)]
    within = sum(n for seconds, n in lifetimes.items() if seconds <= deadline_s + 1)
    say(f"{kind}: {len(answered)}/{len(outcomes)} probes answered, {closed} slow connections closed")
    lag = max(report["loop_lag_s_max"] for report in reports)
    return {
        "attacker": {"connections": connections, "processes": ATTACKERS, "seconds": ATTACK_SECONDS,
                     "own_loop_lag_s_max": lag},
        "probes": {"sent": len(outcomes), "answered": len(answered),
                   "answered_share": round(len(answered) / len(outcomes), 4),
                   "failed_by_reason": dict(sorted(failed.items())),
                   "p50_ms": percentile(answered, 0.5), "p99_ms": percentile(answered, 0.99)},
        # HAProxy's view of the service: times its health check took it out, seconds out, failed connections
        "front_to_service": {key: int(front_after[key]) - int(front_before[key])
                             for key in ("chkdown", "downtime", "econ")} if front else None,
        "service_closes_by_reason": {reason: int(n - closes_before.get(reason, 0))
                                     for reason, n in closes_after.items()},
        "slow_connections": {
            "held_by_attacker_median": percentile([float(h) for h in held], 0.5),
            "held_by_attacker_max": max(held, default=0),
            "closed_by_server": closed,
            "deadline_s": deadline_s,
            "closed_within_deadline_plus_1_s": round(within / closed, 4) if closed else None,
            "closed_at_once_under_0_1_s": sum(n for seconds, n in lifetimes.items() if seconds < 0.1),
            "longest_s": max(lifetimes, default=None),
            "outcomes": dict(stats),
        },
        "workers_memory_mib": {"max": round(max(memory), 1), "median": percentile(memory, 0.5)},
        "recovery": recovery,
    }  # fmt: skip


def attacks(fronts: Sequence[str], kinds: list[str], deadline: Callable[[str, str], float], connections: int) -> Result:
    """slow_attack() of each kind straight at the service and through the HAProxy front of
    deploy/local/haproxy.cfg (the service as its replica r1), as far as `fronts` asks; by front and kind."""
    outcome: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as directory, server("service", port=port(SLOTS[0])) as service:
        if "direct" in fronts:
            outcome["direct"] = {kind: slow_attack(kind, deadline("direct", kind), service, None, connections)
                                 for kind in kinds}  # fmt: skip
        if "haproxy" in fronts:
            balancer = Balancer(Path(directory))
            try:
                balancer.only_first()
                outcome["haproxy"] = {kind: slow_attack(kind, deadline("haproxy", kind), service, balancer, connections)
                                      for kind in kinds}  # fmt: skip
            finally:
                balancer.stop()
    return outcome


def slow_clients(args: argparse.Namespace) -> Result:
    """Each slow kind of loadtest.slow_client at 30,000 connections for 60 s, direct and through HAProxy."""
    settings = Settings()
    deadlines = {"silent": settings.idle_timeout_s, "slow-headers": settings.request_timeout_s}

    def deadline(front: str, kind: str) -> float:
        return FRONT_REQUEST_DEADLINE_S if front == "haproxy" else deadlines.get(kind, settings.request_timeout_s)

    outcome = attacks(args.fronts or FRONTS, args.kinds or list(DRILL_KINDS), deadline, ATTACK_CONNECTIONS)
    return {front: outcome.get(front, {}) for front in FRONTS}


def slow_readers(args: argparse.Namespace) -> Result:
    """9,000 connections asking for large answers that they never read, for 60 s, direct and through HAProxy.

    The answers: the API page's script, /docs.json, /metrics and a 1,000-flight prediction."""
    send_timeout_s = Settings().send_timeout_s
    outcome = attacks(args.fronts or FRONTS, [args.unread], lambda *_: send_timeout_s, NEVER_READING)
    return {"pod_memory_limit_mib": POD_MEMORY_LIMIT_MIB,
            **{front: outcome[front][args.unread] if front in outcome else None for front in FRONTS}}  # fmt: skip


def metrics_snapshot(url: str, service: subprocess.Popen[bytes]) -> Result:
    """/metrics' size, series and scrape time, the workers' memory and the metric files on disk."""
    started = time.perf_counter()
    text = httpx.get(f"{url}/metrics", timeout=120).text
    scrape_s = time.perf_counter() - started
    procs = service_workers(service.pid)
    directory = Path(next(iter(procs.values())).environ()["PROMETHEUS_MULTIPROC_DIR"])
    return {
        "bytes": len(text.encode()),
        "series": sum(1 for line in text.splitlines() if line and not line.startswith("#")),
        "scrape_ms": round(scrape_s * 1000, 1),
        "workers_rss_mib": sorted(round(w.memory_info().rss / 2**20, 1) for w in procs.values()),
        "metric_files_bytes": sum(f.stat().st_size for f in directory.iterdir()),
    }


def path_flood(args: argparse.Namespace) -> Result:
    """100,000 requests to paths never seen before (loadtest/random_paths.lua): /metrics before and after."""
    with server("service") as (url, process):
        wrk(url, 2, 2, 20, 1, "warm-up")  # every route's series exist before the first snapshot
        before = metrics_snapshot(url, process)
        command = ["wrk", "-t2", "-c20", "-d120s", "-s", str(HERE / "random_paths.lua"), url, "--"]
        flood = subprocess.run([*command, str(args.paths // 2)], capture_output=True, text=True, check=True).stdout
        say(flood)
        after = metrics_snapshot(url, process)
    return {"requests": int(flood.split(" requests in ")[0].split()[-1]), "before": before, "after": after}


DRILLS = {
    drill.__name__.replace("_", "-"): drill
    for drill in (overload, big_request, heavy_overload, soak, sigterm, sigkill, after_burst, lone, slow_clients,
                  polled_monitoring, slow_readers, path_flood)
}  # fmt: skip


def result_name(args: argparse.Namespace) -> str:
    """The drill's result file name: the drill, then every option that changes what it measures."""
    name = args.drill + ("-not-greedy" if os.environ.get("FLIGHT_DELAY_GREEDY_BATCHING", "true") == "false" else "")
    name += f"-against-{args.against}" if args.against else ""
    name += f"-paired-{args.paired_env.replace('=', '-').replace(',', '-').lower()}" if args.paired_env else ""
    name += "".join(f"-{part}" for part in (args.fronts or []) + (args.kinds or []))
    return name + (f"-{args.unread}" if args.drill == "slow-readers" and args.unread != "never-read" else "")


def main() -> None:
    drills = "\n".join(f"  {name:18} {str(drill.__doc__).splitlines()[0]}" for name, drill in DRILLS.items())
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=f"drills:\n{drills}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("drill", choices=DRILLS, metavar="DRILL")
    parser.add_argument("--minutes", type=int, default=10, help="soak length (default 10)")
    parser.add_argument("--against", help="lone: also measure the code of this git revision, in the same run")
    parser.add_argument("--paired-env", help="lone: also measure this checkout with KEY=VALUE[,KEY=VALUE...] set")
    parser.add_argument("--rounds", type=int, default=2, help="lone --paired-env, polled-monitoring: rounds (2)")
    parser.add_argument(
        "--kinds", nargs="+", choices=KINDS, help=f"slow-clients: these kinds (default: {', '.join(DRILL_KINDS)})"
    )
    parser.add_argument("--fronts", nargs="+", choices=FRONTS, help="slow-clients, slow-readers: only these")
    parser.add_argument("--unread", choices=UNREAD_KINDS, default="never-read", help="slow-readers: which answers")
    parser.add_argument("--paths", type=int, default=100_000, help="path-flood: requests (default 100,000)")
    parser.add_argument("--overwrite", action="store_true", help="replace the drill's result file if it exists")
    args = parser.parse_args()
    result = RESULTS / f"{result_name(args)}.json"
    unused(result, overwrite=args.overwrite)  # the docs cite these files
    more_files()  # 2,000 connections need more than 1,024 files
    RESULTS.mkdir(parents=True, exist_ok=True)
    say(f"drill: {args.drill}")
    outcome = {"drill": args.drill, "date": time.strftime("%Y-%m-%d %H:%M"), **DRILLS[args.drill](args)}
    write_json(result, outcome)
    print(json.dumps({k: v for k, v in outcome.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
