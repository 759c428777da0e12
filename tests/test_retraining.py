"""Retraining on new data: the airlines and cities come from the data, and the service trained on it
accepts what it learned and refuses anything else, while a model that never saw them refuses them."""

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import bentoml
import httpx
import pandas as pd
import pytest
from helpers import VOCABULARY, bentoml_serve, pin_model

import train
from loadtest.probes import fresh
from models.config import MODEL_NAME

pytestmark = pytest.mark.integration
NEW_FLIGHT = {"OPERA": "Arajet", "TIPOVUELO": "I", "MES": 3, "Fecha-I": "2017-03-14 08:30", "SIGLADES": "Santo Domingo"}


@pytest.fixture(scope="module")
def retrained(
    trained_model: str, sample_csv: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, pd.DataFrame]:
    """A store holding the session's model and, as its latest, one trained by train.py on the same
    sample with 300 Sky Airline flights renamed to a new airline flying to a new city: (store, what
    train.py printed, the data). Trained in this process against the session's model as the session
    store's latest, and linked into a store of its own, which the service serves."""
    home = tmp_path_factory.mktemp("retrained-home")
    frame = pd.read_csv(sample_csv, dtype=str, keep_default_na=False)
    renamed = frame.index[frame["OPERA"] == "Sky Airline"][:300]
    frame.loc[renamed, ["OPERA", "SIGLADES", "TIPOVUELO"]] = ["Arajet", "Santo Domingo", "I"]
    data = home / "new-airline.csv"
    frame.to_csv(data, index=False)
    name, version = trained_model.split(":")
    (Path(os.environ["BENTOML_HOME"]) / "models" / name / "latest").write_text(version)  # what train.py compares with
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert train.main(["--data", str(data)]) == 0
    pin_model(home, trained_model)
    pin_model(home, str(bentoml.models.get(f"{MODEL_NAME}:latest").tag))
    return home, printed.getvalue(), frame


@pytest.fixture(scope="module")
def retrained_url(retrained: tuple[Path, str, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service of the retrained model."""
    log = tmp_path_factory.mktemp("retrained-serve") / "serve.log"
    with bentoml_serve(log, {"BENTOML_HOME": str(retrained[0])}) as (url, _process):
        yield url


def test_train_prints_the_new_airline_and_city_against_the_stores_latest_model(
    retrained: tuple[Path, str, pd.DataFrame],
) -> None:
    output = retrained[1]
    assert "against the store's latest model, flight_delay:" in output
    assert "airlines: 24 (23 before); new: ['Arajet']; gone: none" in output
    destinations = next(line for line in output.splitlines() if "destinations:" in line)
    assert "(62 before); new: ['Santo Domingo']; gone: " in destinations  # a city only the renamed flights served goes
    assert "delay rate by month, this data (that model's data):" in output


def test_retrained_service_accepts_the_new_airline_and_city_on_both_routes(retrained_url: str) -> None:
    body = {"flights": [NEW_FLIGHT, {**NEW_FLIGHT, "OPERA": "Sky Airline", "SIGLADES": "Lima"}]}
    answer = fresh().post(f"{retrained_url}/v1/prediction", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert all(0 < flight["probability"] < 1 for flight in answer.json())
    assert fresh().post(f"{retrained_url}/predict", json=body, timeout=30).json()["predict"] in (
        [0, 0],
        [0, 1],
        [1, 0],
        [1, 1],
    )


def test_retrained_service_lists_what_it_learned_on_v1_model_and_the_api_document(
    retrained_url: str, retrained: tuple[Path, str, pd.DataFrame]
) -> None:
    data = retrained[2]
    vocabularies = fresh().get(f"{retrained_url}/v1/model", timeout=10).json()["vocabularies"]
    assert vocabularies["OPERA"] == sorted([*VOCABULARY.airlines, "Arajet"]) == sorted(set(data["OPERA"]))
    assert vocabularies["SIGLADES"] == sorted(set(data["SIGLADES"]))
    assert "Santo Domingo" in vocabularies["SIGLADES"]
    flight = fresh().get(f"{retrained_url}/docs.json", timeout=10).json()["components"]["schemas"]["Flight"]
    assert flight["properties"]["OPERA"]["enum"] == vocabularies["OPERA"]
    assert flight["properties"]["SIGLADES"]["anyOf"][0]["enum"] == vocabularies["SIGLADES"]
    assert "one of the model's 24" in flight["properties"]["OPERA"]["description"]


@pytest.mark.parametrize("route", ["/v1/prediction", "/predict"])
def test_retrained_service_refuses_a_value_it_did_not_learn_naming_the_field(retrained_url: str, route: str) -> None:
    for field, value in (("OPERA", "Pan Am"), ("SIGLADES", "Atlantis")):
        answer = fresh().post(f"{retrained_url}{route}", json={"flights": [{**NEW_FLIGHT, field: value}]}, timeout=30)
        assert answer.status_code == 400
        problem = answer.json()["detail"][0]
        assert problem["loc"] == ["flights", 0, field]
        assert (
            "'Arajet'" in problem["msg"] or "'Santo Domingo'" in problem["msg"]
        )  # the accepted values, the new one too


def test_a_model_that_never_saw_the_new_airline_refuses_it_and_counts_what_it_refused(client: httpx.Client) -> None:
    before = client.get("/v1/monitoring").json()["refused"]
    answer = client.post("/v1/prediction", json={"flights": [NEW_FLIGHT]})
    assert answer.status_code == 400
    assert {tuple(problem["loc"]) for problem in answer.json()["detail"]} == {
        ("flights", 0, "OPERA"),
        ("flights", 0, "SIGLADES"),
    }
    after = client.get("/v1/monitoring").json()["refused"]
    assert after == {"airline": before["airline"] + 1, "destination": before["destination"] + 1}
