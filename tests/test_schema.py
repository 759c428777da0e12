"""Request validation rules of models.schema, and the one shared example."""

import json
from datetime import datetime
from typing import Any

import pytest
from helpers import REQUESTS
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from models.config import PROJECT_DIR
from models.schema import (
    EXAMPLE_OUTCOMES,
    EXAMPLE_REQUEST,
    SCHEDULE_FORMATS,
    OutcomeRequest,
    parse_schedule,
    request_models,
)

Flight, PredictionRequest = REQUESTS.flight, REQUESTS.prediction_request

VALID = {"OPERA": "Grupo LATAM", "TIPOVUELO": "N", "MES": 3}


def test_request_models_accept_exactly_the_vocabulary_given() -> None:
    models = request_models(("Arajet", "Sky Airline"), ("Punta Cana", "Santo Domingo"))
    flight = {"OPERA": "Arajet", "TIPOVUELO": "I", "MES": 3, "SIGLADES": "Santo Domingo"}
    assert models.prediction_request.model_validate({"flights": [flight]}).flights[0].OPERA == "Arajet"
    for field, value in (("OPERA", "Grupo LATAM"), ("SIGLADES", "Lima")):
        with pytest.raises(ValidationError) as error:
            models.prediction_request.model_validate({"flights": [{**flight, field: value}]})
        assert [e["loc"] for e in error.value.errors()] == [("flights", 0, field)]
    schema = models.prediction_request.model_json_schema()["$defs"]["Flight"]["properties"]
    assert schema["OPERA"]["enum"] == ["Arajet", "Sky Airline"]
    assert schema["SIGLADES"]["anyOf"][0]["enum"] == ["Punta Cana", "Santo Domingo"]
    outcome = {**flight, "Fecha-I": "2017-03-01 10:00", "Fecha-O": "2017-03-01 10:30"}
    assert models.outcome_request.model_validate({"flights": [outcome]}).flights[0].delayed
    with pytest.raises(ValidationError):
        models.outcome_request.model_validate({"flights": [{**outcome, "OPERA": "Grupo LATAM"}]})


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
        ({"Fecha-I": "2017-03-14\u202808:30"}, "Fecha-I"),  # a line separator: it would split a log line
        ({"Fecha-I": "2017-03-14  08:30"}, "Fecha-I"),
        ({"Fecha-I": "2017-03-14\n08:30"}, "Fecha-I"),
        ({"Fecha-I": "2017-03-14 08:3"}, "Fecha-I"),  # strptime read it as 08:03
        ({"Fecha-I": "2017-3-14 8:30"}, "Fecha-I"),
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


def strptime_verdict(value: str) -> datetime | None:
    """The reference parse_schedule must agree with: the dataset's formats read by strptime, and
    written back the same, two digits to each part (strptime alone reads '08:3' as 08:03)."""
    for fmt in SCHEDULE_FORMATS:
        try:
            parsed = datetime.strptime(value, fmt)
        except ValueError:
            continue
        seconds = f":{parsed.second:02d}" if fmt.endswith("%S") else ""
        written = (
            f"{parsed.year:04d}-{parsed.month:02d}-{parsed.day:02d} {parsed.hour:02d}:{parsed.minute:02d}{seconds}"
        )
        return parsed if written == value else None
    return None


def fast_verdict(value: str) -> datetime | None:
    try:
        return parse_schedule(value)  # type: ignore[no-any-return]
    except ValueError:
        return None


# Strings near the dataset's formats: each part a number that may be out of range, too short or too
# long, other separators, seconds or not, and odd characters (other digits, signs, spaces).
PART = st.one_of(
    st.integers(0, 99).map(lambda n: f"{n:02d}"), st.integers(0, 9).map(str), st.text("0123456789٣+- T", max_size=3)
)
NEAR_SCHEDULES = st.builds(
    "{}{}{}{}{}{}{}{}{}{}".format,
    st.one_of(st.integers(0, 9999).map(lambda n: f"{n:04d}"), st.text("0123456789+-", max_size=5)),
    st.sampled_from(["-", "-", "-", "/", ""]),
    PART,
    st.just("-"),
    PART,
    st.sampled_from([" ", " ", " ", "T", "  ", "_"]),
    PART,
    st.just(":"),
    PART,
    st.one_of(st.just(""), PART.map(lambda part: f":{part}"), st.sampled_from([":00.5", "Z", "+00:00", " "])),
)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(NEAR_SCHEDULES, st.text(max_size=25)))
def test_schedule_parser_agrees_with_strptime_on_the_dataset_formats(value: str) -> None:
    assert fast_verdict(value) == strptime_verdict(value)


@pytest.mark.parametrize(
    "value",
    [
        "2017-03-14 24:00",
        "2017-02-29 10:00",
        "2016-02-29 10:00",
        "2017-03-14 08:30:60",
        "2017-3-14 8:30",
        "2017-03-14  08:30",
        "2017-03-14\u202808:30",
        "2017-03-14\t08:30",
        "2017-03-14\u300008:30",
        "2017-03-14 08:3",
        "2017-3-4 8:3:7",
        "2017-03-14 08:30:5",
        "0999-03-14 08:30",
    ],
)
def test_schedule_parser_agrees_with_strptime_at_the_edges(value: str) -> None:
    assert fast_verdict(value) == strptime_verdict(value)


@pytest.mark.parametrize(
    ("model", "key"),
    [(PredictionRequest, "fecha_i"), (OutcomeRequest, "fecha_i"), (OutcomeRequest, "fecha_o")],
)
def test_a_fields_python_name_in_json_is_refused_as_an_unknown_field(model: type[BaseModel], key: str) -> None:
    example = EXAMPLE_OUTCOMES if model is OutcomeRequest else EXAMPLE_REQUEST
    flight = {**example["flights"][-1], key: "2017-07-21 19:40"}
    with pytest.raises(ValidationError) as error:
        model.model_validate_json(json.dumps({"flights": [flight]}))
    assert [(e["type"], e["loc"]) for e in error.value.errors()] == [("extra_forbidden", ("flights", 0, key))]
