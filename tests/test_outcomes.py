"""POST /v1/outcomes: authenticated writes only, validation as on the prediction routes, and the
realized quality of GET /v1/monitoring equal to the figures computed here from the same flights."""

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import bentoml_serve
from sklearn.metrics import roc_auc_score

from loadtest.probes import fresh
from models.data import embedded_sample
from models.quality import probability_bins
from models.schema import EXAMPLE_OUTCOMES

pytestmark = pytest.mark.integration
TOKEN = "test-token-not-a-secret"
OUTCOMES = 600


@pytest.fixture(scope="module")
def with_token(trained_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A two-worker service that accepts outcomes with TOKEN."""
    env = {"FLIGHT_DELAY_OUTCOMES_TOKEN": TOKEN, "FLIGHT_DELAY_WORKERS": "2"}
    with bentoml_serve(tmp_path_factory.mktemp("outcomes") / "serve.log", env) as (url, _process):
        yield url


def post(url: str, body: Any, token: str | None = TOKEN, **headers: str) -> httpx.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return fresh().post(f"{url}/v1/outcomes", json=body, headers=headers, timeout=30)


def outcomes_counted(url: str) -> dict[str, Any]:
    """The outcomes part of /v1/monitoring, after the workers' next export."""
    time.sleep(1.5)
    return fresh().get(f"{url}/v1/monitoring", timeout=10).json()["outcomes"]


def test_outcomes_without_a_configured_token_answer_403_saying_how_to_enable_them(client: httpx.Client) -> None:
    answer = client.post("/v1/outcomes", json=EXAMPLE_OUTCOMES, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 403
    assert "FLIGHT_DELAY_OUTCOMES_TOKEN" in answer.json()["detail"][0]["msg"]


WRONG_AUTHORIZATIONS = [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", f"{TOKEN}"]


def test_missing_or_wrong_token_gets_401_with_www_authenticate_and_counts_nothing(with_token: str) -> None:
    """Every wrong authorization in turn, then one wait for the workers' export (1.5 s a reading)."""
    before = outcomes_counted(with_token)["flights"]
    for authorization in WRONG_AUTHORIZATIONS:
        headers = {} if authorization is None else {"Authorization": authorization}
        answer = post(with_token, EXAMPLE_OUTCOMES, token=None, **headers)
        assert answer.status_code == 401, authorization
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["error"] == "unauthorized"
    assert outcomes_counted(with_token)["flights"] == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"Fecha-O": "2017-07-24 20:02"}, "Fecha-O"),  # three days late: implausible
        ({"Fecha-O": "2017-07-21 18:00"}, "Fecha-O"),  # 100 minutes early
        ({"Fecha-O": "21/07/2017 20:02"}, "Fecha-O"),
        ({"Fecha-I": None}, "Fecha-I"),
        ({"Fecha-I": "2017-07-21\u202819:40"}, "Fecha-I"),
    ],
)
def test_invalid_outcome_gets_400_naming_the_field(with_token: str, change: dict[str, Any], field: str) -> None:
    flight = {**EXAMPLE_OUTCOMES["flights"][0], **change}
    answer = post(with_token, {"flights": [flight]})
    assert answer.status_code == 400
    assert [problem["loc"] for problem in answer.json()["detail"]] == [["flights", 0, field]]


def test_outcomes_keep_the_prediction_routes_limits(with_token: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    text = fresh().post(f"{with_token}/v1/outcomes", content="x", headers={**headers, "Content-Type": "text/plain"})
    big = fresh().post(f"{with_token}/v1/outcomes", json={"flights": ["x" * 2_000_000]}, headers=headers)
    assert (text.status_code, big.status_code) == (415, 413)


def test_realized_quality_equals_the_figures_of_the_flights_sent(with_token: str) -> None:
    flights, _source = embedded_sample()
    rows = flights.sample(OUTCOMES, random_state=20)
    body = [
        {
            "OPERA": airline,
            "TIPOVUELO": kind,
            "MES": int(scheduled.month),
            "Fecha-I": f"{scheduled:%Y-%m-%d %H:%M}",
            "SIGLADES": city,
            "Fecha-O": f"{left:%Y-%m-%d %H:%M}",
        }
        for airline, kind, city, scheduled, left in zip(
            rows["OPERA"], rows["TIPOVUELO"], rows["SIGLADES"], rows["Fecha-I"], rows["Fecha-O"], strict=True
        )
    ]
    before = outcomes_counted(with_token)["flights"]
    assert before == 0, "the other tests count nothing"
    answers = [post(with_token, {"flights": body[i : i + 100]}) for i in range(0, OUTCOMES, 100)]
    assert [answer.status_code for answer in answers] == [200] * (OUTCOMES // 100)
    delayed = rows["delayed"].to_numpy().astype(float)
    assert sum(answer.json()["delayed"] for answer in answers) == delayed.sum()
    sent = {"flights": [{k: v for k, v in f.items() if k != "Fecha-O"} for f in body]}
    predicted = fresh().post(f"{with_token}/v1/prediction", json=sent).json()
    p = np.array([answer["probability"] for answer in predicted])
    edges = np.array(fresh().get(f"{with_token}/v1/model").json()["reference"]["probability_edges"])
    deciles = probability_bins(edges, p) // 10
    calibration = sum(abs(p[deciles == d].sum() - delayed[deciles == d].sum()) for d in range(10)) / OUTCOMES
    realized = outcomes_counted(with_token)
    assert realized["flights"] == OUTCOMES
    assert realized["delay_rate"] == pytest.approx(delayed.mean(), abs=1e-4)
    assert realized["brier"] == pytest.approx(np.mean((delayed - p) ** 2), abs=1e-4)
    assert realized["calibration_error"] == pytest.approx(calibration, abs=1e-4)
    assert realized["roc_auc"] == pytest.approx(roc_auc_score(delayed, p), abs=0.01)


# After the realized-quality test, which needs a service that has counted nothing before it.


def test_flights_the_model_does_not_know_are_listed_and_the_others_counted(with_token: str) -> None:
    known = EXAMPLE_OUTCOMES["flights"][0]
    flights = [known, {**known, "OPERA": "Nowhere Air"}, {**known, "SIGLADES": "Atlantis"}, known]
    before = outcomes_counted(with_token)["flights"]
    answer = post(with_token, {"flights": flights})
    assert answer.status_code == 200
    assert answer.json()["flights"] == 2 and answer.json()["delayed"] == 2
    assert [(problem["index"], problem["loc"]) for problem in answer.json()["not_counted"]] == [
        (1, ["flights", 1, "OPERA"]),
        (2, ["flights", 2, "SIGLADES"]),
    ]
    assert outcomes_counted(with_token)["flights"] == before + 2


def test_retry_with_the_same_idempotency_key_is_answered_again_and_counted_once(with_token: str) -> None:
    before = outcomes_counted(with_token)["flights"]
    first = post(with_token, EXAMPLE_OUTCOMES, **{"Idempotency-Key": "feed-2017-07-21-batch-1"})
    retries = [post(with_token, EXAMPLE_OUTCOMES, **{"Idempotency-Key": "feed-2017-07-21-batch-1"}) for _ in range(4)]
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    assert {(retry.status_code, retry.headers["idempotent-replayed"]) for retry in retries} == {(200, "true")}
    assert {retry.content for retry in retries} == {first.content}
    assert outcomes_counted(with_token)["flights"] == before + 1  # both workers see the key
    other = {"flights": [{**EXAMPLE_OUTCOMES["flights"][0], "Fecha-O": "2017-07-21 19:41"}]}
    reused = post(with_token, other, **{"Idempotency-Key": "feed-2017-07-21-batch-1"})
    assert reused.status_code == 422 and reused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert post(with_token, EXAMPLE_OUTCOMES, **{"Idempotency-Key": "x" * 256}).status_code == 400
    assert outcomes_counted(with_token)["flights"] == before + 1
