"""Scale-out drills: replicas of the image behind HAProxy, as the Kubernetes Deployment runs them; by hand.

    python -m loadtest.scale lb-cost         # 2 replicas x 1 worker via HAProxy vs 1 x 2 workers direct
    python -m loadtest.scale utilization     # one 1-core replica: CPU use and p99 at paced rates
    python -m loadtest.scale cpu-per-request # its CPU idle and at 100 and 414 req/s, batching on and off
    python -m loadtest.scale rolling-update  # replace both replicas under load, as the Deployment does
    python -m loadtest.scale model-rollout --new-image flight-delay:NEW   # the same, to a new model
    python -m loadtest.scale sigkill         # SIGKILL one replica under load: failures, recovery
(--image sets the replicas' image, flight-delay:latest by default.)

The replicas, HAProxy and Prometheus are loadtest.cluster's. Each drill writes
loadtest/results/scale/DRILL.json and .md (and a PNG where it has a picture). Needs a Docker engine
(DOCKER_HOST), haproxy, prometheus and wrk.
"""

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loadtest.client import BackgroundLoad, paced
from loadtest.cluster import LB_URL, Replicas, cluster, cpu_use, port, rollout
from loadtest.probes import ready
from loadtest.results import RESULTS as ALL_RESULTS
from loadtest.results import figure, say, write_json
from loadtest.wrk import failures, wrk, wrk_summary
from models.schema import EXAMPLE_REQUEST

RESULTS = ALL_RESULTS / "scale"


@contextmanager
def replica(image: str, workers: int = 1, cpus: int = 1, env: tuple[str, ...] = ()) -> Iterator[tuple[str, Replicas]]:
    """One replica in slot r1, reached directly (no balancer); its URL, removed afterwards."""
    replicas = Replicas(image)
    try:
        replicas.start(1, workers=workers, cpus=cpus, env=env)
        yield f"http://127.0.0.1:{port(1)}", replicas
    finally:
        replicas.cleanup()


def lb_cost(args: argparse.Namespace) -> dict[str, Any]:
    """The reference wrk run through HAProxy to 2 replicas x 1 worker, and to 1 replica x 2 workers directly."""
    via: list[dict[str, Any]] = []
    direct: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        with cluster(args.image, (1, 2)):
            wrk(LB_URL, 5, 4, 200, 1, "warm-up")
            via.append(wrk_summary(LB_URL, args.duration, 4, 200, 1, "via haproxy"))
        with replica(args.image, workers=2, cpus=2) as (url, _):
            wrk(url, 5, 4, 200, 1, "warm-up")
            direct.append(wrk_summary(url, args.duration, 4, 200, 1, "direct"))
        say(f"round {round_ + 1}: via haproxy {via[-1]['requests_per_s']:,.0f} req/s, "
            f"direct {direct[-1]['requests_per_s']:,.0f} req/s")  # fmt: skip
    return {
        "duration_s": args.duration,
        "runs": {"haproxy, 2 replicas x 1 worker": via, "direct, 1 replica x 2 workers": direct},
        "ratio_per_round": [
            round(a["requests_per_s"] / b["requests_per_s"], 3) for a, b in zip(via, direct, strict=True)
        ],
        "failed": sum(failures(run) for run in via + direct),
    }


def utilization(args: argparse.Namespace) -> dict[str, Any]:
    """One replica (1 worker, 1 CPU): its CPU use, as the HPA reads it, and p99 at paced shares of its capacity.

    Paced (open-loop), so the rate, not the connections, sets the CPU use, and a queue shows in the
    latency from each due time. Capacity is measured first with wrk at 64 connections.
    """
    points = []
    with replica(args.image) as (url, replicas):
        stat = replicas.cpu_stat(1)
        wrk(url, 5, 2, 8, 1, "warm-up")
        capacity = wrk_summary(url, args.duration, 4, 64, 1, "capacity")["requests_per_s"]
        say(f"capacity: {capacity:,.0f} req/s")
        for share in (0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            rate = round(capacity * share)
            run, used = cpu_use(stat, lambda: paced(f"{url}/v1/prediction", rate, args.duration, EXAMPLE_REQUEST))  # noqa: B023
            latency = run["latency_ms"]
            points.append({"share_of_capacity": share, "requests_per_s": rate, "cpu_utilization": round(used, 3),
                           "p50_ms": round(latency["p50"], 1), "p99_ms": round(latency["p99"], 1),
                           "failed": run["failed"]})  # fmt: skip
            say(f"{rate:,} req/s ({share:.0%}): CPU {used:.0%}, p50 {latency['p50']:.1f} ms, "
                f"p99 {latency['p99']:.1f} ms, {run['failed']} failed")  # fmt: skip
    with figure(RESULTS / "utilization.png", size=(6, 4)) as (_, axes):
        axes.plot([p["cpu_utilization"] * 100 for p in points], [p["p99_ms"] for p in points], marker="o")
        for p in points:
            axes.annotate(f"{p['requests_per_s']:,} req/s", (p["cpu_utilization"] * 100, p["p99_ms"]), size="x-small")
        axes.set(xlabel="CPU use of the replica, % of its 1-core request", ylabel="p99 latency from due time, ms",
                 title="One replica (1 worker, 1 CPU), paced load")  # fmt: skip
        axes.grid(alpha=0.3)
    return {"duration_s": args.duration, "capacity_requests_per_s": capacity, "points": points}


def cpu_per_request(args: argparse.Namespace) -> dict[str, Any]:
    """CPU use of one 1-core replica idle and at low paced rates, with adaptive batching on and off."""
    runs = []
    for settings in ((), ("FLIGHT_DELAY_BATCHING=false",)):
        with replica(args.image, env=settings) as (url, replicas):
            stat = replicas.cpu_stat(1)
            time.sleep(3)
            run: dict[str, Any] = {"settings": list(settings) or ["as shipped"]}
            run["idle"] = round(cpu_use(stat, lambda: time.sleep(10))[1], 3)
            for rate in (100, 414):
                result, used = cpu_use(stat, lambda: paced(f"{url}/v1/prediction", rate, 10, EXAMPLE_REQUEST))  # noqa: B023
                per_request = round(used / rate * 1000, 2)
                run[f"{rate}_req_s"] = {"cpu_utilization": round(used, 3), "cpu_ms_per_request": per_request,
                                        "failed": result["failed"]}  # fmt: skip
            say(f"{run}")
            runs.append(run)
    return {"seconds_each": 10, "runs": runs}


def rolling_update(args: argparse.Namespace) -> dict[str, Any]:
    """Both replicas replaced under load (model-rollout: by --new-image); per-replica traffic drawn beside."""
    if args.drill == "model-rollout" and not args.new_image:
        sys.exit("model-rollout needs --new-image, an image built with a newly trained model")
    new_image = args.new_image if args.drill == "model-rollout" else args.image
    result = rollout(args.image, new_image, args.connections)
    rates, start = result.pop("rates"), result.pop("wall_start")
    del result["refused"]
    with figure(RESULTS / f"{args.drill}.png", size=(9, 4.5)) as (_, axes):
        for instance, points in sorted(rates.items()):
            slot = int(instance.rsplit(":", 1)[1]) - 3100
            axes.plot([t - start for t, _ in points], [v for _, v in points], label=f"r{slot} ({instance})")
        for event in result["events"]:
            if "SIGTERM" in event["event"] or "in the balancer" in event["event"]:
                axes.axvline(event["t_s"], color="grey", linestyle=":", linewidth=0.8)
        axes.set(xlabel="seconds", ylabel="requests/s to /v1/prediction (Prometheus, rate over 3 s)",
                 title=f"{args.drill}: per-replica traffic (dotted: new replica in, old one SIGTERM)")  # fmt: skip
        axes.legend(fontsize="small")
        axes.grid(alpha=0.3)
    images = {"old_image": args.image, "new_image": args.new_image} if args.drill == "model-rollout" else {}
    return {**images, **result}


def sigkill(args: argparse.Namespace) -> dict[str, Any]:
    """SIGKILL one of two replicas under load: failed requests, the balancer's view, time until it serves again.

    The container restarts in place, as the kubelet restarts a container whose process died.
    """
    with cluster(args.image, (1, 2)) as (replicas, balancer, _):
        load = BackgroundLoad(f"{LB_URL}/v1/prediction", args.connections, EXAMPLE_REQUEST)
        time.sleep(10)
        before = balancer.stats()["r1"]
        killed, states = time.monotonic(), []
        replicas.kill(1)
        while time.monotonic() - killed < 60:  # the balancer's state of r1 every 50 ms, until it serves again
            state, answers = balancer.states()["r1"], ready(f"http://127.0.0.1:{port(1)}")
            states.append((round(time.monotonic() - killed, 2), state, answers))
            if answers and state == "UP" and any(not up for _, _, up in states):
                break
            time.sleep(0.05)
        time.sleep(10)
        counts = load.stop()
        after = balancer.stats()["r1"]
    gone = next((i for i, (_, _, up) in enumerate(states) if not up), len(states))  # r1 stopped answering
    return {
        "connections": args.connections,
        "outcomes": dict(counts),
        "requests": sum(counts.values()),
        "failed": sum(counts.values()) - counts["200"],
        "seconds_until_balancer_saw_a_failed_check": next((t for t, state, _ in states if state != "UP"), None),
        "seconds_until_out_of_balancer": next((t for t, state, _ in states if state.startswith("DOWN")), None),
        "seconds_until_restarted_and_ready": next((t for t, _, up in states[gone:] if up), None),
        "seconds_until_serving_again": states[-1][0],
        **{f"r1_{name}": int(after[key] or 0) - int(before[key] or 0) for name, key in
           (("connection_errors", "econ"), ("requests_redispatched", "wredis"), ("requests_retried", "wretr"))},
    }  # fmt: skip


DRILLS = {
    "lb-cost": lb_cost,
    "utilization": utilization,
    "cpu-per-request": cpu_per_request,
    "rolling-update": rolling_update,
    "model-rollout": rolling_update,
    "sigkill": sigkill,
}


def markdown(outcome: dict[str, Any]) -> str:
    """The drill's figures as a Markdown list, its points and events as tables."""
    drill = outcome["drill"]
    lines = [f"# Scale drill: {drill}", "", f"`python -m loadtest.scale {drill}`, {outcome['date']}", ""]
    for key, value in outcome.items():
        if key == "runs" and isinstance(value, dict):  # lb-cost's wrk runs of each route
            for name, runs in value.items():
                each = (f"{r['requests']:,} requests ({r['requests_per_s']:,.0f} req/s, "
                        f"p99 {r['latency_ms']['p99']:.1f} ms)" for r in runs)  # fmt: skip
                lines.append(f"- {name}: " + ", ".join(each))
        elif key not in ("drill", "date", "events", "points"):
            lines.append(f"- {key.replace('_', ' ')}: {json.dumps(value) if isinstance(value, dict | list) else value}")
    if points := outcome.get("points"):
        lines += ["", "| share of capacity | req/s | CPU use | p50 ms | p99 ms | failed |", "|---:" * 6 + "|"]
        lines += [f"| {p['share_of_capacity']:.0%} | {p['requests_per_s']:,} | {p['cpu_utilization']:.0%} | "
                  f"{p['p50_ms']:.1f} | {p['p99_ms']:.1f} | {p['failed']} |" for p in points]  # fmt: skip
    if events := outcome.get("events"):
        lines += ["", "| t (s) | event |", "|---:|---|"] + [f"| {e['t_s']} | {e['event']} |" for e in events]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("drill", choices=DRILLS)
    parser.add_argument("--image", default="flight-delay:latest", help="the image the replicas run")
    parser.add_argument("--new-image", help="model-rollout: the image with the new model")
    parser.add_argument("--duration", type=int, default=45, help="seconds of each wrk run (lb-cost, utilization)")
    parser.add_argument("--rounds", type=int, default=2, help="lb-cost: paired rounds")
    parser.add_argument("--connections", type=int, default=200, help="clients of the accounting load")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    say(f"scale drill: {args.drill}")
    outcome = {"drill": args.drill, "date": time.strftime("%Y-%m-%d %H:%M"), "image": args.image,
               **DRILLS[args.drill](args)}  # fmt: skip
    write_json(RESULTS / f"{args.drill}.json", outcome)
    (RESULTS / f"{args.drill}.md").write_text(markdown(outcome))
    print(json.dumps(outcome, indent=2))


if __name__ == "__main__":
    main()
