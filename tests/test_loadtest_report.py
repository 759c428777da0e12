"""The load-test report: parsing wrk's summary line, the verdict against the bar, the report files."""

from pathlib import Path
from typing import Any

import pytest

from loadtest.wrk import BAR_REQUESTS, failures, markdown, parse_summary, plot, verdict

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


def test_plot_writes_png(summary: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    plot({"service": summary, "ceiling": summary}, path, "title")
    assert path.read_bytes().startswith(b"\x89PNG")
