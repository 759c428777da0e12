"""Scale-out drills: replicas of the image behind HAProxy, as the Kubernetes Deployment runs them; by hand.

    python loadtest/scale.py lb-cost         # 2 replicas x 1 worker via HAProxy vs 1 x 2 workers direct
    python loadtest/scale.py utilization     # one 1-core replica: CPU use and p99 at paced rates
    python loadtest/scale.py cpu-per-request # its CPU idle and at 100 and 414 req/s, batching on and off
    python loadtest/scale.py rolling-update  # replace both replicas under load, as the Deployment does
    python loadtest/scale.py model-rollout --new-image flight-delay:NEW   # the same, to a new model
    python loadtest/scale.py sigkill         # SIGKILL one replica under load: failures, recovery
(--image sets the replicas' image, flight-delay:latest by default.)

Replicas are Docker containers of the image (host network, 1 worker and 1 CPU each, slots
127.0.0.1:3101-3104) behind deploy/local/haproxy.cfg on 127.0.0.1:3100, which health-checks
/readyz as the readinessProbe does; Prometheus (deploy/local/prometheus.yml) scrapes every slot and
evaluates the project's recording rules and alerts (loadtest/monitoring_drills.py cluster reads them).
Each drill writes loadtest/results/scale/DRILL.json and .md (and a PNG where it has a picture).
Needs a Docker engine (DOCKER_HOST), haproxy, prometheus and wrk.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit
from urllib.request import Request, urlopen

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from accounting_client import BackgroundLoad, exchange, request_bytes  # noqa: E402
from report import failures, parse_summary  # noqa: E402
from run import ready, say, wrk  # noqa: E402

from models.config import PROJECT_DIR  # noqa: E402
from models.schema import EXAMPLE_REQUEST  # noqa: E402

T = TypeVar("T")
RESULTS = HERE / "results" / "scale"
LB_URL = "http://127.0.0.1:3100"
SLOTS = (1, 2, 3, 4)  # replica rN listens on 3100 + N (deploy/local/haproxy.cfg)
PROMETHEUS_PORT = 9390
PRESTOP_S = 5  # the Deployment's preStop sleep (deploy/k8s/base/deployment.yaml)
GRACE_S = 45  # its terminationGracePeriodSeconds (both pinned by tests/test_scale.py)
DOCKER = ["/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"]  # Debian's client, as container/*.sh


def port(slot: int) -> int:
    """The port of replica slot rN."""
    return 3100 + slot


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

    def start(
        self, slot: int, image: str | None = None, workers: int = 1, cpus: int = 1, env: tuple[str, ...] = ()
    ) -> float:
        """Start a replica in slot (env: extra NAME=value settings); seconds until its /readyz answers."""
        name = f"flight-delay-scale-r{slot}"
        subprocess.run([*DOCKER, "rm", "-f", name], capture_output=True)
        started = time.monotonic()
        subprocess.run(
            [*DOCKER, "run", "-d", "--name", name, "--network=host", f"--cpus={cpus}",
             f"--memory={128 + 320 * workers}m",  # the Deployment's limit rule (deploy/k8s/base/deployment.yaml)
             "--read-only", "--tmpfs", "/tmp", "-e", "BENTOML_HOME=/tmp/bentoml",  # its read-only root and emptyDir
             "--restart=on-failure",  # the kubelet restarts a container whose process died
             "-e", f"BENTOML_PORT={port(slot)}", "-e", f"FLIGHT_DELAY_WORKERS={workers}",
             *(f"--env={setting}" for setting in env), image or self.image],
            check=True, capture_output=True,
        )  # fmt: skip
        self.running[slot] = name
        wait_until(lambda: ready(f"http://127.0.0.1:{port(slot)}"), 90, f"replica r{slot} ready")
        return time.monotonic() - started

    def terminate(self, slot: int) -> float:
        """SIGTERM, as the kubelet sends after preStop; seconds until the container exited. The exited
        container is then removed, as its pod is: cleanup() no longer knows it."""
        started = time.monotonic()
        name = self.running.pop(slot)
        subprocess.run([*DOCKER, "stop", "-t", str(GRACE_S), name], check=True, capture_output=True)
        seconds = time.monotonic() - started
        subprocess.run([*DOCKER, "rm", name], capture_output=True)
        return seconds

    def kill(self, slot: int) -> None:
        """SIGKILL the replica's main process (as an OOM kill would), so its restart policy brings it back."""
        pid = subprocess.run(
            [*DOCKER, "inspect", "-f", "{{.State.Pid}}", self.running[slot]], check=True, capture_output=True, text=True
        ).stdout.strip()
        os.kill(int(pid), signal.SIGKILL)

    def cleanup(self) -> None:
        """Remove every replica this drill started."""
        for name in self.running.values():
            subprocess.run([*DOCKER, "rm", "-f", name], capture_output=True)
        self.running.clear()


class Balancer:
    """HAProxy with deploy/local/haproxy.cfg, and its runtime API."""

    SERVERS = tuple(f"r{slot}" for slot in SLOTS)

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

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's state and counters of each replica (show stat: status, econ connection errors,
        wretr retries, wredis redispatches...), by server name."""
        rows = self.command("show stat").splitlines()
        header = rows[0].lstrip("# ").split(",")
        servers = (dict(zip(header, row.split(","), strict=False)) for row in rows[1:] if row)
        return {s["svname"]: s for s in servers if s["pxname"] == "replicas" and s["svname"] in self.SERVERS}

    def states(self) -> dict[str, str]:
        """Each replica slot's state as HAProxy sees it: UP, DOWN, MAINT..."""
        return {name: server["status"] for name, server in self.stats().items()}

    def remove(self, slot: int) -> None:
        """Take a replica out, as the endpoints controller does when its pod starts terminating."""
        self.command(f"set server replicas/r{slot} state maint")

    def add(self, slot: int) -> None:
        """Let HAProxy's health check put a slot in service once its /readyz answers, as a new pod's readiness.

        Marked down right after leaving maintenance: HAProxy would otherwise count it up ("UP 1/2")
        until its checks fail, and send it requests before it listens.
        """
        self.command(f"set server replicas/r{slot} state ready")
        self.command(f"set server replicas/r{slot} health down")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Prometheus:
    """Prometheus with deploy/local/prometheus.yml (and the project's rules), for the traffic picture."""

    def __init__(self, directory: Path) -> None:
        self.url = f"http://127.0.0.1:{PROMETHEUS_PORT}"
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={PROJECT_DIR / 'deploy/local/prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'prometheus'}", f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_until(lambda: ready(self.url, "/-/ready"), 30, "prometheus ready")
        except SystemExit:
            self.stop()
            raise

    def rates(self, start: float, end: float) -> dict[str, list[tuple[float, float]]]:
        """Requests per second to /v1/prediction of each replica over [start, end] (Unix time)."""
        query = 'sum by (instance) (rate(bentoml_service_request_total{endpoint="/v1/prediction"}[3s]))'
        params = urlencode({"query": query, "start": start, "end": end, "step": 1})
        with urlopen(f"{self.url}/api/v1/query_range?{params}", timeout=10) as answer:
            series = json.load(answer)["data"]["result"]
        return {s["metric"]["instance"]: [(float(t), float(v)) for t, v in s["values"]] for s in series}

    def query(self, expression: str, at: float) -> list[tuple[dict[str, str], float]]:
        """An instant query at Unix time `at`: each series' labels and value."""
        params = urlencode({"query": expression, "time": at})
        with urlopen(f"{self.url}/api/v1/query?{params}", timeout=10) as answer:
            series = json.load(answer)["data"]["result"]
        return [(s["metric"], float(s["value"][1])) for s in series]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


@contextmanager
def cluster(
    image: str, slots: tuple[int, ...], prometheus: bool = False, env: tuple[str, ...] = ()
) -> Iterator[tuple[Replicas, Balancer, Any]]:
    """Replicas in the given slots (env: extra NAME=value settings) behind HAProxy (and Prometheus), all
    stopped afterwards."""
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flight-delay-scale-")))
        replicas = Replicas(image)
        stack.callback(replicas.cleanup)
        for slot in slots:
            say(f"r{slot} ready in {replicas.start(slot, env=env):.1f} s")
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
    """One replica (1 worker, 1 CPU): its CPU use, as the HPA reads it, and p99 at paced request rates.

    Paced (open-loop) load, so the rate, not the number of connections, sets the CPU use; latency is
    counted from when each request was due, so a queue shows in it. The rates are shares of the
    replica's capacity, measured first with wrk at 64 connections.
    """
    points = []
    replicas = Replicas(args.image)
    try:
        replicas.start(1)
        url, stat = f"http://127.0.0.1:{port(1)}", cpu_stat(replicas.running[1])
        wrk(url, 5, 2, 8, 1, "warm-up")
        capacity = parse_summary(wrk(url, args.duration, 4, 64, 1, "capacity"))["requests_per_s"]
        say(f"capacity: {capacity:,.0f} req/s")
        for share in (0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            rate = round(capacity * share)
            (latencies, failed), used = cpu_use(stat, lambda: asyncio.run(paced(url, rate, args.duration)))  # noqa: B023
            latencies.sort()
            p50, p99 = (latencies[int(q * (len(latencies) - 1))] * 1000 for q in (0.5, 0.99))
            points.append({"share_of_capacity": share, "requests_per_s": rate, "cpu_utilization": round(used, 3),
                           "p50_ms": round(p50, 1), "p99_ms": round(p99, 1), "failed": failed})  # fmt: skip
            say(f"{rate:,} req/s ({share:.0%}): CPU {used:.0%}, p50 {p50:.1f} ms, p99 {p99:.1f} ms, {failed} failed")
    finally:
        replicas.cleanup()
    plot_utilization(points, RESULTS / "utilization.png")
    return {"duration_s": args.duration, "capacity_requests_per_s": capacity, "points": points}


def cpu_per_request(args: argparse.Namespace) -> dict[str, Any]:
    """CPU use of one 1-core replica idle and at low paced rates, with adaptive batching on and off."""
    runs = []
    for settings in ((), ("FLIGHT_DELAY_BATCHING=false",)):
        replicas = Replicas(args.image)
        try:
            replicas.start(1, env=settings)
            url, stat = f"http://127.0.0.1:{port(1)}", cpu_stat(replicas.running[1])
            time.sleep(3)
            run: dict[str, Any] = {"settings": list(settings) or ["as shipped"]}
            run["idle"] = round(cpu_use(stat, lambda: time.sleep(10))[1], 3)
            for rate in (100, 414):
                (_latencies, failed), used = cpu_use(stat, lambda: asyncio.run(paced(url, rate, 10)))  # noqa: B023
                run[f"{rate}_req_s"] = {
                    "cpu_utilization": round(used, 3),
                    "cpu_ms_per_request": round(used / rate * 1000, 2),
                    "failed": failed,
                }
            say(f"{run}")
            runs.append(run)
        finally:
            replicas.cleanup()
    return {"seconds_each": 10, "runs": runs}


async def paced(url: str, rate: float, seconds: int, connections: int = 64) -> tuple[list[float], int]:
    """EXAMPLE_REQUEST at a fixed rate over keep-alive connections: seconds from due to answered, and failures."""
    parts = urlsplit(url)
    host, number = parts.hostname or "127.0.0.1", parts.port or 80
    request = request_bytes(host, number, "/v1/prediction", EXAMPLE_REQUEST)
    loop = asyncio.get_running_loop()
    start, total, taken = loop.time() + 0.5, int(rate * seconds), 0
    latencies: list[float] = []
    failed = 0

    async def client() -> None:
        nonlocal taken, failed
        streams = await asyncio.open_connection(host, number)
        while taken < total:
            due = start + taken / rate
            taken += 1
            await asyncio.sleep(max(0.0, due - loop.time()))
            outcome, usable, _ = await exchange(*streams, request)
            latencies.append(loop.time() - due)
            failed += outcome != "200"
            if not usable:
                streams[1].close()
                streams = await asyncio.open_connection(host, number)
        streams[1].close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return latencies, failed


def cpu_stat(container: str) -> Path:
    """The container's cgroup v2 cpu.stat, looked up once: the lookup must not fall inside a measurement."""
    long_id = subprocess.run(
        [*DOCKER, "inspect", "-f", "{{.Id}}", container], check=True, capture_output=True, text=True
    ).stdout.strip()
    for stat in Path("/sys/fs/cgroup").glob(f"**/*{long_id}*/cpu.stat"):
        return stat
    sys.exit(f"no cgroup cpu.stat for {container}")


def cpu_use(stat: Path, action: Callable[[], T]) -> tuple[T, float]:
    """action()'s result, and the container's CPU use while it ran, in cores (as the HPA counts it)."""

    def seconds() -> float:
        usage = next(line for line in stat.read_text().splitlines() if line.startswith("usage_usec"))
        return int(usage.split()[1]) / 1e6

    before, started = seconds(), time.monotonic()
    result = action()
    return result, (seconds() - before) / (time.monotonic() - started)


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
        seconds = replicas.terminate(old)
        log.append({"t_s": at(), "event": f"r{old} exited {seconds:.1f} s after SIGTERM"})


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
    """SIGKILL one of two replicas under load: failed requests, the balancer's view, time until it serves again.

    The container is restarted in place, as the kubelet restarts a container whose process died.
    """
    with cluster(args.image, (1, 2)) as (replicas, balancer, _):
        load = BackgroundLoad(f"{LB_URL}/v1/prediction", args.connections, EXAMPLE_REQUEST)
        time.sleep(10)
        before = balancer.stats()["r1"]
        killed, states = time.monotonic(), []
        replicas.kill(1)
        url = f"http://127.0.0.1:{port(1)}"
        while time.monotonic() - killed < 60:  # the balancer's state of r1 every 50 ms, until it serves again
            state, answers = balancer.states()["r1"], ready(url)
            states.append((round(time.monotonic() - killed, 2), state, answers))
            if answers and state == "UP" and any(not up for _, _, up in states):
                break
            time.sleep(0.05)
        time.sleep(10)
        counts = load.stop()
        after = balancer.stats()["r1"]
    gone = next((i for i, (_, _, up) in enumerate(states) if not up), len(states))  # r1 stopped answering
    back = next((t for t, _, up in states[gone:] if up), None)  # and answered /readyz again
    return {
        "connections": args.connections,
        "outcomes": dict(counts),
        "requests": sum(counts.values()),
        "failed": sum(counts.values()) - counts["200"],
        "seconds_until_balancer_saw_a_failed_check": next((t for t, state, _ in states if state != "UP"), None),
        "seconds_until_out_of_balancer": next((t for t, state, _ in states if state.startswith("DOWN")), None),
        "seconds_until_restarted_and_ready": back,
        "seconds_until_serving_again": states[-1][0],
        "r1_connection_errors": int(after["econ"] or 0) - int(before["econ"] or 0),
        "r1_requests_redispatched": int(after["wredis"] or 0) - int(before["wredis"] or 0),
        "r1_requests_retried": int(after["wretr"] or 0) - int(before["wretr"] or 0),
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
    """p99 latency against CPU use of one 1-core replica, at paced rates."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot([p["cpu_utilization"] * 100 for p in points], [p["p99_ms"] for p in points], marker="o")
    for p in points:
        axes.annotate(f"{p['requests_per_s']:,} req/s", (p["cpu_utilization"] * 100, p["p99_ms"]), fontsize="x-small")
    axes.set(xlabel="CPU use of the replica, % of its 1-core request", ylabel="p99 latency from due time, ms",
             title="One replica (1 worker, 1 CPU), paced load")  # fmt: skip
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


DRILLS = {
    "lb-cost": lb_cost,
    "utilization": utilization,
    "cpu-per-request": cpu_per_request,
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
        if key not in ("drill", "date", "events", "runs", "points") or (key == "runs" and isinstance(value, list)):
            lines.append(f"- {key.replace('_', ' ')}: {json.dumps(value) if isinstance(value, dict | list) else value}")
    for run_name, runs in (outcome["runs"] if isinstance(outcome.get("runs"), dict) else {}).items():
        lines.append(
            f"- {run_name}: "
            + ", ".join(
                f"{r['requests']:,} requests ({r['requests_per_s']:,.0f} req/s, p99 {r['latency_ms']['p99']:.1f} ms)"
                for r in runs
            )
        )
    if points := outcome.get("points"):
        lines += [
            "",
            "| share of capacity | req/s | CPU use | p50 ms | p99 ms | failed |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {p['share_of_capacity']:.0%} | {p['requests_per_s']:,} | {p['cpu_utilization']:.0%} | "
            f"{p['p50_ms']:.1f} | {p['p99_ms']:.1f} | {p['failed']} |"
            for p in points
        ]
    if events := outcome.get("events"):
        lines += ["", "| t (s) | event |", "|---:|---|"] + [f"| {e['t_s']} | {e['event']} |" for e in events]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
