"""Replicas of the image behind HAProxy, as the Kubernetes Deployment runs them, with Prometheus beside them.

Replicas are Docker containers of the image (host network, 1 worker and 1 CPU each, slots
127.0.0.1:3101-3104) behind deploy/local/haproxy.cfg on 127.0.0.1:3100, which health-checks /readyz
as the readinessProbe does; Prometheus (deploy/local/prometheus.yml) scrapes every slot and evaluates
the project's recording rules and alerts. Needs a Docker engine (DOCKER_HOST), haproxy and prometheus.
"""

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

import httpx

from loadtest.client import BackgroundLoad
from loadtest.probes import post_example, ready
from loadtest.results import say
from loadtest.servers import PROJECT_DIR
from models.schema import EXAMPLE_REQUEST

T = TypeVar("T")
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
        os.kill(int(self.inspect(slot, "{{.State.Pid}}")), signal.SIGKILL)

    def inspect(self, slot: int, field: str) -> str:
        """A field of the replica's `docker inspect`."""
        command = [*DOCKER, "inspect", "-f", field, self.running[slot]]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()

    def cpu_stat(self, slot: int) -> Path:
        """The replica's cgroup v2 cpu.stat, looked up once: the lookup must not fall inside a measurement."""
        long_id = self.inspect(slot, "{{.Id}}")
        for stat in Path("/sys/fs/cgroup").glob(f"**/*{long_id}*/cpu.stat"):
            return stat
        sys.exit(f"no cgroup cpu.stat for {self.running[slot]}")

    def cleanup(self) -> None:
        """Remove every replica this drill started."""
        for name in self.running.values():
            subprocess.run([*DOCKER, "rm", "-f", name], capture_output=True)
        self.running.clear()


def cpu_use(stat: Path, action: Callable[[], T]) -> tuple[T, float]:
    """action()'s result, and the container's CPU use while it ran, in cores (as the HPA counts it)."""

    def seconds() -> float:
        usage = next(line for line in stat.read_text().splitlines() if line.startswith("usage_usec"))
        return int(usage.split()[1]) / 1e6

    before, started = seconds(), time.monotonic()
    result = action()
    return result, (seconds() - before) / (time.monotonic() - started)


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

    def only_first(self) -> None:
        """The other slots out (no replica there: HAProxy would count them up until two checks fail), and
        up to 15 s for the first slot's server to be UP."""
        for slot in SLOTS[1:]:
            self.remove(slot)
        deadline = time.monotonic() + 15
        while self.states().get("r1") != "UP" and time.monotonic() < deadline:
            time.sleep(0.2)

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

    def api(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """The result series of one HTTP API query."""
        return list(httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()["data"]["result"])

    def rates(self, start: float, end: float) -> dict[str, list[tuple[float, float]]]:
        """Requests per second to /v1/prediction of each replica over [start, end] (Unix time)."""
        query = 'sum by (instance) (rate(bentoml_service_request_total{endpoint="/v1/prediction"}[3s]))'
        series = self.api("query_range", query=query, start=start, end=end, step=1)
        return {s["metric"]["instance"]: [(float(t), float(v)) for t, v in s["values"]] for s in series}

    def query(self, expression: str, at: float) -> list[tuple[dict[str, str], float]]:
        """An instant query at Unix time `at`: each series' labels and value."""
        return [(s["metric"], float(s["value"][1])) for s in self.api("query", query=expression, time=at)]

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


UNKNOWN_AIRLINES = 'max_over_time(flight_delay_unknown_values_total{input="airline"}[10m])'


def rollout(
    image: str,
    new_image: str,
    connections: int,
    alongside: Callable[[Replicas, float], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """Both replicas of `image` replaced by `new_image` under load from `connections` accounting clients
    (and `alongside(replicas, start)`, which returns its own stop); every request's outcome and answer,
    the events, Prometheus's per-replica traffic and each pod's refused unknown airlines, the model after."""
    events: list[dict[str, Any]] = []
    with cluster(image, (1, 2), prometheus=True) as (replicas, balancer, monitor):
        old_answer = post_example(LB_URL)
        load = BackgroundLoad(f"{LB_URL}/v1/prediction", connections, EXAMPLE_REQUEST)
        wall_start, start = time.time(), time.monotonic()
        stop = alongside(replicas, start) if alongside else (lambda: None)
        time.sleep(10)
        replace_all(replicas, balancer, new_image, events, start)
        time.sleep(10)
        stop()
        counts = load.stop()
        wall_end = time.time()
        new_answer = post_example(LB_URL)
        time.sleep(2)  # the last scrape
        rates = monitor.rates(wall_start, wall_end)
        # 400s of an unknown airline counted by each pod; gone pods keep their last scrape
        refused = monitor.query(UNKNOWN_AIRLINES, wall_end + 2)
        card = httpx.get(f"{LB_URL}/v1/model", timeout=5).json()
    answers = {
        "old model": load.bodies[old_answer],
        "new model": load.bodies[new_answer] if new_answer != old_answer else 0,
    }
    answers["neither"] = sum(load.bodies.values()) - sum(answers.values())
    return {
        "connections": connections,
        "seconds": round(wall_end - wall_start, 1),
        "wall_start": wall_start,
        "outcomes": dict(counts),
        "requests": sum(counts.values()),
        "failed": sum(counts.values()) - counts["200"],
        "answers_by_model": answers,
        "answers_received": sum(n for outcome, n in counts.items() if outcome.isdigit()),
        "model_after": card["tag"],
        "events": events,
        "rates": rates,
        "refused": refused,
    }
