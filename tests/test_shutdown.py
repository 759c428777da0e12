"""SIGTERM under load: every request the service accepted is answered and received, and it exits in time."""

import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import bentoml_serve

from loadtest.client import BackgroundLoad
from models.schema import EXAMPLE_REQUEST
from serving.layer import shutdown_counts

pytestmark = pytest.mark.integration

EXIT_DEADLINE_S = 10
CONNECTIONS = 50


@pytest.mark.usefixtures("trained_model")
def test_sigterm_under_load_answers_every_accepted_request_and_exits_in_time(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with bentoml_serve(log, {"FLIGHT_DELAY_WORKERS": "2"}) as (url, process):  # each worker drains its own
        load = BackgroundLoad(f"{url}/v1/prediction", CONNECTIONS, EXAMPLE_REQUEST)
        time.sleep(1.5)  # every connection in a request by then: SIGTERM meets them in flight
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=EXIT_DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_DEADLINE_S} s after SIGTERM")
        seconds_to_exit = time.monotonic() - signalled
        time.sleep(0.5)  # let the clients read what was already sent to them
        outcomes = load.stop()
    text = log.read_text()
    workers = shutdown_counts(text)
    received = sum(n for outcome, n in outcomes.items() if outcome.isdigit())

    assert process.returncode == 0, text[-3000:]
    assert seconds_to_exit < EXIT_DEADLINE_S
    assert len(workers) == text.count("Service flight_delay initialized"), "a worker did not log its shutdown"
    assert [worker["cut"] for worker in workers] == [0] * len(workers)
    assert sum(worker["answered"] for worker in workers) == received > 0
    assert outcomes["200"] == received, outcomes
    assert outcomes["cut"] == outcomes["timed out"] == 0
