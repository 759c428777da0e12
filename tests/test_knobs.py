"""Every FLIGHT_DELAY_* knob works against the real server: each one flipped from its default (three
servers, a group of knobs each) serves the default's answers, a bad value stops the start with one
line, and the layer's 503 and 504 come from the real server when its limits are set small."""

import json
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import bentoml_serve

from loadtest.probes import fresh
from loadtest.servers import SERVERS
from models.config import PROJECT_DIR
from models.schema import EXAMPLE_REQUEST
from serving.settings import Settings

pytestmark = pytest.mark.integration

# One flipped value per knob: each differs from its default (test_knob_table_flips_every_setting).
# CHALLENGER needs a second model in the store: tests/test_challenger.py serves one.
FLIPPED = {
    "MODEL": "flight_delay:latest",
    "WORKERS": "1",
    "BATCHING": "false",
    "GREEDY_BATCHING": "false",
    "MAX_BATCH_SIZE": "2",
    "MAX_LATENCY_MS": "1000",
    "MAX_IN_FLIGHT": "8",
    "MAX_BYTES_IN_FLIGHT": "2097152",
    "SHED_AFTER_MS": "200",
    "TIMEOUT_S": "5",
    "MAX_BODY_BYTES": "65536",
    "IDLE_TIMEOUT_S": "2",
    "REQUEST_TIMEOUT_S": "5",
    "MAX_CONNECTIONS": "64",
    "SEND_TIMEOUT_S": "5",
    "MAX_UNSENT_MB": "16",
    "ACCESS_LOG": "true",
    "TRACING_SAMPLE_RATE": "0.5",
    "UNTRACED_ROUTES": '["/health"]',
    "METRICS": "false",
    "METRICS_PAGE_S": "0.5",
    "MONITORING": "false",
    "OUTCOMES_TOKEN": "a-token-of-sixteen-or-more",
    "LOG_SAMPLE": "0",
    "LOG_DIR": "/tmp/flight-delay-knob-log",
    "LOG_MAX_MB": "8",
    "GC_FREEZE": "false",
    "LEAN_ROUTE": "false",
}
THOUSAND_FLIGHTS = {"flights": EXAMPLE_REQUEST["flights"] * 500}


def answers(url: str) -> tuple[object, object]:
    """The service's answers to the example request on both prediction routes."""
    with httpx.Client(base_url=url, timeout=30) as http:
        served = [http.post(route, json=EXAMPLE_REQUEST) for route in ("/v1/prediction", "/predict")]
    assert [answer.status_code for answer in served] == [200, 200]
    return served[0].json(), served[1].json()


def test_knob_table_flips_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(FLIPPED) | {"CHALLENGER"} == {field.upper() for field in Settings.model_fields}
    default = Settings()
    for knob, value in FLIPPED.items():
        monkeypatch.setenv(f"FLIGHT_DELAY_{knob}", value)
        flipped = Settings.from_environment()
        monkeypatch.delenv(f"FLIGHT_DELAY_{knob}")
        assert getattr(flipped, knob.lower()) != getattr(default, knob.lower()), knob


# The flipped knobs in three served processes, not one each. Knobs that turn the same path off are
# kept apart, so none hides another: the lean route's three switches (LEAN_ROUTE, ACCESS_LOG, tracing
# of /v1/prediction), batching off apart from the batcher's own knobs, metrics off apart from the
# monitoring and metrics-page knobs, the prediction log off apart from its directory and size.
GROUPS = {
    "access log, no batching, no metrics, no prediction log": (
        "ACCESS_LOG", "BATCHING", "METRICS", "LOG_SAMPLE", "WORKERS", "MAX_IN_FLIGHT", "MAX_BYTES_IN_FLIGHT",
        "SHED_AFTER_MS", "TIMEOUT_S", "GC_FREEZE",
    ),
    "tracing, batcher knobs, no monitoring": (
        "TRACING_SAMPLE_RATE", "UNTRACED_ROUTES", "GREEDY_BATCHING", "MAX_BATCH_SIZE", "MAX_LATENCY_MS",
        "MONITORING", "METRICS_PAGE_S", "LOG_DIR", "LOG_MAX_MB", "OUTCOMES_TOKEN",
    ),
    "no lean route, connection limits": (
        "LEAN_ROUTE", "MAX_BODY_BYTES", "IDLE_TIMEOUT_S", "REQUEST_TIMEOUT_S", "MAX_CONNECTIONS",
        "SEND_TIMEOUT_S", "MAX_UNSENT_MB", "MODEL",
    ),
}  # fmt: skip


def test_knob_groups_hold_every_knob_once() -> None:
    grouped = [knob for knobs in GROUPS.values() for knob in knobs]
    assert sorted(grouped) == sorted(FLIPPED)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_service_with_knobs_flipped_is_ready_and_answers_as_the_default(
    group: str, service_url: str, tmp_path: Path
) -> None:
    expected = answers(service_url)
    env = {f"FLIGHT_DELAY_{knob}": FLIPPED[knob] for knob in GROUPS[group]}
    with bentoml_serve(tmp_path / "serve.log", env) as (url, _process):
        assert answers(url) == expected


# Bad values that pydantic refuses are refused together, a line each, in one start; a list that is not
# JSON stops the reading of the settings before any other check, and an unwritable log directory is
# checked once they are read, so each has a start of its own.
BAD_SETTINGS = {
    "refused by pydantic, a line each": (
        ("FLIGHT_DELAY_WORKERS", "zero", "input should be a valid integer"),
        ("FLIGHT_DELAY_MAX_BATCH_SIZE", "1", "greater than or equal to 2"),
        ("FLIGHT_DELAY_TIMEOUT_S", "-1", "greater than 0"),
        ("FLIGHT_DELAY_MAX_BODY_BYTES", "lots", "input should be a valid integer"),
        ("FLIGHT_DELAY_TRACING_SAMPLE_RATE", "2", "less than or equal to 1"),
    ),
    "a list that is not JSON": (("FLIGHT_DELAY_UNTRACED_ROUTES", "/health", "a JSON list of strings"),),
    "a log directory it cannot write": (("FLIGHT_DELAY_LOG_DIR", "/proc/flight-delay", "a directory it can write"),),
}


@pytest.mark.parametrize("bad", sorted(BAD_SETTINGS))
def test_bad_settings_stop_the_start_with_one_line_each(trained_model: str, bad: str) -> None:
    result = subprocess.run(
        [*SERVERS["service"], "0"],
        cwd=PROJECT_DIR,
        env={**os.environ, **{variable: value for variable, value, _ in BAD_SETTINGS[bad]}},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == len(BAD_SETTINGS[bad]), lines  # no traceback
    for line, (variable, value, accepted) in zip(sorted(lines), sorted(BAD_SETTINGS[bad]), strict=True):
        assert line.startswith(f"refusing to start: {variable}={value!r} is not accepted: ")
        assert accepted in line


def concurrent_posts(url: str, count: int) -> list[httpx.Response]:
    """`count` 1,000-flight predictions sent at once, one connection each."""

    def post(_: int) -> httpx.Response:
        return fresh().post(f"{url}/v1/prediction", json=THOUSAND_FLIGHTS, timeout=60)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(post, range(count)))


def test_real_server_sheds_with_503_and_retry_after_beyond_its_in_flight_limit(
    trained_model: str, tmp_path: Path
) -> None:
    env = {"FLIGHT_DELAY_WORKERS": "1", "FLIGHT_DELAY_MAX_IN_FLIGHT": "1"}
    with bentoml_serve(tmp_path / "serve.log", env) as (url, _process):
        responses = concurrent_posts(url, 24)
    statuses = {response.status_code for response in responses}
    assert statuses == {200, 503}
    shed = [response for response in responses if response.status_code == 503]
    assert all(response.headers["retry-after"] == "1" for response in shed)
    assert shed[0].json()["error"] == "overloaded, retry shortly"


def test_real_server_answers_504_past_its_time_out(trained_model: str, tmp_path: Path) -> None:
    """The time-out covers the whole request, upload included; BentoML's dispatcher sheds requests it
    expects to outlast it with 503 first, so a body sent slower than the time-out is what reaches it."""
    env = {"FLIGHT_DELAY_WORKERS": "1", "FLIGHT_DELAY_TIMEOUT_S": "1"}
    body = json.dumps(EXAMPLE_REQUEST).encode()
    with bentoml_serve(tmp_path / "serve.log", env) as (url, _process):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/prediction HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body[:10]
            )
            started = time.monotonic()
            answer = sock.recv(4096)
            seconds = time.monotonic() - started
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):  # the rest, if it came apart
                answer += sock.recv(4096)
    head, payload = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 504 ")
    assert json.loads(payload)["detail"][0]["msg"] == "no answer within 1 s, retry later"
    assert 0.9 <= seconds <= 2
