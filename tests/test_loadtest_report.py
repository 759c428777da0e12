"""The load-test reports: wrk's summary line, the verdict against the bar, the report files, the peers' table."""

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from loadtest.peers import markdown as peers_markdown
from loadtest.stats import tree_memory_mib
from loadtest.wrk import BAR_REQUESTS, SHAPES, failures, markdown, parse_summary, plot, verdict

SAMPLE = Path(__file__).parent / "data" / "wrk_service_sample.txt"  # a real wrk run of script.lua


@pytest.fixture
def summary() -> dict[str, Any]:
    """The summary of the captured wrk run."""
    return parse_summary(SAMPLE.read_text())


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


def test_markdown_gives_ratios_to_first_run(summary: dict[str, Any]) -> None:
    half = {**summary, "requests_per_s": summary["requests_per_s"] / 2}
    table = markdown({"service": summary, "baseline": half}, "title", "cmd")
    assert "| service | 13,660 |" in table
    assert "| 0.50x |" in table
    assert "Verdict for service: FAIL" in table


def test_markdown_compares_each_shape_with_the_service_in_that_shape(summary: dict[str, Any]) -> None:
    fast = {**summary, "requests_per_s": 1000.0, "shape": "1 flight"}
    slow = {**summary, "requests_per_s": 10.0, "shape": "1,000 flights"}
    runs = {"service": fast, "service, 1,000 flights": slow}
    runs |= {"baseline": {**fast, "requests_per_s": 500.0}, "baseline, 1,000 flights": {**slow, "requests_per_s": 5.0}}
    ratios = [line.rsplit("|", 2)[1].strip() for line in markdown(runs, "t", "c").splitlines() if line.startswith("| ")]
    assert ratios[1:] == ["1.00x", "1.00x", "0.50x", "0.50x"]  # each against the service in its own shape


def test_make_loadtest_runs_every_shape_on_every_target(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--baselines (make loadtest): each target in every shape of loadtest.wrk.SHAPES, and the open-loop
    curve on each target that serves the model; wrk and the servers are stood in for."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from loadtest import run

    calls: list[tuple[str, int, int, bool]] = []

    def fake_wrk(url: str, seconds: int, threads: int, connections: int, flights: int, label: str,
                 new_connections: bool = False) -> str:  # fmt: skip
        calls.append((url, connections, flights, new_connections))
        return SAMPLE.read_text()

    @contextmanager
    def fake_server(kind: str) -> Any:
        yield f"http://{kind}", SimpleNamespace(pid=1)

    curves: list[str] = []

    def fake_curve(url: str, *args: Any) -> list[dict[str, Any]]:
        curves.append(url)
        return [{}]

    monkeypatch.setattr(run, "wrk", fake_wrk)
    monkeypatch.setattr(run.shutil, "which", lambda name: f"/usr/bin/{name}")  # wrk itself is stood in for
    monkeypatch.setattr(run, "server", fake_server)
    monkeypatch.setattr(run, "fixed_rates", fake_curve)
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    monkeypatch.setattr(run, "curve_table", lambda curves: "")
    monkeypatch.setattr(run, "plot", lambda *args: None)
    run.main(["--baselines", "--warmup", "0", "--duration", "1", "--name", "shapes"])
    measured = {(url, connections, flights, new) for url, connections, flights, new in calls}
    shapes = {(s.connections, s.flights, s.new_connections) for s in SHAPES}
    assert measured == {(f"http://{kind}", *shape) for kind in ("service", "baseline", "ceiling") for shape in shapes}
    assert curves == ["http://service", "http://baseline"]
    assert "| service, 1,000 flights, keep-alive, 8 connections |" in (tmp_path / "shapes" / "report.md").read_text()


def test_ablation_measures_a_revision_in_every_shape() -> None:
    from loadtest.ablation import CONFIGS, NEW_CONNECTIONS

    code_rows = {(connections, flights, NEW_CONNECTIONS in knob) for knob, value, _env, connections, flights in CONFIGS
                 if value == "<revision>"}  # fmt: skip
    assert code_rows == {(s.connections, s.flights, s.new_connections) for s in SHAPES}


def test_plot_writes_png(summary: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    plot({"service": summary, "ceiling": summary}, path, "title")
    assert path.read_bytes().startswith(b"\x89PNG")


def peer_run(summary: dict[str, Any], requests_per_s: float, p99: float, memory_mib: float) -> dict[str, Any]:
    return {**summary, "requests_per_s": requests_per_s, "latency_ms": {"p99": p99}, "memory_mib": memory_mib}


def test_peers_report_gives_the_lead_over_the_best_peer_and_the_share_of_the_ceiling(summary: dict[str, Any]) -> None:
    rates = {"service": (300, 100), "service@main": (100, 100), "fastapi": (100, 50), "litserve": (30, 40)}
    rates |= {"bentoml": (9, 20), "ceiling": (1000, 1)}
    closed = {
        "shape": {target: [peer_run(summary, rate, 5, 200), peer_run(summary, other, 7, 210)]
                  for target, (rate, other) in rates.items()}
    }  # fmt: skip
    open_run = {"latency_ms": {"p50": 1.0, "p99": 2.0}, "ok": 99, "due": 100}
    outcome = {
        "date": "2026-12-05", "command": "python -m loadtest.peers", "machine": "here", "rounds": 2,
        "duration_s": 15, "warmup_s": 3, "targets": list(rates), "closed_loop": closed, "rates": [500],
        "curve_duration_s": 10, "open_loop": {"service": [open_run]},
    }  # fmt: skip
    report = peers_markdown(outcome)
    # medians of the two rounds: service 200, fastapi 75, ceiling 500.5; memory of the last round
    assert "| shape | 200 req/s, p99 6.0 ms, 210 MiB |" in report
    assert "| 2.67x (fastapi) | 0.40x | 2.00x |" in report  # the last: against the service at main
    assert "| 500 | 1.0 / 2.0, 99.0% |" in report


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
