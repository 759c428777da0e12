"""The load-test reports: wrk's summary line, the verdict against the bar, the report files, the peers' table."""

import argparse
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from loadtest import peers, run, servers
from loadtest.peers import markdown as peers_markdown
from loadtest.servers import PROJECT_DIR
from loadtest.stats import tree_memory_mib
from loadtest.wrk import BAR_REQUESTS, LONE, SHAPES, failures, markdown, parse_summary, plot, verdict

SAMPLE = Path(__file__).parent / "data" / "wrk_service_sample.txt"  # a real wrk run of script.lua


@pytest.fixture
def summary() -> dict[str, Any]:
    """The summary of the captured wrk run."""
    return parse_summary(SAMPLE.read_text())


def test_alternate_runs_the_sides_in_reverse_order_every_other_round() -> None:
    calls: list[str] = []

    def run(name: str) -> int:
        calls.append(name)
        return len(calls)

    sides = {name: partial(run, name) for name in "abc"}
    assert servers.alternate(sides, 3) == {"a": [1, 6, 7], "b": [2, 5, 8], "c": [3, 4, 9]}
    assert "".join(calls) == "abccbaabc"


def test_parse_summary_reads_script_json_line(summary: dict[str, Any]) -> None:
    assert summary["requests"] == 13_660
    assert summary["latency_ms"]["p99"] == pytest.approx(326.0, abs=0.1)
    assert set(summary["latency_ms"]) == {"mean", "p50", "p90", "p99", "p99_9", "max"}
    assert set(summary["errors"]) == {"connect", "read", "write", "timeout", "status"}


def test_parse_summary_without_json_line_is_value_error() -> None:
    with pytest.raises(ValueError, match="no JSON summary"):
        parse_summary("Running 10s test @ http://127.0.0.1:3000\nRequests/sec: 10.0\n")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"requests": BAR_REQUESTS}, "PASS"),
        ({"requests": BAR_REQUESTS - 1}, "FAIL: 49,999 requests"),
        ({"requests": 10 * BAR_REQUESTS, "non_2xx": 1}, "FAIL: 1 failed"),
        ({"requests": 10 * BAR_REQUESTS, "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 3, "status": 0}},
         "FAIL: 3 failed"),
    ],
)  # fmt: skip
def test_verdict_needs_bar_and_no_failure(summary: dict[str, Any], changes: dict[str, Any], expected: str) -> None:
    assert verdict({**summary, **changes}).startswith(expected)


def test_failures_counts_non_2xx_and_socket_errors_not_status(summary: dict[str, Any]) -> None:
    errors = {"connect": 1, "read": 2, "write": 3, "timeout": 4, "status": 99}
    assert failures({**summary, "non_2xx": 5, "errors": errors}) == 15


def test_markdown_gives_the_run_and_its_verdict(summary: dict[str, Any]) -> None:
    table = markdown(summary, "title", "cmd")
    assert "| service | 13,660 |" in table
    assert "Verdict for service: FAIL" in table


@pytest.fixture
def drills(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, list[Any]]:
    """loadtest.run and loadtest.peers writing into tmp_path, with wrk, the servers, the open-loop client
    and the answers' check stood in for: each wrk run (url, threads, connections, flights, new
    connections) and each URL given the open-loop curve, in order."""
    calls: dict[str, list[Any]] = {"wrk": [], "curve": []}

    def fake_wrk(url: str, seconds: int, threads: int, connections: int, flights: int, label: str,
                 new_connections: bool = False) -> str:  # fmt: skip
        calls["wrk"].append((url, threads, connections, flights, new_connections))
        return SAMPLE.read_text()

    @contextmanager
    def fake_server(kind: str, **options: Any) -> Iterator[tuple[str, Any]]:
        yield f"http://{kind}", SimpleNamespace(pid=1)

    def fake_curve(url: str, pid: int, rates: list[int], *args: Any) -> list[dict[str, Any]]:
        calls["curve"].append(url)
        return [{"latency_ms": {"p50": 1.0, "p99": 2.0}, "ok": 1, "due": 1} for _ in rates]

    for module in (run, peers):
        monkeypatch.setattr(module, "wrk", fake_wrk)
        monkeypatch.setattr(module, "server", fake_server)
    monkeypatch.setattr(run.shutil, "which", lambda name: f"/usr/bin/{name}")  # wrk itself is stood in for
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    monkeypatch.setattr(run, "plot", lambda *args: None)
    monkeypatch.setattr(peers, "RESULTS", tmp_path / "peers")
    monkeypatch.setattr(peers, "fixed_rates", fake_curve)
    monkeypatch.setattr(peers, "sample_answers", lambda url: [])
    monkeypatch.setattr(peers, "tree_memory_mib", lambda pid: 0.0)
    monkeypatch.setattr(peers, "tree_cpu_s", lambda pid: 0.0)
    return calls


def test_make_loadtest_runs_every_shape_on_every_target(drills: dict[str, list[Any]], tmp_path: Path) -> None:
    """make loadtest's commands (make -n): the reference test, then each target in every shape of
    loadtest.wrk.SHAPES, and the open-loop curve on each target that serves the model."""
    # -W: as if the requirements had just changed, so the install's line is there however .venv stands
    commands = subprocess.run(["make", "-n", "--no-print-directory", "-W", "requirements-dev.txt", "loadtest"],
                              cwd=PROJECT_DIR, capture_output=True, text=True, check=True).stdout  # fmt: skip
    short = ["--warmup", "0", "--duration", "1"]
    drilled = []
    for words in map(shlex.split, commands.splitlines()):
        if words[1:3] == ["-m", "loadtest.run"]:
            run.main([*words[3:], *short, "--name", "reference"])
        elif words[1:3] == ["-m", "loadtest.peers"]:
            peers.main([*words[3:], *short, "--rounds", "1", "--curve-duration", "1"])
        drilled += words[2:3] if words[1:2] == ["-m"] else []
    assert drilled == ["pip", "loadtest.run", "loadtest.peers"]
    measured = {(url, connections, flights, new) for url, _threads, connections, flights, new in drills["wrk"]}
    shapes = {(s.connections, s.flights, s.new_connections) for s in SHAPES}
    assert measured == {(f"http://{kind}", *shape) for kind in ("service", "baseline", "ceiling") for shape in shapes}
    assert drills["curve"] == ["http://service", "http://baseline"]
    assert "| service | 13,660 |" in (tmp_path / "reference" / "report.md").read_text()
    report = next((tmp_path / "peers").glob("*.md")).read_text()
    assert "| shape | service | baseline | ceiling | lead over the best peer | share of the ceiling |" in report
    assert all(f"| {shape.name} | " in report for shape in SHAPES)


def test_make_peers_installs_the_peers_and_passes_its_args(drills: dict[str, list[Any]], tmp_path: Path) -> None:
    """make peers (make -n): the peers' requirements, then loadtest.peers with ARGS, so a second run on a day
    can name its result."""
    args = "ARGS=--targets service --shapes lone --rates --name second-run"
    commands = subprocess.run(["make", "-n", "--no-print-directory", "peers", args], cwd=PROJECT_DIR,
                              capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
    assert "requirements-peers.txt" in commands[-2]
    words = shlex.split(commands[-1])
    assert words[1:3] == ["-m", "loadtest.peers"]
    peers.main([*words[3:], "--warmup", "0", "--duration", "1", "--rounds", "1"])
    assert {url for url, *_ in drills["wrk"]} == {"http://service"}
    assert (tmp_path / "peers" / "second-run.md").exists()


def test_peers_runs_only_the_targets_and_shapes_asked_for(drills: dict[str, list[Any]], tmp_path: Path) -> None:
    argv = ["--targets", "service", "fastapi", "--shapes", "flights100", "lone", "--rates", "--warmup", "0"]
    peers.main([*argv, "--duration", "1", "--rounds", "2", "--name", "chosen"])
    shapes = (next(s for s in SHAPES if s.key == "flights100"), LONE)
    expected = {(f"http://{target}", s.connections, s.flights, s.new_connections)
                for target in ("service", "fastapi") for s in shapes}  # fmt: skip
    assert {(url, connections, flights, new) for url, _t, connections, flights, new in drills["wrk"]} == expected
    assert len(drills["wrk"]) == 2 * 2 * 2 * 2  # targets x shapes x rounds x (warm-up, measured)
    assert {threads for _url, threads, connections, *_ in drills["wrk"] if connections == 1} == {1}  # wrk: <= -c
    assert drills["curve"] == []  # --rates with no rate: no open-loop curve
    report = (tmp_path / "peers" / "chosen.md").read_text()
    assert "| shape | service | fastapi | lead over the best peer |\n" in report
    assert f"| {LONE.name} | " in report and "Open loop" not in report


def test_ablation_measures_a_revision_in_every_shape() -> None:
    from loadtest.ablation import CONFIGS, NEW_CONNECTIONS

    code_rows = {(connections, flights, NEW_CONNECTIONS in knob) for knob, value, _env, connections, flights in CONFIGS
                 if value == "<revision>"}  # fmt: skip
    assert code_rows == {(s.connections, s.flights, s.new_connections) for s in SHAPES}


def test_ablation_refuses_a_knob_it_does_not_have(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/performance.md named knobs renamed since: the run measured the default alone, silently."""
    from loadtest import ablation

    with pytest.raises(SystemExit) as exit_code:
        ablation.main(["--only", "monitoring (serving/monitoring.py)", "workers"])
    assert exit_code.value.code == 2
    assert "--only: no knob 'monitoring (serving/monitoring.py)'; the knobs: " in capsys.readouterr().err


def test_plot_writes_png(summary: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    plot({"service": summary, "ceiling": summary}, path, "title")
    assert path.read_bytes().startswith(b"\x89PNG")


def peer_run(summary: dict[str, Any], requests_per_s: float, p99: float, memory_mib: float) -> dict[str, Any]:
    return {**summary, "requests_per_s": requests_per_s, "latency_ms": {"p99": p99}, "memory_mib": memory_mib,
            "cpu_us_per_request": memory_mib + 100}  # fmt: skip


def test_a_peers_run_gives_the_targets_cpu_time_a_request(
    drills: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU time the target's processes used during the measured wrk run (not its warm-up), per request."""
    used = iter([4.0, 4.0 + 13_660 * 250e-6])  # before and after the measured run; the sample has 13,660 requests
    monkeypatch.setattr(peers, "tree_cpu_s", lambda pid: next(used))
    args = argparse.Namespace(warmup=0, duration=1)
    assert peers.run_shape("http://service", 1, LONE, args, "lone")["cpu_us_per_request"] == 250


def peers_outcome(summary: dict[str, Any], rates: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    """A peers outcome of two rounds in one shape, named "shape", at each target's two rates, and one open-loop rate."""
    closed = {
        "shape": {target: [peer_run(summary, rate, 5, 200), peer_run(summary, other, 7, 210)]
                  for target, (rate, other) in rates.items()}
    }  # fmt: skip
    open_run = {"latency_ms": {"p50": 1.0, "p99": 2.0}, "ok": 99, "due": 100}
    return {
        "date": "2026-12-05", "command": "python -m loadtest.peers", "machine": "here", "rounds": 2,
        "duration_s": 15, "warmup_s": 3, "targets": list(rates), "closed_loop": closed, "rates": [500],
        "curve_duration_s": 10, "open_loop": {"service": [open_run]},
    }  # fmt: skip


def test_peers_report_gives_the_lead_over_the_best_peer_and_the_share_of_the_ceiling(summary: dict[str, Any]) -> None:
    rates = {"service": (300, 100), "service@main": (100, 100), "fastapi": (100, 50), "litserve": (30, 40)}
    rates |= {"bentoml": (9, 20), "ceiling": (1000, 1)}
    report = peers_markdown(peers_outcome(summary, rates))
    # medians of the two rounds: service 200, fastapi 75, ceiling 500.5; memory of the last round
    assert "| shape | 200 req/s, p99 6.0 ms, 305 us CPU, 210 MiB |" in report
    assert "| 2.67x (fastapi) | 0.40x | 2.00x |" in report  # the last: against the service at main
    assert "| 500 | 1.0 / 2.0, 99.0% |" in report


@pytest.mark.parametrize(
    ("targets", "ratios", "row_end"),
    [
        (("service", "baseline", "ceiling"), "lead over the best peer | share of the ceiling",
         "| 2.00x (baseline) | 0.20x |"),
        (("service", "ceiling"), "share of the ceiling", "MiB | 0.20x |"),
        (("service", "service@main", "fastapi"), "lead over the best peer | the service over service@main",
         "| 4.00x (fastapi) | 2.00x |"),
        (("service", "service@main"), "the service over service@main", "MiB | 2.00x |"),
    ],
)  # fmt: skip
def test_peers_report_gives_only_the_ratios_its_targets_allow(
    summary: dict[str, Any], targets: tuple[str, ...], ratios: str, row_end: str
) -> None:
    """The lead is over targets serving the model other than the service (not service@REV, not the ceiling);
    the share of the ceiling only with the ceiling measured."""
    rates = {"service": 200.0, "service@main": 100.0, "baseline": 100.0, "fastapi": 50.0, "ceiling": 1000.0}
    lines = peers_markdown(peers_outcome(summary, {target: (rates[target],) * 2 for target in targets})).splitlines()
    header = lines.index(f"| shape | {' | '.join(targets)} | {ratios} |")
    assert lines[header + 2].startswith("| shape | ") and lines[header + 2].endswith(row_end)
    assert lines[header + 1].count("|") == lines[header].count("|") == lines[header + 2].count("|")


def test_tree_memory_counts_the_children_of_a_process() -> None:
    alone = tree_memory_mib(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; block = bytearray(64 << 20); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while tree_memory_mib(os.getpid()) < alone + 60 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tree_memory_mib(os.getpid()) >= alone + 60  # the child's 64 MiB block is counted
    finally:
        child.kill()
        child.wait()
    assert tree_memory_mib(2**22 + 12345) == 0.0  # no such process


@pytest.mark.integration
def test_a_server_whose_port_is_taken_before_it_binds_is_started_again_on_another(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    second = servers.free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1], second])
        monkeypatch.setattr(servers, "free_port", lambda: next(ports))
        with servers.server("ceiling", log=tmp_path / "server.log", workers=1) as (url, _process):
            assert url == f"http://127.0.0.1:{second}"


def test_the_baseline_peer_runs_the_services_model_path(
    client: Any, trained_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer encodes through the service's reader (a few flights row by row, as the service does), so a
    lead is the serving stack's and not a slower encoder's; its answers are the service's."""
    import bentoml
    from starlette.testclient import TestClient

    from loadtest import apps
    from models.features import FlightReader
    from models.schema import EXAMPLE_REQUEST

    encoded: list[int] = []
    features = FlightReader.features

    def counted(reader: FlightReader, flights: Any) -> Any:
        encoded.append(len(flights))
        return features(reader, flights)

    monkeypatch.setattr(FlightReader, "features", counted)
    stored = bentoml.models.get
    monkeypatch.setattr(bentoml.models, "get", lambda tag: stored(trained_model))  # the in-process service's model
    with TestClient(apps.baseline()) as peer:
        answer = peer.post("/v1/prediction", json=EXAMPLE_REQUEST)
    assert encoded == [len(EXAMPLE_REQUEST["flights"])]
    assert answer.status_code == 200
    assert answer.json() == client.post("/v1/prediction", json=EXAMPLE_REQUEST).json()
