"""serving/batching.py: BentoML's batching optimizer never holds a request back longer than the cap,
and so lone requests after a burst are answered as fast as before it."""

import shutil
import statistics
import time
from pathlib import Path

import httpx
import pytest
from bentoml._internal.marshal.dispatcher import Optimizer
from conftest import bentoml_serve, skip_unless_ci
from run import wrk_process

from models.schema import EXAMPLE_REQUEST
from serving.batching import MAX_WAIT_S, cap_learned_wait

# BentoML's optimizer refreshes its learned wait at most every 5 s, from its last 50 batches: a burst
# longer than that refreshes it once under load, and the lone requests that follow within 5 s meet it.
BURST_S = 6
BURST_CONNECTIONS = 200  # the reference load's
LONE_REQUESTS = 20


def test_cap_learned_wait_bounds_initial_estimates() -> None:
    cap_learned_wait()
    optimizer = Optimizer(max_latency=10.0)  # uncapped: 0.67 s per item and 0.33 s fixed
    assert optimizer.o_a <= MAX_WAIT_S
    assert optimizer.o_b <= MAX_WAIT_S


def test_cap_learned_wait_bounds_wait_learned_under_load() -> None:
    cap_learned_wait()
    optimizer = Optimizer(max_latency=10.0)
    for _ in range(60):  # batches that waited 300 ms, as under a burst
        optimizer.log_outbound(n=50, wait=0.3, duration=0.002)
    optimizer.trigger_refresh()
    assert 0 <= optimizer.wait <= MAX_WAIT_S


def test_cap_learned_wait_is_applied_once() -> None:
    cap_learned_wait()
    refresh = Optimizer.trigger_refresh
    cap_learned_wait()
    assert Optimizer.trigger_refresh is refresh


def burst(url: str) -> None:
    """wrk with the reference load (one flight per request) for BURST_S: the burst of the after-burst drill."""
    wrk = wrk_process(url, BURST_S, threads=4, connections=BURST_CONNECTIONS, flights_per_request=1)
    output, _ = wrk.communicate(timeout=BURST_S + 30)
    assert wrk.returncode == 0, output


def lone_ms_after_burst(url: str) -> float:
    """Median milliseconds of LONE_REQUESTS sent one at a time right after a burst."""
    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.post("/v1/prediction", json=EXAMPLE_REQUEST).status_code == 200  # connection open
        burst(url)
        times = []
        for _ in range(LONE_REQUESTS):
            started = time.perf_counter()
            assert http.post("/v1/prediction", json=EXAMPLE_REQUEST).status_code == 200
            times.append((time.perf_counter() - started) * 1000)
            time.sleep(0.05)
    return statistics.median(times)


@pytest.mark.integration
def test_cap_keeps_lone_requests_after_a_burst_fast(trained_model: str, tmp_path: Path) -> None:
    """What the cap is for: without it, BentoML holds each lone request after a burst for the wait it
    learned under the burst (a median of 90.9 ms against 9.0 ms after 10 s of wrk, docs/performance.md).
    Compared with the uncapped service in the same test, as a ratio: this machine's speed varies."""
    if shutil.which("wrk") is None:
        skip_unless_ci("no wrk (apt-get install -y wrk) for the burst")
    medians = {}
    for greedy in ("true", "false"):
        log = tmp_path / f"greedy-{greedy}" / "serve.log"  # bentoml_serve puts the service's home beside it
        log.parent.mkdir()
        with bentoml_serve(log, {"FLIGHT_DELAY_GREEDY_BATCHING": greedy}) as (url, _):
            medians[greedy] = lone_ms_after_burst(url)
    assert medians["false"] >= 3 * medians["true"], f"median ms of lone requests after a burst: {medians}"
