"""Request validation rules of models.schema, and the one shared example."""

import json
from typing import Any

import pytest
from pydantic import ValidationError

from models.config import PROJECT_DIR
from models.schema import AIRLINES, DESTINATIONS, EXAMPLE_REQUEST, Flight, PredictionRequest

VALID = {"OPERA": "Grupo LATAM", "TIPOVUELO": "N", "MES": 3}


def test_vocabularies_have_the_dataset_sizes() -> None:
    assert len(set(AIRLINES)) == 23
    assert len(set(DESTINATIONS)) == 62


def test_example_request_is_valid() -> None:
    request = PredictionRequest.model_validate(EXAMPLE_REQUEST)
    assert request.flights[1].SIGLADES == "Lima"


@pytest.mark.parametrize(
    "schedule", ["2017-03-14 08:30", "2017-03-14 08:30:00", "2017-03-01 00:00", "2017-03-31 23:59:59"]
)
def test_flight_schedule_accepts_dataset_formats(schedule: str) -> None:
    assert Flight.model_validate({**VALID, "Fecha-I": schedule}).fecha_i is not None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"Fecha-I": "2017-03-14"}, "Fecha-I"),
        ({"Fecha-I": "2017-03-14T08:30"}, "Fecha-I"),
        ({"Fecha-I": "14/03/2017 08:30"}, "Fecha-I"),
        ({"Fecha-I": "2017-02-30 10:00", "MES": 2}, "Fecha-I"),
        ({"Fecha-I": "2017-04-14 10:00"}, "Fecha-I"),
        ({"MES": "3"}, "MES"),
        ({"MES": 12.5}, "MES"),
        ({"MES": 13}, "MES"),
        ({"TIPOVUELO": "i"}, "TIPOVUELO"),
        ({"OPERA": "Grupo Latam"}, "OPERA"),
        ({"SIGLADES": "lima"}, "SIGLADES"),
        ({"VUELO": 1}, "VUELO"),
    ],
)
def test_flight_rejects_invalid_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as error:
        Flight.model_validate({**VALID, **changes})
    assert [e["loc"][0] for e in error.value.errors()] == [field]


def test_flight_month_mismatch_names_both_fields() -> None:
    with pytest.raises(ValidationError, match="Fecha-I is in month 4 but MES is 3"):
        Flight.model_validate({**VALID, "Fecha-I": "2017-04-01 10:00"})


def test_flight_optional_fields_default_to_absent() -> None:
    flight = Flight.model_validate(VALID)
    assert flight.fecha_i is None
    assert flight.SIGLADES is None


def test_example_request_is_the_one_in_readme_and_loadtest() -> None:
    compact = json.dumps(EXAMPLE_REQUEST, separators=(",", ":"))
    assert compact in (PROJECT_DIR / "README.md").read_text()
    assert compact in (PROJECT_DIR / "loadtest" / "script.lua").read_text()
