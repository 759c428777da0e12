"""Fixtures: an isolated model store, a model trained on a small synthetic sample, and the service,
in this process through its ASGI app (`client`) or as a `bentoml serve` process (`service_url`).

Set FLIGHT_DELAY_URL to run the HTTP tests against a service that is already up (a container, say).
"""

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Before anything imports bentoml or prometheus_client: the tests never read or write the user's own
# model store, and the service in this process keeps its metric files where its /metrics reads them.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="flight-delay-tests-")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="flight-delay-tests-metrics-")
# make test runs several pytest processes (pytest-xdist, TEST_WORKERS): each takes one OpenMP thread for
# scikit-learn's training, since two processes' spinning OpenMP threads on 2 cores made the
# in-process tier 1.6x slower than one process (212 s against 132 s), and one thread each 0.6x (75 s).
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import httpx
import pytest
from helpers import SAMPLE_ROWS, SESSION_MODEL, bentoml_serve

import train
from loadtest.servers import wait_ready
from models.data import STATS_PATH, embedded_sample, synthetic_frame
from models.predictor import DelayPredictor


@pytest.fixture(scope="session")
def sample_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset with the real schema, written as CSV like the real file."""
    path = tmp_path_factory.mktemp("data") / "sample.csv"
    synthetic_frame(json.loads(STATS_PATH.read_text()), rows=SAMPLE_ROWS).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def sample_model() -> tuple[DelayPredictor, dict[str, Any], dict[str, Any]]:
    """The predictor and hold-out metrics of train.py's procedure on the whole embedded sample (68,206 flights)."""
    return train.train(embedded_sample()[0])


@pytest.fixture(scope="session")
def trained_model(sample_csv: Path) -> str:
    """Tag of a flight_delay model trained by train.py on the small sample, in the test store."""
    assert train.main(["--data", str(sample_csv)]) == 0
    import bentoml

    SESSION_MODEL.append(str(bentoml.models.get("flight_delay:latest").tag))
    return SESSION_MODEL[0]


@pytest.fixture(scope="session")
def service_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a running service: FLIGHT_DELAY_URL, or a `bentoml serve` started on the test model."""
    if url := os.environ.get("FLIGHT_DELAY_URL"):
        wait_ready(url)
        yield url.rstrip("/")
        return
    request.getfixturevalue("trained_model")
    with bentoml_serve(tmp_path_factory.mktemp("serve") / "bentoml-serve.log") as (url, _process):
        yield url


@pytest.fixture(scope="session")
def served_client(service_url: str) -> Iterator[httpx.Client]:
    """An HTTP client bound to the served service: for what needs a real server (sockets, workers)."""
    with httpx.Client(base_url=service_url, timeout=30) as http:
        yield http


@pytest.fixture(scope="session")
def client(trained_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """An HTTP client of the service in this process, through its ASGI app (or FLIGHT_DELAY_URL's).

    The service module is loaded once per session, on the session's model, with /metrics made for
    every request (the tests read it right after acting) and its prediction log in a temporary place.
    """
    if url := os.environ.get("FLIGHT_DELAY_URL"):
        wait_ready(url)
        with httpx.Client(base_url=url.rstrip("/"), timeout=30) as http:
            yield http
        return
    from starlette.testclient import TestClient

    name, version = trained_model.split(":")
    (Path(os.environ["BENTOML_HOME"]) / "models" / name / "latest").write_text(version)  # what service.py loads
    os.environ["FLIGHT_DELAY_METRICS_PAGE_S"] = "0"
    os.environ["FLIGHT_DELAY_LOG_DIR"] = str(tmp_path_factory.mktemp("in-process") / "prediction-log")
    import service

    with TestClient(service.FlightDelay.to_asgi()) as http:  # type: ignore[attr-defined]  # a Service, typed as the class
        yield http
