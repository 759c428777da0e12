"""The feature encoder: the same numbers for a flight whether it comes from the API or the dataset."""

import json
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import REQUESTS, VOCABULARY, varied_flights
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from models.features import (
    FEATURES,
    PLAIN_BODY_BYTES,
    ROW_FLIGHTS,
    FlightColumns,
    FlightReader,
    encode,
    encode_rows,
    minutes,
    schedule_minutes,
)
from models.schema import parse_schedule

Flight = REQUESTS.flight


def column(matrix: np.ndarray, name: str) -> np.ndarray:
    """One named feature of an encoded batch."""
    return matrix[:, FEATURES.index(name)]


def test_encode_derives_calendar_features_from_schedule() -> None:
    flight = Flight.model_validate(
        {"OPERA": "Sky Airline", "TIPOVUELO": "I", "MES": 7, "Fecha-I": "2017-07-21 19:40", "SIGLADES": "Lima"}
    )
    row = encode(FlightColumns.from_flights([flight], VOCABULARY))[0]
    expected = {
        "airline": VOCABULARY.airlines.index("Sky Airline"),
        "international": 1,
        "month": 7,
        "hour": 19,
        "minute_of_day": 19 * 60 + 40,
        "weekday": datetime(2017, 7, 21).weekday(),
        "day_of_month": 21,
        "day_of_year": datetime(2017, 7, 21).timetuple().tm_yday,
        "destination": VOCABULARY.destinations.index("Lima"),
    }
    assert dict(zip(FEATURES, row.tolist(), strict=True)) == expected


def test_encode_marks_absent_optional_fields_as_nan() -> None:
    flight = Flight.model_validate({"OPERA": "Grupo LATAM", "TIPOVUELO": "N", "MES": 12})
    row = dict(zip(FEATURES, encode(FlightColumns.from_flights([flight], VOCABULARY))[0].tolist(), strict=True))
    assert row["month"] == 12
    assert row["international"] == 0
    optional = ("hour", "minute_of_day", "weekday", "day_of_month", "day_of_year", "destination")
    assert all(np.isnan(row[name]) for name in optional)


def test_encode_api_and_dataset_rows_agree() -> None:
    rows = pd.DataFrame(
        {
            "Fecha-I": pd.to_datetime(["2017-01-01 00:15:00", "2017-12-31 23:55:00", "2017-02-28 12:00:00"]),
            "OPERA": ["Grupo LATAM", "Copa Air", "Qantas Airways"],
            "TIPOVUELO": ["N", "I", "I"],
            "SIGLADES": ["Arica", "Ciudad de Panama", "Sydney"],
        }
    )
    flights = [
        Flight.model_validate(
            {
                "OPERA": row.OPERA,
                "TIPOVUELO": row.TIPOVUELO,
                "MES": row._1.month,
                "Fecha-I": row._1.strftime("%Y-%m-%d %H:%M"),
                "SIGLADES": row.SIGLADES,
            }
        )
        for row in rows.itertuples()
    ]
    np.testing.assert_array_equal(
        encode(FlightColumns.from_frame(rows, VOCABULARY)), encode(FlightColumns.from_flights(flights, VOCABULARY))
    )


def test_without_optional_keeps_required_features() -> None:
    rows = pd.DataFrame(
        {
            "Fecha-I": pd.to_datetime(["2017-05-03 10:00:00"]),
            "OPERA": ["Avianca"],
            "TIPOVUELO": ["I"],
            "SIGLADES": ["Bogota"],
        }
    )
    columns = FlightColumns.from_frame(rows, VOCABULARY)
    full, required = encode(columns), encode(columns.without_optional())
    for name in ("airline", "international", "month"):
        assert column(full, name) == column(required, name)
    assert np.isnan(column(required, "destination")).all()
    assert not np.isnan(column(full, "destination")).any()


@given(st.lists(st.datetimes() | st.none(), min_size=1, max_size=20))
def test_scheduled_column_is_what_numpy_makes_of_the_datetimes(schedules: list[datetime | None]) -> None:
    flights = [Flight.model_construct(OPERA="Grupo LATAM", TIPOVUELO="N", MES=1, fecha_i=d) for d in schedules]
    expected = np.array([d or "NaT" for d in schedules], dtype="datetime64[m]")  # numpy's own conversion
    np.testing.assert_array_equal(FlightColumns.from_flights(flights, VOCABULARY).scheduled, expected)
    assert all(minutes(d) == expected[i].astype(np.int64) for i, d in enumerate(schedules) if d is not None)


API_FLIGHTS = st.builds(
    lambda airline, international, month, scheduled, destination: Flight.model_construct(
        OPERA=airline, TIPOVUELO="I" if international else "N", MES=month, fecha_i=scheduled, SIGLADES=destination
    ),
    st.sampled_from(VOCABULARY.airlines),
    st.booleans(),
    st.integers(1, 12),
    st.datetimes() | st.none(),
    st.sampled_from(VOCABULARY.destinations) | st.none(),
)


@settings(max_examples=300)
@given(st.lists(API_FLIGHTS, max_size=ROW_FLIGHTS + 2))
def test_a_few_flights_encoded_row_by_row_get_the_encoders_matrix_bit_for_bit(flights: list[Any]) -> None:
    expected = encode(FlightColumns.from_flights(flights, VOCABULARY))
    np.testing.assert_array_equal(encode_rows(flights, VOCABULARY), expected)
    np.testing.assert_array_equal(FlightReader(REQUESTS.prediction_request, VOCABULARY).features(flights), expected)


def columns_equal(a: FlightColumns, b: FlightColumns) -> bool:
    return all(
        np.array_equal(getattr(a, name), getattr(b, name), equal_nan=name in ("scheduled", "destination"))
        for name in ("airline", "international", "month", "scheduled", "destination")
    )


def pydantic_columns(body: bytes) -> FlightColumns | None:
    """What the validated path makes of a body: its columns, or None where pydantic refuses it."""
    try:
        return FlightColumns.from_flights(REQUESTS.prediction_request.model_validate_json(body).flights, VOCABULARY)
    except ValidationError:
        return None


# Fecha-I texts near the valid ones: every place of 'YYYY-MM-DD HH:MM:SS' varied over digits,
# separators, white space, non-ASCII and zero bytes, at every length around 16 and 19.
SCHEDULE_TEXT = st.one_of(
    st.builds(
        lambda y, mo, d, h, mi, s, sep: f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}{s}",
        st.integers(0, 2400) | st.sampled_from([1900, 2000, 2016, 2017, 2100]),
        st.integers(0, 13),
        st.integers(0, 32),
        st.integers(0, 25),
        st.integers(0, 61),
        st.sampled_from(["", ":00", ":59", ":60", ":5", ":599"]) | st.integers(0, 99).map(lambda s: f":{s:02d}"),
        st.sampled_from([" ", "T", "  ", "\u2003", "\t"]),
    ),
    st.text(alphabet="0123456789-: T\x00é", min_size=14, max_size=21),
)
FLIGHT_FIELDS = st.fixed_dictionaries(
    {
        "OPERA": st.sampled_from([*VOCABULARY.airlines[:3], "Unknown Air", 7]),
        "TIPOVUELO": st.sampled_from(["I", "N", "X"]),
        "MES": st.integers(0, 13) | st.sampled_from([True, 7.0, "7", None]),
    },
    optional={
        "Fecha-I": SCHEDULE_TEXT | st.none() | st.just(20170721),
        "SIGLADES": st.sampled_from([*VOCABULARY.destinations[:3], "Atlantis", None, 3]),
        "fecha_i": st.just("2017-07-21 19:40"),
        "extra": st.just(1),
    },
)


@settings(max_examples=400)
@given(st.lists(FLIGHT_FIELDS, min_size=0, max_size=6), st.sampled_from(["", ', "extra": 1', ', "flights": []']))
def test_columns_from_json_accept_only_what_pydantic_accepts_with_the_same_values(
    flights: list[dict[str, object]], tail: str
) -> None:
    body = ('{"flights": ' + json.dumps(flights) + tail + "}").encode()
    fast = FlightColumns.from_json(body, VOCABULARY)
    if fast is not None:
        validated = pydantic_columns(body)
        assert validated is not None, body
        assert columns_equal(fast, validated)


@settings(max_examples=400)
@given(st.lists(SCHEDULE_TEXT, min_size=1, max_size=4), st.integers(1, 12))
def test_schedule_minutes_agree_with_parse_schedule(texts: list[str], month: int) -> None:
    parsed = []
    for text in texts:
        try:
            parsed.append(parse_schedule(text))
        except ValueError:
            parsed.append(None)
    got = schedule_minutes(texts, np.full(len(texts), month))
    plainly = all(isinstance(p, datetime) and p.month == month for p in parsed)
    assert (got is not None) == plainly, texts
    if got is not None:
        assert got.tolist() == [minutes(p) for p in parsed]  # type: ignore[arg-type]  # all datetimes here


def test_valid_flights_are_read_straight_into_columns() -> None:
    """The fast path is taken for the flights clients send, and gives pydantic's columns."""
    flights = varied_flights(500)
    for variant in (flights, [{**f, "Fecha-I": f["Fecha-I"] + ":30"} if "Fecha-I" in f else f for f in flights]):
        body = json.dumps({"flights": variant}).encode()
        fast = FlightColumns.from_json(body, VOCABULARY)
        validated = pydantic_columns(body)
        assert fast is not None and validated is not None
        assert columns_equal(fast, validated)


def test_reader_reads_large_bodies_into_columns_and_small_ones_with_pydantic() -> None:
    reader = FlightReader(REQUESTS.prediction_request, VOCABULARY)
    small, large = (json.dumps({"flights": varied_flights(n)}).encode() for n in (2, 100))
    assert len(small) < PLAIN_BODY_BYTES <= len(large)
    assert isinstance(reader.read(small), list) and isinstance(reader.read(large), FlightColumns)
    refused = json.dumps({"flights": [*varied_flights(99), {"OPERA": "Unknown Air", "TIPOVUELO": "N", "MES": 3}]})
    with pytest.raises(ValidationError) as caught:  # a large invalid body gets pydantic's problems
        reader.read(refused.encode())
    assert [problem["loc"] for problem in caught.value.errors()] == [("flights", 99, "OPERA")]
    joined = reader.join([reader.read(small), reader.read(large), reader.read(small)])
    assert isinstance(joined, FlightColumns) and len(joined) == 104
    everything = pydantic_columns(
        json.dumps({"flights": [*varied_flights(2), *varied_flights(100), *varied_flights(2)]}).encode()
    )
    assert everything is not None and columns_equal(joined, everything)
    assert columns_equal(joined[2:102], reader.columns(reader.read(large)))  # as BentoML's dispatcher splits one
    two = reader.read(small)
    assert isinstance(two, list) and reader.join([two, two]) == [*two, *two]


@pytest.mark.parametrize(
    "body",
    [  # where JSON readers may differ: repeated keys (the last one counts in both), escapes, numbers, bytes
        b'{"flights":[{"OPERA":"Unknown","OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3}]}',
        b'{"flights":[{"OPERA":"Grupo LATAM","OPERA":"Unknown","TIPOVUELO":"N","MES":3}]}',
        b'{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3,"MES":4}]}',
        b'{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3}],'
        b'"flights":[{"OPERA":"Sky Airline","TIPOVUELO":"N","MES":4}]}',
        b'\xef\xbb\xbf{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3}]}',
        b' \n{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3}]} \n',
        b'{"flights":[{"OPERA":"Grupo \\u004cATAM","TIPOVUELO":"N","MES":3}]}',
        b'{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3.0}]}',
        b'{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":true}]}',
        b'{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3e0}]}',
        b'{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":03}]}',
        b'{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3,"Fecha-I":"2017-03-14 08:30","Fecha-I":null}]}',
        b'{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3,"Fecha-I":"2017-03-14\\u002008:30"}]}',
        b'{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3}]}x',
        b'{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3,}]}',
        b'{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3,"SIGLADES":"Lima\\ud800"}]}',
        b'{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3,"SIGLADES":"Lima\xff"}]}',
    ],
)
def test_columns_from_json_agree_with_pydantic_where_json_readers_differ(body: bytes) -> None:
    fast = FlightColumns.from_json(body, VOCABULARY)
    if fast is not None:
        validated = pydantic_columns(body)
        assert validated is not None and columns_equal(fast, validated)
