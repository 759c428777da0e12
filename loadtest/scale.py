"""Scale-out drills: replicas of the image behind HAProxy, as the Kubernetes Deployment runs them; by hand.

    python loadtest/scale.py lb-cost         # 2 replicas x 1 worker via HAProxy vs 1 x 2 workers direct
    python loadtest/scale.py utilization     # one 1-core replica: CPU use and p99 by connections
    python loadtest/scale.py rolling-update  # replace both replicas under load, as the Deployment does
    python loadtest/scale.py model-rollout --new-image flight-delay:NEW   # the same, to a new model
    python loadtest/scale.py sigkill         # SIGKILL one replica under load: failures, recovery
(--image sets the replicas' image, flight-delay:latest by default.)

Replicas are Docker containers of the image (host network, 1 worker and 1 CPU each, slots
127.0.0.1:3101-3104) behind deploy/local/haproxy.cfg on 127.0.0.1:3100, which health-checks
/readyz as the readinessProbe does; Prometheus (deploy/local/prometheus.yml) scrapes every slot.
Each drill writes loadtest/results/scale/DRILL.json and .md (and a PNG where it has a picture).
Needs a Docker engine (DOCKER_HOST), haproxy, prometheus and wrk.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlencode
from urllib.request import urlopen

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from accounting_client import BackgroundLoad  # noqa: E402
from report import failures, parse_summary  # noqa: E402
from run import say, wrk  # noqa: E402

from models.config import PROJECT_DIR  # noqa: E402
from models.schema import EXAMPLE_REQUEST  # noqa: E402

RESULTS = HERE / "results" / "scale"
LB_URL = "http://127.0.0.1:3100"
SLOTS = (1, 2, 3, 4)  # replica rN listens on 3100 + N (deploy/local/haproxy.cfg)
PROMETHEUS_PORT = 9390
PRESTOP_S = 5  # the Deployment's preStop sleep (deploy/k8s/base/deployment.yaml)
GRACE_S = 45  # its terminationGracePeriodSeconds (both pinned by tests/test_scale.py)
DOCKER = [shutil.which("docker") or "docker"] if not Path("/usr/bin/docker").exists() else ["/usr/bin/docker"]


def port(slot: int) -> int:
    """The port of replica slot rN."""
    return 3100 + slot


def ready(url: str) -> bool:
    """Whether url/readyz answers 200 now."""
    try:
        with urlopen(f"{url}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except (URLError, OSError):
        return False


def wait_until(condition: Callable[[], bool], seconds: float, what: str, step: float = 0.1) -> float:
    """Poll condition until true; the seconds it took. Exits the drill if it never holds."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            sys.exit(f"{what}: not within {seconds} s")
        time.sleep(step)
    return time.monotonic() - started


class Replicas:
    """Docker containers of the image, one per slot, as the Deployment's pods."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.running: dict[int, str] = {}

    def start(self, slot: int, image: str | None = None, workers: int = 1, cpus: int = 1) -> float:
        """Start a replica in slot; seconds until its /readyz answers."""
        name = f"flight-delay-scale-r{slot}"
        subprocess.run([*DOCKER, "rm", "-f", name], capture_output=True)
        started = time.monotonic()
        subprocess.run(
            [*DOCKER, "run", "-d", "--name", name, "--network=host", f"--cpus={cpus}",
             f"--memory={128 + 320 * workers}m",  # the Deployment's limit rule (deploy/k8s/base/deployment.yaml)
             "--read-only", "--tmpfs", "/tmp", "-e", "BENTOML_HOME=/tmp/bentoml",  # its read-only root and emptyDir
             "--restart=on-failure",  # the kubelet restarts a container whose process died
             "-e", f"BENTOML_PORT={port(slot)}", "-e", f"FLIGHT_DELAY_WORKERS={workers}", image or self.image],
            check=True, capture_output=True,
        )  # fmt: skip
        self.running[slot] = name
        wait_until(lambda: ready(f"http://127.0.0.1:{port(slot)}"), 90, f"replica r{slot} ready")
        return time.monotonic() - started

    def terminate(self, slot: int) -> float:
        """SIGTERM, as the kubelet sends after preStop; seconds until the container exited."""
        started = time.monotonic()
        subprocess.run([*DOCKER, "stop", "-t", str(GRACE_S), self.running.pop(slot)], check=True, capture_output=True)
        return time.monotonic() - started

    def kill(self, slot: int) -> None:
        """SIGKILL the replica's main process (as an OOM kill would), so its restart policy brings it back."""
        pid = subprocess.run(
            [*DOCKER, "inspect", "-f", "{{.State.Pid}}", self.running[slot]], check=True, capture_output=True, text=True
        ).stdout.strip()
        os.kill(int(pid), 9)

    def cleanup(self) -> None:
        """Remove every replica this drill started."""
        for name in self.running.values():
            subprocess.run([*DOCKER, "rm", "-f", name], capture_output=True)
        self.running.clear()


class Balancer:
    """HAProxy with deploy/local/haproxy.cfg, and its runtime API."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "haproxy.sock"
        self.process = subprocess.Popen(
            ["haproxy", "-f", str(PROJECT_DIR / "deploy/local/haproxy.cfg"), "-db"],
            env={**os.environ, "LB_SOCKET": str(self.socket)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.socket.exists, 10, "haproxy started")

    def command(self, line: str) -> str:
        """One runtime API command; its answer."""
        with socket.socket(socket.AF_UNIX) as connection:
            connection.connect(str(self.socket))
            connection.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """Each replica slot's state as HAProxy sees it: UP, DOWN, MAINT..."""
        rows = self.command("show stat").splitlines()
        header = rows[0].lstrip("# ").split(",")
        stats = [dict(zip(header, row.split(","), strict=False)) for row in rows[1:] if row]
        return {s["svname"]: s["status"] for s in stats if s["pxname"] == "replicas" and s["svname"].startswith("r")}

    def remove(self, slot: int) -> None:
        """Take a replica out, as the endpoints controller does when its pod starts terminating."""
        self.command(f"set server replicas/r{slot} state maint")

    def add(self, slot: int) -> None:
        """Let HAProxy's health check put a slot in service once its /readyz answers."""
        self.command(f"set server replicas/r{slot} state ready")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Prometheus:
    """Prometheus with deploy/local/prometheus.yml, for the traffic picture."""

    def __init__(self, directory: Path) -> None:
        self.url = f"http://127.0.0.1:{PROMETHEUS_PORT}"
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={PROJECT_DIR / 'deploy/local/prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'prometheus'}", f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: ready(self.url), 30, "prometheus ready")

    def rates(self, start: float, end: float) -> dict[str, list[tuple[float, float]]]:
        """Requests per second to /v1/prediction of each replica over [start, end] (Unix time)."""
        query = 'sum by (instance) (rate(bentoml_service_request_total{endpoint="/v1/prediction"}[3s]))'
        params = urlencode({"query": query, "start": start, "end": end, "step": 1})
        with urlopen(f"{self.url}/api/v1/query_range?{params}", timeout=10) as answer:
            series = json.load(answer)["data"]["result"]
        return {s["metric"]["instance"]: [(float(t), float(v)) for t, v in s["values"]] for s in series}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


@contextmanager
def cluster(image: str, slots: tuple[int, ...], prometheus: bool = False) -> Iterator[tuple[Replicas, Balancer, Any]]:
    """Replicas in the given slots behind HAProxy (and Prometheus), all stopped afterwards."""
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flight-delay-scale-")))
        replicas = Replicas(image)
        stack.callback(replicas.cleanup)
        for slot in slots:
            say(f"r{slot} ready in {replicas.start(slot):.1f} s")
        balancer = Balancer(directory)
        stack.callback(balancer.stop)
        for slot in set(SLOTS) - set(slots):
            balancer.remove(slot)  # empty slots stay out until a drill puts a replica there
        wait_until(lambda: all(balancer.states()[f"r{s}"] == "UP" for s in slots), 15, "replicas in the balancer")
        monitor = None
        if prometheus:
            monitor = Prometheus(directory)
            stack.callback(monitor.stop)
        yield replicas, balancer, monitor


def lb_cost(args: argparse.Namespace) -> dict[str, Any]:
    """The reference wrk run through HAProxy to 2 replicas x 1 worker, and to 1 replica x 2 workers directly."""
    runs: dict[str, list[dict[str, Any]]] = {"haproxy, 2 replicas x 1 worker": [], "direct, 1 replica x 2 workers": []}
    for round_ in range(args.rounds):
        with cluster(args.image, (1, 2)) as _:
            wrk(LB_URL, 5, 4, 200, 1, "warm-up")
            runs["haproxy, 2 replicas x 1 worker"].append(
                parse_summary(wrk(LB_URL, args.duration, 4, 200, 1, "via haproxy"))
            )
        replicas = Replicas(args.image)
        try:
            replicas.start(1, workers=2, cpus=2)
            direct = f"http://127.0.0.1:{port(1)}"
            wrk(direct, 5, 4, 200, 1, "warm-up")
            runs["direct, 1 replica x 2 workers"].append(parse_summary(wrk(direct, args.duration, 4, 200, 1, "direct")))
        finally:
            replicas.cleanup()
        say(f"round {round_ + 1}: " + ", ".join(f"{k}: {v[-1]['requests_per_s']:,.0f} req/s" for k, v in runs.items()))
    via, direct_runs = runs.values()
    return {
        "duration_s": args.duration,
        "runs": runs,
        "ratio_per_round": [
            round(a["requests_per_s"] / b["requests_per_s"], 3) for a, b in zip(via, direct_runs, strict=True)
        ],
        "failed": sum(failures(run) for run in via + direct_runs),
    }


def utilization(args: argparse.Namespace) -> dict[str, Any]:
    """One replica, 1 worker, 1 CPU: its CPU use (share of the core) and p99 at growing load."""
    points = []
    replicas = Replicas(args.image)
    try:
        replicas.start(1)
        url, name = f"http://127.0.0.1:{port(1)}", replicas.running[1]
        wrk(url, 5, 2, 8, 1, "warm-up")
        for connections in (1, 2, 4, 8, 16, 32, 64):
            before = cpu_seconds(name)
            summary = parse_summary(
                wrk(url, args.duration, min(connections, 4), connections, 1, f"{connections} connections")
            )
            used = (cpu_seconds(name) - before) / summary["duration_s"]
            points.append({"connections": connections, "cpu_utilization": round(used, 3),
                           "requests_per_s": summary["requests_per_s"], "p99_ms": summary["latency_ms"]["p99"],
                           "p50_ms": summary["latency_ms"]["p50"], "failed": failures(summary)})  # fmt: skip
            say(f"{connections} connections: CPU {used:.0%}, p99 {summary['latency_ms']['p99']:.1f} ms")
    finally:
        replicas.cleanup()
    plot_utilization(points, RESULTS / "utilization.png")
    return {"duration_s": args.duration, "points": points}


def cpu_seconds(container: str) -> float:
    """CPU seconds the container has used (cgroup v2 cpu.stat)."""
    long_id = subprocess.run(
        [*DOCKER, "inspect", "-f", "{{.Id}}", container], check=True, capture_output=True, text=True
    ).stdout.strip()
    for stat in Path("/sys/fs/cgroup").glob(f"**/*{long_id}*/cpu.stat"):
        usage = next(line for line in stat.read_text().splitlines() if line.startswith("usage_usec"))
        return int(usage.split()[1]) / 1e6
    sys.exit(f"no cgroup cpu.stat for {container}")


def replace_all(
    replicas: Replicas, balancer: Balancer, new_image: str, log: list[dict[str, Any]], start: float
) -> None:
    """Replace r1 and r2 by r3 and r4 one at a time, as a RollingUpdate with maxSurge 1, maxUnavailable 0."""
    for old, new in ((1, 3), (2, 4)):
        at = lambda: round(time.monotonic() - start, 2)  # noqa: E731
        log.append({"t_s": at(), "event": f"r{new} starting ({new_image})"})
        balancer.add(new)
        seconds = replicas.start(new, image=new_image)
        wait_until(lambda: balancer.states()[f"r{new}"] == "UP", 15, f"r{new} in the balancer")  # noqa: B023
        log.append({"t_s": at(), "event": f"r{new} ready in {seconds:.1f} s and in the balancer"})
        balancer.remove(old)
        log.append({"t_s": at(), "event": f"r{old} out of the balancer; preStop {PRESTOP_S} s"})
        time.sleep(PRESTOP_S)
        log.append({"t_s": at(), "event": f"r{old} SIGTERM"})
        log.append({"t_s": at(), "event": f"r{old} exited {replicas.terminate(old):.1f} s after SIGTERM"})


def rollout(args: argparse.Namespace, new_image: str) -> dict[str, Any]:
    """Both replicas replaced under load from the accounting client; every request's outcome and answer."""
    log: list[dict[str, Any]] = []
    with cluster(args.image, (1, 2), prometheus=True) as (replicas, balancer, monitor):
        old_answer = post_example(LB_URL)
        load = BackgroundLoad(f"{LB_URL}/v1/prediction", args.connections, EXAMPLE_REQUEST)
        wall_start, start = time.time(), time.monotonic()
        time.sleep(10)
        replace_all(replicas, balancer, new_image, log, start)
        time.sleep(10)
        counts = load.stop()
        wall_end = time.time()
        new_answer = post_example(LB_URL)
        time.sleep(2)  # the last scrape
        rates = monitor.rates(wall_start, wall_end)
        card = json.load(urlopen(f"{LB_URL}/v1/model", timeout=5))
    answers = {
        "old model": load.bodies[old_answer],
        "new model": load.bodies[new_answer] if new_answer != old_answer else 0,
    }
    answers["neither"] = sum(load.bodies.values()) - sum(answers.values())
    plot_traffic(rates, wall_start, log, RESULTS / f"{args.drill}.png", args.drill)
    received = sum(n for outcome, n in counts.items() if outcome.isdigit())
    return {
        "connections": args.connections,
        "seconds": round(wall_end - wall_start, 1),
        "outcomes": dict(counts),
        "requests": sum(counts.values()),
        "failed": sum(counts.values()) - counts["200"],
        "answers_by_model": answers,
        "answers_received": received,
        "model_after": card["tag"],
        "events": log,
    }


def post_example(url: str) -> bytes:
    """The body a replica answers EXAMPLE_REQUEST with."""
    from urllib.request import Request

    request = Request(
        f"{url}/v1/prediction", data=json.dumps(EXAMPLE_REQUEST).encode(), headers={"Content-Type": "application/json"}
    )
    with urlopen(request, timeout=5) as answer:
        return bytes(answer.read())


def rolling_update(args: argparse.Namespace) -> dict[str, Any]:
    return rollout(args, args.image)


def model_rollout(args: argparse.Namespace) -> dict[str, Any]:
    if not args.new_image:
        sys.exit("model-rollout needs --new-image, an image built with a newly trained model")
    return {"old_image": args.image, "new_image": args.new_image, **rollout(args, args.new_image)}


def sigkill(args: argparse.Namespace) -> dict[str, Any]:
    """SIGKILL one of two replicas under load: failed requests, time out of the balancer, time back."""
    with cluster(args.image, (1, 2)) as (replicas, balancer, _):
        load = BackgroundLoad(f"{LB_URL}/v1/prediction", args.connections, EXAMPLE_REQUEST)
        time.sleep(10)
        replicas.kill(1)
        out = wait_until(lambda: balancer.states()["r1"].startswith("DOWN"), 30, "r1 out of the balancer", step=0.05)
        back = wait_until(lambda: ready(f"http://127.0.0.1:{port(1)}"), 90, "r1 restarted") + out
        serving = wait_until(lambda: balancer.states()["r1"] == "UP", 30, "r1 back in the balancer", step=0.05) + back
        time.sleep(10)
        counts = load.stop()
    return {
        "connections": args.connections,
        "outcomes": dict(counts),
        "requests": sum(counts.values()),
        "failed": sum(counts.values()) - counts["200"],
        "seconds_until_out_of_balancer": round(out, 2),
        "seconds_until_restarted_and_ready": round(back, 2),
        "seconds_until_serving_again": round(serving, 2),
    }


def plot_traffic(
    rates: dict[str, list[tuple[float, float]]], start: float, log: list[dict[str, Any]], path: Path, title: str
) -> None:
    """Requests per second of each replica over time, with the rollout's events."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5))
    for instance, points in sorted(rates.items()):
        slot = int(instance.rsplit(":", 1)[1]) - 3100
        axes.plot([t - start for t, _ in points], [v for _, v in points], label=f"r{slot} ({instance})")
    for event in log:
        if "SIGTERM" in event["event"] or "in the balancer" in event["event"]:
            axes.axvline(event["t_s"], color="grey", linestyle=":", linewidth=0.8)
    axes.set(xlabel="seconds", ylabel="requests/s to /v1/prediction (Prometheus, rate over 3 s)",
             title=f"{title}: per-replica traffic (dotted: new replica in, old one SIGTERM)")  # fmt: skip
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_utilization(points: list[dict[str, Any]], path: Path) -> None:
    """p99 latency against CPU use of one 1-core replica."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot([p["cpu_utilization"] * 100 for p in points], [p["p99_ms"] for p in points], marker="o")
    for p in points:
        axes.annotate(f"{p['connections']} conn.", (p["cpu_utilization"] * 100, p["p99_ms"]), fontsize="x-small")
    axes.set(xlabel="CPU use of the replica, % of its 1-core limit", ylabel="p99 latency, ms",
             title="One replica (1 worker, 1 CPU) under growing load")  # fmt: skip
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


DRILLS = {
    "lb-cost": lb_cost,
    "utilization": utilization,
    "rolling-update": rolling_update,
    "model-rollout": model_rollout,
    "sigkill": sigkill,
}


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
    outcome = {
        "drill": args.drill,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "image": args.image,
        **DRILLS[args.drill](args),
    }
    (RESULTS / f"{args.drill}.json").write_text(json.dumps(outcome, indent=2) + "\n")
    (RESULTS / f"{args.drill}.md").write_text(markdown(outcome))
    print(json.dumps(outcome, indent=2))


def markdown(outcome: dict[str, Any]) -> str:
    """The drill's figures as a Markdown list, its events as a table."""
    lines = [
        f"# Scale drill: {outcome['drill']}",
        "",
        f"`python loadtest/scale.py {outcome['drill']}`, {outcome['date']}",
        "",
    ]
    for key, value in outcome.items():
        if key not in ("drill", "date", "events", "runs", "points"):
            lines.append(f"- {key.replace('_', ' ')}: {json.dumps(value) if isinstance(value, dict | list) else value}")
    for run_name, runs in outcome.get("runs", {}).items():
        lines.append(
            f"- {run_name}: "
            + ", ".join(
                f"{r['requests']:,} requests ({r['requests_per_s']:,.0f} req/s, p99 {r['latency_ms']['p99']:.1f} ms)"
                for r in runs
            )
        )
    if points := outcome.get("points"):
        lines += ["", "| connections | CPU use | req/s | p50 ms | p99 ms | failed |", "|---:|---:|---:|---:|---:|---:|"]
        lines += [
            f"| {p['connections']} | {p['cpu_utilization']:.0%} | {p['requests_per_s']:,.0f} | {p['p50_ms']:.1f} | "
            f"{p['p99_ms']:.1f} | {p['failed']} |"
            for p in points
        ]
    if events := outcome.get("events"):
        lines += ["", "| t (s) | event |", "|---:|---|"] + [f"| {e['t_s']} | {e['event']} |" for e in events]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
