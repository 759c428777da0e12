"""Single requests a drill makes beside its load: readiness, one prediction, a lone-request timing, /metrics.

Single calls go through httpx (one client made once: making one costs httpx about 50 ms); lone-request
timings through http.client, whose figures the docs cite; /metrics is read with prometheus_client.
"""

import json
import time
from functools import cache
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from models.schema import EXAMPLE_REQUEST

FLIGHTS = Path(__file__).resolve().parent / "flights.jsonl"  # the load test's flights (script.lua's pool)
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]
JSON = {"Content-Type": "application/json"}


@cache
def fresh() -> httpx.Client:
    """A client that opens a new connection for every request, so a balancer places each one anew."""
    return httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


@cache
def kept() -> httpx.Client:
    """A client that keeps its connections, for requests timed back to back."""
    return httpx.Client()


def ready(url: str, path: str = "/readyz") -> bool:
    """Whether url + path answers 200 now."""
    try:
        return fresh().get(f"{url}{path}", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def post(url: str, payload: dict[str, Any]) -> tuple[str, bytes]:
    """POST payload to url/v1/prediction: its status (or the failure's name) and body."""
    try:
        answer = fresh().post(f"{url}/v1/prediction", json=payload, timeout=5)
    except httpx.HTTPError as error:
        return type(error).__name__, b""
    return str(answer.status_code), answer.content


def post_example(url: str) -> bytes:
    """The body a server answers EXAMPLE_REQUEST with."""
    status, body = post(url, EXAMPLE_REQUEST)
    assert status == "200", status
    return body


def sample_answers(url: str) -> list[Any]:
    """The answers to the load test's first 50 bodies of 1 to 50 flights: a peer must give the service's."""
    pool = [json.loads(line) for line in FLIGHTS.read_text().splitlines() if line]
    answers = (kept().post(f"{url}/v1/prediction", json={"flights": pool[:size]}, timeout=30) for size in range(1, 51))
    return [answer.json() for answer in answers]


def probe(url: str) -> float:
    """Milliseconds one EXAMPLE_REQUEST takes on a kept connection; infinity if it fails."""
    started = time.perf_counter()
    try:
        ok = kept().post(f"{url}/v1/prediction", json=EXAMPLE_REQUEST, timeout=5).status_code == 200
    except httpx.HTTPError:
        ok = False
    return (time.perf_counter() - started) * 1000 if ok else float("inf")


def lone_times(url: str, body: str, requests: int = 200, pause_s: float = 0.0) -> list[float]:
    """Milliseconds of `requests` predictions of `body` sent one at a time on one keep-alive http.client
    connection, after 20 unmeasured, `pause_s` apart."""
    connection = HTTPConnection(url.removeprefix("http://"), timeout=30)
    times = []
    try:
        for attempt in range(requests + 20):
            started = time.perf_counter()
            connection.request("POST", "/v1/prediction", body, JSON)
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 200, answer.status
            if attempt >= 20:
                times.append((time.perf_counter() - started) * 1000)
            time.sleep(pause_s)
    finally:
        connection.close()
    return times


def new_connection_ms(host: str, port: int, body: str, source: str) -> float | str:
    """Milliseconds a prediction of `body` takes on a new connection from address `source`, or why it failed."""
    connection = HTTPConnection(host, port, timeout=10, source_address=(source, 0))
    started = time.perf_counter()
    try:
        connection.request("POST", "/v1/prediction", body, JSON)
        answer = connection.getresponse()
        content = answer.read()
        # a failure's status and the start of its body, which says who answered (the service's JSON, or a front's page)
        outcome: float | str = (
            (time.perf_counter() - started) * 1000 if answer.status == 200 else f"{answer.status} {content[:40]!r}"
        )
    except OSError as exc:
        outcome = type(exc).__name__
    finally:
        connection.close()
    return outcome


def metric_samples(text: str) -> Samples:
    """A pod's /metrics (Prometheus text format) as each sample's value by name and sorted labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def metrics(url: str, timeout: float = 30) -> Samples:
    """The samples of url's /metrics."""
    return metric_samples(fresh().get(f"{url}/metrics", timeout=timeout).text)


def closes(url: str) -> dict[str, float]:
    """The service's own count of the connections it closed, by reason (connections_closed_total)."""
    return {dict(key)["reason"]: value for key, value in metrics(url).get("connections_closed_total", {}).items()}
