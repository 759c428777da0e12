"""Starting the servers the drills and the tests measure: the service, the baselines, a git revision's code."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import psutil

from loadtest.probes import ready
from loadtest.results import say

PROJECT_DIR = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 90
BENTOML_SERVE = [sys.executable, "-m", "bentoml", "serve"]
SERVERS = {
    "service": [*BENTOML_SERVE, "service:FlightDelay", "--host", "127.0.0.1", "--port"],
    "baseline": [sys.executable, "-m", "loadtest.apps", "baseline", "--port"],
    "ceiling": [sys.executable, "-m", "loadtest.apps", "ceiling", "--port"],
    # make peers' targets: their packages are in requirements-peers.txt
    "fastapi": [sys.executable, "-m", "loadtest.apps", "fastapi", "--port"],
    "litserve": [sys.executable, "-m", "loadtest.litserve_peer", "--port"],
    "bentoml": [*BENTOML_SERVE, "loadtest.bentoml_peer:PlainBentoML", "--host", "127.0.0.1", "--port"],
}
PEERS = ("fastapi", "litserve", "bentoml")
READY_PATHS = {"litserve": "/health"}  # every other target answers /readyz, as BentoML does
WORKER_MARK = "_bentoml_impl.worker.service"
ADDRESS_TRIES = 3
ADDRESS_TAKEN = b"address already in use"  # in a failed start's output, lowercased (uvicorn's and zmq's words)
T = TypeVar("T")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(
    url: str, process: subprocess.Popen[bytes] | None = None, seconds: float = STARTUP_SECONDS, path: str = "/readyz"
) -> None:
    """Poll `path` until it answers 200; RuntimeError if the process died first or time ran out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before it was ready")
        if ready(url, path):
            return
        time.sleep(0.3)
    raise RuntimeError(f"{url}{path} did not answer 200 within {seconds} s")


def service_workers(pid: int) -> dict[int, psutil.Process]:
    """The service's worker processes by PID."""
    children = psutil.Process(pid).children(recursive=True)
    return {child.pid: child for child in children if WORKER_MARK in " ".join(child.cmdline())}


@contextmanager
def checkout(revision: str | None) -> Iterator[Path]:
    """This checkout, or the project's code at a git revision in a temporary worktree (removed afterwards).

    Either runs on the same model store, so a code change can be measured against the code before it.
    """
    if revision is None:
        yield PROJECT_DIR
        return
    folder = Path(tempfile.mkdtemp(prefix="flight-delay-code-")) / "checkout"
    git = ["git", "-C", str(PROJECT_DIR), "worktree"]
    subprocess.run([*git, "add", "--detach", str(folder), revision], check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run([*git, "remove", "--force", str(folder)], check=True)


def train(data: Path, home: Path) -> str:
    """train.py on the CSV `data` into model store `home`; what it printed."""
    command, env = [sys.executable, "train.py", "--data", str(data)], {**os.environ, "BENTOML_HOME": str(home)}
    return subprocess.run(command, cwd=PROJECT_DIR, env=env, check=True, capture_output=True, text=True).stdout


def alternate(sides: Mapping[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Each side's run, `rounds` times in turn, in reverse order every other round (A B, B A, A B...): the
    machine's drift over the drill, and whatever a run leaves to the next, fall on every side alike
    (docs/performance.md, "Rounds in both orders")."""
    runs: dict[str, list[T]] = {name: [] for name in sides}
    for round_ in range(rounds):
        for name in list(sides)[:: 1 if round_ % 2 == 0 else -1]:
            say(f"round {round_ + 1}, {name}")
            runs[name].append(sides[name]())
    return runs


@contextmanager
def server(
    kind: str,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    code: Path = PROJECT_DIR,
    port: int | None = None,
    cpus: str | None = None,
    workers: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start one of SERVERS on `port` (default: a free one), yield its base URL and process once ready,
    stop it afterwards.

    Its output goes to log, if given; `code` is the project checkout it runs from; `cpus` pins it
    (a taskset list); `workers` sets the baselines' worker count (the service's is FLIGHT_DELAY_WORKERS).

    A start that fails because a port was taken between its choice and its bind is tried again, up
    to ADDRESS_TRIES times, on another free port: `free_port()` here and BentoML's circus (which
    reserves its two control ports, frees them and binds them later) both leave that gap, and other
    processes' outgoing connections take ports from the same range (it failed a CI run on
    2026-12-07: `zmq.error.ZMQError: Address already in use`).
    """
    with tempfile.TemporaryDirectory() as scratch:
        output_path = log or Path(scratch) / "server.log"
        for attempt in range(1, ADDRESS_TRIES + 1):
            url, process = start(kind, env, output_path, code, port or free_port(), cpus, workers)
            started = time.monotonic()
            try:
                wait_ready(url, process, path=READY_PATHS.get(kind, "/readyz"))
            except RuntimeError:
                stop(process)
                if attempt < ADDRESS_TRIES and ADDRESS_TAKEN in output_path.read_bytes().lower():
                    say(f"{kind}: a port was taken before the server bound it; starting again")
                    continue
                raise
            break
        say(f"{kind} ready in {time.monotonic() - started:.1f} s at {url}")
        try:
            yield url, process
        finally:
            stop(process)


def start(
    kind: str,
    env: dict[str, str] | None,
    log: Path,
    code: Path,
    port: int,
    cpus: str | None,
    workers: int | None,
) -> tuple[str, subprocess.Popen[bytes]]:
    """One of SERVERS started on `port`, its output in `log`: its base URL and process."""
    pinned = ["taskset", "-c", cpus] if cpus else []
    count = ["--workers", str(workers)] if workers and kind not in ("service", "bentoml") else []
    with open(log, "wb") as output:  # the child keeps its own copy of the file
        process = subprocess.Popen(
            [*pinned, *SERVERS[kind], str(port), *count],
            cwd=code,
            env={**os.environ, **(env or {})},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return f"http://127.0.0.1:{port}", process


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL if it has not exited 20 s later."""
    with suppress(ProcessLookupError):  # a drill may have stopped it already
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
