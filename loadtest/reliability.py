"""Overload, long-run and fault drills against a fresh service; run by hand, not in CI.

    python -m loadtest.reliability overload      # 2,000 connections for 20 s, then time to recover
    python -m loadtest.reliability big-request   # reference-load p99 with and without 1,000-flight requests mixed in
    python -m loadtest.reliability heavy-overload   # 1,000-flight requests from 200 connections, wait bound on/off
    python -m loadtest.reliability soak [--minutes 10]   # memory of every worker, sampled every 10 s
    python -m loadtest.reliability sigterm       # SIGTERM under load: every request's outcome, seconds to exit
    python -m loadtest.reliability sigkill       # one worker killed under load: failed requests, recovery
    python -m loadtest.reliability after-burst   # latency of lone requests, idle and for 12 s after a burst
    python -m loadtest.reliability lone          # one request at a time (http.client): 1, 100 and 1,000 flights
    python -m loadtest.reliability lone --against REV   # the same, paired with the code of git revision REV
    python -m loadtest.reliability lone --paired-env FLIGHT_DELAY_MONITORING=false   # paired with a setting
    python -m loadtest.reliability slow-clients  # 30,000 slow connections of each kind for 60 s, direct and via HAProxy
    python -m loadtest.reliability polled-monitoring --against REV   # lone requests while /v1/monitoring is polled
    python -m loadtest.reliability slow-readers  # 9,000 never-reading connections asking for large answers, 60 s
    python -m loadtest.reliability path-flood    # 100,000 requests to random paths: /metrics before and after

Each drill writes loadtest/results/reliability/DRILL.json (and soak.png) and prints it; a result
that exists is refused unless --overwrite, since the docs cite them.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from loadtest.client import BackgroundLoad
from loadtest.cluster import LB_URL, SLOTS, Balancer, port
from loadtest.probes import closes, lone_times, new_connection_ms, probe
from loadtest.results import RESULTS as ALL_RESULTS
from loadtest.results import figure, say, unused, write_json
from loadtest.servers import PROJECT_DIR, checkout, server, service_workers
from loadtest.slow_client import KINDS, UNREAD_KINDS, more_files
from loadtest.stats import percentile
from loadtest.wrk import SOCKET_ERRORS, failures, in_background, parse_summary, wrk, wrk_summary
from models.schema import EXAMPLE_REQUEST
from serving.layer import shutdown_counts
from serving.settings import Settings

HERE = Path(__file__).resolve().parent
RESULTS = ALL_RESULTS / "reliability"


def overload(_args: argparse.Namespace) -> dict[str, Any]:
    """2,000 connections for 20 s: answered or shed with 503, no crash; recovery after the load stops.

    The same wrk against the bare ASGI server (loadtest.apps ceiling) gives the time-outs wrk itself counts at
    2,000 connections (its 2-s check also counts connections still being set up).
    """
    with server("service") as (url, process):
        before = set(service_workers(process.pid))
        summary = wrk_summary(url, 20, 4, 2000, 1, "2,000 connections")
        stopped = time.monotonic()
        recovery = None
        while time.monotonic() - stopped < 5:
            if (latency := probe(url)) < 50:
                recovery = {"seconds_after_load": round(time.monotonic() - stopped, 2), "latency_ms": round(latency, 1)}
                break
            time.sleep(0.1)
        after = set(service_workers(process.pid))
    with server("ceiling") as (url, _process):
        floor = wrk_summary(url, 20, 4, 2000, 1, "2,000 connections, bare ASGI server")
    return {
        "wrk": summary,
        "answered_2xx": summary["requests"] - summary["non_2xx"],
        "shed_503": summary.get("status_503"),
        "other_5xx": summary.get("status_5xx_other"),
        "socket_errors": {kind: summary["errors"][kind] for kind in SOCKET_ERRORS},
        "first_request_under_50_ms_after_load": recovery,
        "worker_restarts": len(before - after),
        "timeouts_against_bare_asgi_server": floor["errors"]["timeout"],
    }


def big_request(_args: argparse.Namespace) -> dict[str, Any]:
    """Reference load for 20 s, alone and with one 1,000-flight request after another mixed in."""
    big = {"flights": [EXAMPLE_REQUEST["flights"][i % 2] for i in range(1000)]}
    with server("service") as (url, _process):
        wrk(url, 5, 4, 200, 1, "warm-up")
        alone = wrk_summary(url, 20, 4, 200, 1, "reference load alone")
        latencies: list[float] = []
        done = threading.Event()

        def send_big() -> None:
            with httpx.Client(timeout=30) as client:
                while not done.is_set():
                    started = time.perf_counter()
                    response = client.post(f"{url}/v1/prediction", json=big)
                    assert response.status_code == 200 and len(response.json()) == 1000
                    latencies.append((time.perf_counter() - started) * 1000)

        thread, _box = in_background(send_big)
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


def heavy_overload(_args: argparse.Namespace) -> dict[str, Any]:
    """200 connections of 1,000-flight requests for 20 s, with the default wait bound and without it."""
    outcome = {}
    for label, shed_after_ms in (("shed_after_1000_ms", "1000"), ("no_wait_bound", "100000000")):
        with server("service", env={"FLIGHT_DELAY_SHED_AFTER_MS": shed_after_ms}) as (url, _process):
            summary = wrk_summary(url, 20, 4, 200, 1000, f"1,000-flight requests, {label}")
        outcome[label] = {
            "answered_2xx": summary["requests"] - summary["non_2xx"],
            "shed_503": summary.get("status_503"),
            "other_5xx": summary.get("status_5xx_other"),
            "client_timeouts": summary["errors"]["timeout"],
            "latency_ms": summary["latency_ms"],
        }
    return outcome


def soak(args: argparse.Namespace) -> dict[str, Any]:
    """The reference load for N minutes; resident memory of every worker every 10 s."""
    seconds = args.minutes * 60
    samples: list[dict[str, Any]] = []
    with server("service") as (url, process):
        thread, box = in_background(wrk, url, seconds, 4, 200, 1, "soak")
        started = time.monotonic()
        while thread.is_alive():
            rss = {str(pid): p.memory_info().rss / 2**20 for pid, p in service_workers(process.pid).items()}
            samples.append({"t_s": round(time.monotonic() - started, 1), "rss_mib": rss})
            thread.join(timeout=10)
        summary = parse_summary(box["result"])

    def at(minute: int) -> dict[str, float]:
        return min(samples, key=lambda s: abs(s["t_s"] - minute * 60))["rss_mib"]

    growth = {pid: round(at(args.minutes)[pid] / at(1)[pid] - 1, 4) for pid in at(1) if pid in at(args.minutes)}
    plot_memory(samples, RESULTS / "soak.png", args.minutes)
    return {"minutes": args.minutes, "wrk": summary, "failed": failures(summary), "growth_minute_1_to_end": growth,
            "samples": samples}  # fmt: skip


def plot_memory(samples: list[dict[str, Any]], path: Path, minutes: int) -> None:
    """Resident memory of each worker over the soak."""
    with figure(path, size=(8, 4)) as (_, axis):
        for pid in samples[0]["rss_mib"]:
            points = [(s["t_s"] / 60, s["rss_mib"][pid]) for s in samples if pid in s["rss_mib"]]
            axis.plot(*zip(*points, strict=True), label=f"worker {pid}")
        axis.set(xlabel="minutes under wrk -t4 -c200", ylabel="resident memory (MiB)",
                 title=f"Soak, {minutes} min, {time.strftime('%Y-%m-%d')}")  # fmt: skip
        axis.set_ylim(bottom=0)
        axis.legend()


def under_load_then(url: str, action: Any) -> dict[str, Any]:
    """Reference load for 20 s with action() 5 s in; the wrk summary."""
    thread, box = in_background(wrk, url, 20, 4, 200, 1, "load")
    time.sleep(5)
    action()
    thread.join()
    return parse_summary(box["result"])


def sigterm(_args: argparse.Namespace) -> dict[str, Any]:
    """SIGTERM to `bentoml serve` under load from 200 keep-alive connections: what became of every request.

    Each worker logs the requests it accepted, answered and cut; the client sorts every request it
    sent by outcome (loadtest.client's BackgroundLoad). A request the client saw "unanswered" that no worker
    counts as cut was never read by the service: it reached a keep-alive connection the server was
    closing as idle, or the listening socket's queue as the service stopped.
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
    workers_at_exit = shutdown_counts(log.read_text())
    answered_by_service = sum(worker["answered"] for worker in workers_at_exit)
    received = sum(n for outcome, n in counts.items() if outcome.isdigit())
    return {
        "seconds_to_exit": round(exited - signalled, 2),
        "exit_code": process.returncode,
        "client_outcomes": dict(counts),
        "workers_at_exit": workers_at_exit,
        "accepted_but_cut": sum(worker["cut"] for worker in workers_at_exit),
        "answered_but_not_received": answered_by_service - received,
    }


def sigkill(_args: argparse.Namespace) -> dict[str, Any]:
    """SIGKILL one worker under load: failed requests, and whether the service answers afterwards."""
    with server("service") as (url, process):
        before = service_workers(process.pid)
        summary = under_load_then(url, lambda: next(iter(before.values())).kill())
        time.sleep(2)
        after = service_workers(process.pid)
        answers_after = probe(url) < float("inf")
    return {
        "failed_requests": failures(summary),
        "requests_completed": summary["requests"],
        "errors": summary["errors"],
        "non_2xx": summary["non_2xx"],
        "workers_before": len(before),
        "workers_after": len(after),
        "answers_after": answers_after,
    }


def after_burst(_args: argparse.Namespace) -> dict[str, Any]:
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


def lone(args: argparse.Namespace) -> dict[str, Any]:
    """Milliseconds of lone requests on an idle service, one keep-alive http.client connection, one at a time.

    Flights from loadtest/flights.jsonl, the load test's pool; 200 requests of each size after 20
    unmeasured. With --against REV, two rounds each of this checkout's code and REV's, alternating;
    with --paired-env KEY=VALUE[,KEY=VALUE...], --rounds rounds each of this checkout as shipped and
    with those settings, alternating.
    """
    if args.paired_env:
        settings = dict(pair.partition("=")[::2] for pair in args.paired_env.split(","))
        paired: dict[str, list[dict[str, Any]]] = {"as shipped": [], args.paired_env: []}
        for _round in range(args.rounds):
            for name, env in zip(paired, (None, settings), strict=True):
                say(f"lone requests, {name}")
                paired[name].append(lone_requests(PROJECT_DIR, env))
        return {"requests_each": 200, "rounds": paired}
    if not args.against:
        return {"requests_each": 200, **lone_requests(PROJECT_DIR)}
    rounds: dict[str, list[dict[str, Any]]] = {"this checkout": [], f"at {args.against}": []}
    with checkout(args.against) as other:
        for _round in range(2):
            for name, code in zip(rounds, (PROJECT_DIR, other), strict=True):
                say(f"lone requests, {name}")
                rounds[name].append(lone_requests(code))
    return {"requests_each": 200, "rounds": rounds}


ATTACKERS = 3  # processes of loadtest.slow_client: a process may hold 20,000 open files here
ATTACK_CONNECTIONS = 30_000
ATTACK_SECONDS = 60
PROBE_EVERY_S = 0.25  # one new-connection, one-flight request every 250 ms during the attack
PROBE_SOURCE = "127.0.0.2"  # the probes' own address, so a front's per-source limit tells them from the attacker
FRONT_REQUEST_DEADLINE_S = 10  # deploy/local/haproxy.cfg: timeout http-request
PROBE_BODY = json.dumps({"flights": EXAMPLE_REQUEST["flights"][:1]})


def slow_attack(
    url: str,
    kind: str,
    deadline_s: float,
    service: subprocess.Popen[bytes],
    service_url: str,
    balancer: Any = None,
    connections: int = ATTACK_CONNECTIONS,
) -> dict[str, Any]:
    """`connections` slow connections of `kind` against `url` for ATTACK_SECONDS, with probes on new
    connections meanwhile; then how long the slow connections were kept (as the attacker saw it, and
    the service's own closes by reason), the workers' memory and the recovery."""
    host, port = url.removeprefix("http://").split(":")
    closes_before = closes(service_url)
    front_before = balancer.stats()["r1"] if balancer else {}
    command = [sys.executable, "-m", "loadtest.slow_client", kind, host, port]
    attackers = [
        subprocess.Popen(
            [*command, str(connections // ATTACKERS), str(ATTACK_SECONDS)], cwd=PROJECT_DIR, stdout=subprocess.PIPE
        )
        for _ in range(ATTACKERS)
    ]
    memory: list[float] = []
    started = time.monotonic()
    with ThreadPoolExecutor(64) as pool:
        futures = []
        while (elapsed := time.monotonic() - started) < ATTACK_SECONDS:
            futures.append(pool.submit(new_connection_ms, host, int(port), PROBE_BODY, PROBE_SOURCE))
            if len(futures) % int(1 / PROBE_EVERY_S) == 0:
                memory.append(sum(w.memory_info().rss for w in service_workers(service.pid).values()) / 2**20)
            time.sleep(max(0.0, len(futures) * PROBE_EVERY_S - elapsed))
        outcomes = [future.result() for future in futures]
    reports = [json.loads(attacker.communicate()[0]) for attacker in attackers]
    stopped = time.monotonic()
    closes_after = closes(service_url)
    front = balancer.stats()["r1"] if balancer else {}
    recovery = None
    while time.monotonic() - stopped < 10:
        if isinstance(latency := new_connection_ms(host, int(port), PROBE_BODY, PROBE_SOURCE), float) and latency < 50:
            recovery = {"seconds_after_attack": round(time.monotonic() - stopped, 2), "latency_ms": round(latency, 1)}
            break
        time.sleep(0.1)
    lifetimes: dict[float, int] = {}
    stats: dict[str, int] = {}
    for report in reports:
        for seconds, count in report["lifetimes_s"].items():
            lifetimes[float(seconds)] = lifetimes.get(float(seconds), 0) + count
        for key, count in report["stats"].items():
            stats[key] = stats.get(key, 0) + count
    closed = sum(lifetimes.values())
    answered = [outcome for outcome in outcomes if isinstance(outcome, float)]
    failed = [outcome for outcome in outcomes if isinstance(outcome, str)]
    held = [sum(values) for values in zip(*(report["held_per_second"] for report in reports), strict=False)]
    say(f"{kind}: {len(answered)}/{len(outcomes)} probes answered, {closed} slow connections closed")
    return {
        "attacker": {
            "connections": connections,
            "processes": ATTACKERS,
            "seconds": ATTACK_SECONDS,
            "own_loop_lag_s_max": max(report["loop_lag_s_max"] for report in reports),
        },
        "probes": {
            "sent": len(outcomes),
            "answered": len(answered),
            "answered_share": round(len(answered) / len(outcomes), 4),
            "failed_by_reason": {reason: failed.count(reason) for reason in sorted(set(failed))},
            "p50_ms": percentile(answered, 0.5),
            "p99_ms": percentile(answered, 0.99),
        },
        # HAProxy's view of the service: times its health check took it out, seconds out, failed connections
        "front_to_service": {key: int(front[key]) - int(front_before[key]) for key in ("chkdown", "downtime", "econ")}
        if balancer
        else None,
        "service_closes_by_reason": {
            reason: int(count - closes_before.get(reason, 0)) for reason, count in closes_after.items()
        },
        "slow_connections": {
            "held_by_attacker_median": percentile([float(h) for h in held], 0.5),
            "held_by_attacker_max": max(held, default=0),
            "closed_by_server": closed,
            "deadline_s": deadline_s,
            "closed_within_deadline_plus_1_s": round(
                sum(n for seconds, n in lifetimes.items() if seconds <= deadline_s + 1) / closed, 4
            )
            if closed
            else None,
            "closed_at_once_under_0_1_s": sum(n for seconds, n in lifetimes.items() if seconds < 0.1),
            "longest_s": max(lifetimes, default=None),
            "outcomes": stats,
        },
        "workers_memory_mib": {"max": round(max(memory), 1), "median": percentile(memory, 0.5)},
        "recovery": recovery,
    }


def slow_clients(args: argparse.Namespace) -> dict[str, Any]:
    """Each slow kind of loadtest.slow_client at 30,000 connections for 60 s, straight at the service and
    through the HAProxy front of deploy/local/haproxy.cfg (the service as its replica r1)."""
    settings = Settings()
    deadlines = {"silent": settings.idle_timeout_s, "slow-headers": settings.request_timeout_s}
    outcome: dict[str, Any] = {"direct": {}, "haproxy": {}}
    kinds = args.kinds or list(KINDS)
    fronts = args.fronts or ["direct", "haproxy"]
    with tempfile.TemporaryDirectory() as directory, server("service", port=port(SLOTS[0])) as (url, process):
        for kind in kinds if "direct" in fronts else []:
            deadline = deadlines.get(kind, settings.request_timeout_s)
            outcome["direct"][kind] = slow_attack(url, kind, deadline, process, url)
        balancer = Balancer(Path(directory))
        try:
            balancer.only_first()
            for kind in kinds if "haproxy" in fronts else []:
                outcome["haproxy"][kind] = slow_attack(LB_URL, kind, FRONT_REQUEST_DEADLINE_S, process, url, balancer)
        finally:
            balancer.stop()
    return outcome


NEVER_READING = 9_000  # the attack: one client's connections, each asking for a large answer
POD_MEMORY_LIMIT_MIB = 768  # deploy/k8s/base/deployment.yaml: the two workers must stay under it


def slow_readers(args: argparse.Namespace) -> dict[str, Any]:
    """9,000 connections that ask for the largest answers (the API page's script, /docs.json, /metrics, a
    1,000-flight prediction) and never read, for 60 s, straight at the service and through HAProxy."""
    settings = Settings()
    outcome: dict[str, Any] = {"pod_memory_limit_mib": POD_MEMORY_LIMIT_MIB, "direct": None, "haproxy": None}
    fronts = args.fronts or ["direct", "haproxy"]
    kind = args.unread
    with tempfile.TemporaryDirectory() as directory, server("service", port=port(SLOTS[0])) as (url, process):
        if "direct" in fronts:
            outcome["direct"] = slow_attack(url, kind, settings.send_timeout_s, process, url, connections=NEVER_READING)
        if "haproxy" in fronts:
            balancer = Balancer(Path(directory))
            try:
                balancer.only_first()
                outcome["haproxy"] = slow_attack(
                    LB_URL, kind, settings.send_timeout_s, process, url, balancer, connections=NEVER_READING
                )
            finally:
                balancer.stop()
    return outcome


def metrics_snapshot(url: str, service: subprocess.Popen[bytes]) -> dict[str, Any]:
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


def path_flood(args: argparse.Namespace) -> dict[str, Any]:
    """100,000 requests to paths never seen before (loadtest/random_paths.lua): /metrics before and after."""
    with server("service") as (url, process):
        wrk(url, 2, 2, 20, 1, "warm-up")  # every route's series exist before the first snapshot
        before = metrics_snapshot(url, process)
        command = [
            "wrk",
            "-t2",
            "-c20",
            "-d120s",
            "-s",
            str(HERE / "random_paths.lua"),
            url,
            "--",
            str(args.paths // 2),
        ]
        flood = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        say(flood)
        after = metrics_snapshot(url, process)
    requests = int(flood.split(" requests in ")[0].split()[-1])
    return {"requests": requests, "before": before, "after": after}


def lone_requests(code: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Median and p99 milliseconds of lone requests of 1, 100 and 1,000 flights to the service run from
    `code`, with `env` set for it."""
    pool = [json.loads(line) for line in (HERE / "flights.jsonl").read_text().splitlines()]
    sizes: dict[str, Any] = {}
    with server("service", code=code, env=env) as (url, _process):
        for size in (1, 100, 1_000):
            body = json.dumps({"flights": [pool[i % len(pool)] for i in range(size)]})
            sizes[f"{size}_flights"] = median_and_p99(lone_times(url, body))
            say(f"{size} flights: {sizes[f'{size}_flights']}")
    return sizes


def median_and_p99(milliseconds: list[float]) -> dict[str, float | None]:
    """Median and p99 of lone requests' milliseconds, to 0.01 ms."""
    return {"median_ms": percentile(milliseconds, 0.5, 2), "p99_ms": percentile(milliseconds, 0.99, 2)}


def lone_one_flight_ms(url: str) -> dict[str, float | None]:
    """Lone one-flight predictions on one keep-alive connection, 5 ms apart."""
    return median_and_p99(lone_times(url, PROBE_BODY, pause_s=0.005))


def polled_monitoring(args: argparse.Namespace) -> dict[str, Any]:
    """Lone one-flight predictions on an idle service, then while one client polls GET /v1/monitoring
    over 4 connections (wrk -t1 -c4), for this checkout and, with --against REV, REV's code;
    --rounds rounds each, alternating."""
    rounds: dict[str, list[dict[str, Any]]] = {"this checkout": []}
    if args.against:
        rounds[f"at {args.against}"] = []
    with checkout(args.against) as other:
        codes = dict(zip(rounds, (PROJECT_DIR, other), strict=False))
        for _round in range(args.rounds):
            for name, code in codes.items():
                with server("service", code=code) as (url, _process):
                    idle = lone_one_flight_ms(url)
                    poller = subprocess.Popen(
                        ["wrk", "-t1", "-c4", "-d30s", f"{url}/v1/monitoring"], stdout=subprocess.PIPE, text=True
                    )
                    time.sleep(1)
                    polled = lone_one_flight_ms(url)
                    poller.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
                    output = poller.communicate()[0]
                polls = next((line.split()[-1] for line in output.splitlines() if "Requests/sec" in line), None)
                rounds[name].append({"idle": idle, "polled": polled, "polls_per_s": polls})
                say(f"{name}: idle {idle}, polled {polled}, {polls} polls/s")
    return {"requests_each": 200, "rounds": rounds}


DRILLS = {
    "polled-monitoring": polled_monitoring,
    "slow-clients": slow_clients,
    "slow-readers": slow_readers,
    "path-flood": path_flood,
    "overload": overload,
    "big-request": big_request,
    "heavy-overload": heavy_overload,
    "soak": soak,
    "sigterm": sigterm,
    "sigkill": sigkill,
    "after-burst": after_burst,
    "lone": lone,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("drill", choices=DRILLS)
    parser.add_argument("--minutes", type=int, default=10, help="soak length (default 10)")
    parser.add_argument("--against", help="lone: also measure the code of this git revision, in the same run")
    parser.add_argument(
        "--paired-env", help="lone: also measure this checkout with KEY=VALUE[,KEY=VALUE...] set, in the same run"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="lone --paired-env, polled-monitoring: rounds of each (default 2)"
    )
    parser.add_argument("--kinds", nargs="+", choices=KINDS, help="slow-clients: only these kinds (default: all)")
    parser.add_argument("--fronts", nargs="+", choices=["direct", "haproxy"], help="slow-clients: only these")
    parser.add_argument(
        "--unread",
        choices=UNREAD_KINDS,
        default="never-read",
        help="slow-readers: which large answers (default: all four)",
    )
    parser.add_argument("--paths", type=int, default=100_000, help="path-flood: requests (default 100,000)")
    parser.add_argument("--overwrite", action="store_true", help="replace the drill's result file if it exists")
    args = parser.parse_args()
    name = (
        args.drill if os.environ.get("FLIGHT_DELAY_GREEDY_BATCHING", "true") != "false" else f"{args.drill}-not-greedy"
    ) + (f"-against-{args.against}" if args.against else "")
    name += f"-paired-{args.paired_env.replace('=', '-').replace(',', '-').lower()}" if args.paired_env else ""
    name += "".join(f"-{part}" for part in (args.fronts or []) + (args.kinds or []))  # a part of a drill, apart
    name += f"-{args.unread}" if args.drill == "slow-readers" and args.unread != "never-read" else ""
    result = RESULTS / f"{name}.json"
    unused(result, overwrite=args.overwrite)  # the docs cite these files
    more_files()  # 2,000 connections need more than 1,024 files
    RESULTS.mkdir(parents=True, exist_ok=True)
    say(f"drill: {args.drill}")
    outcome = {"drill": args.drill, "date": time.strftime("%Y-%m-%d %H:%M"), **DRILLS[args.drill](args)}
    write_json(result, outcome)
    print(json.dumps({k: v for k, v in outcome.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
