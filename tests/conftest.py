"""Fixtures: an isolated model store, a model trained on a small synthetic sample, and the service,
in this process through its ASGI app (`client`) or as a `bentoml serve` process (`service_url`).

Set FLIGHT_DELAY_URL to run the HTTP tests against a service that is already up (a container, say).
"""

import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
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
import yaml
from filelock import FileLock
from helpers import SAMPLE_ROWS, SESSION_MODEL, TrainingRun, bentoml_serve, recorded_training

import train
from loadtest.servers import wait_ready
from models.config import MODEL_NAME
from models.data import STATS_PATH, embedded_sample, synthetic_frame
from models.predictor import DelayPredictor


@pytest.fixture(scope="session")
def sample_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset with the real schema, written as CSV like the real file."""
    path = tmp_path_factory.mktemp("data") / "sample.csv"
    synthetic_frame(json.loads(STATS_PATH.read_text()), rows=SAMPLE_ROWS).to_csv(path, index=False)
    return path


def once_a_run(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]) -> Path:
    """The path `name` in the run's temporary directory, made by `make(path)` once a run: under
    pytest-xdist the first process to ask makes it and the others wait for it (pytest-xdist's recipe
    for session data: the processes' temporary directories share a parent, the run's), so what costs
    seconds of CPU is not paid once per process."""
    run = tmp_path_factory.getbasetemp()
    shared = (run.parent if "PYTEST_XDIST_WORKER" in os.environ else run) / name
    with FileLock(f"{shared}.lock"):
        if not shared.exists():
            partial = shared.with_name(f"{name}.partial")  # a process killed while making it leaves no half
            shutil.rmtree(partial, ignore_errors=True)
            make(partial)
            partial.rename(shared)
    return shared


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> TrainingRun:
    """train.py's procedure on the whole embedded sample (68,206 flights), with the flights on each side
    of its split: 6 s of CPU, once a run."""

    def make(path: Path) -> None:
        path.write_bytes(pickle.dumps(recorded_training(embedded_sample()[0])))

    return pickle.loads(once_a_run(tmp_path_factory, "sample-run.pickle", make).read_bytes())


@pytest.fixture(scope="session")
def sample_model(sample_run: TrainingRun) -> tuple[DelayPredictor, dict[str, Any], dict[str, Any]]:
    """The predictor, hold-out metrics and monitoring reference of sample_run."""
    return sample_run.result


@pytest.fixture(scope="session")
def trained_model(sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tag of a flight_delay model trained by train.py on the small sample, in the test store: trained
    once a run, and copied into the store of each process that asks."""

    def make(path: Path) -> None:
        assert train.main(["--data", str(sample_csv)]) == 0
        import bentoml

        shutil.copytree(bentoml.models.get(f"{MODEL_NAME}:latest").path, path / MODEL_NAME / "version")

    made = once_a_run(tmp_path_factory, "trained-model", make) / MODEL_NAME / "version"
    version = yaml.safe_load((made / "model.yaml").read_text())["version"]
    models = Path(os.environ["BENTOML_HOME"]) / "models" / MODEL_NAME
    if not (models / version).exists():
        shutil.copytree(made, models / version)
        (models / "latest").write_text(version)
    SESSION_MODEL.append(f"{MODEL_NAME}:{version}")
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
