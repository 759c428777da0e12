"""The feature encoder: the same numbers for a flight whether it comes from the API or the dataset."""

from datetime import datetime

import numpy as np
import pandas as pd
from helpers import REQUESTS, VOCABULARY
from hypothesis import given
from hypothesis import strategies as st

from models.features import FEATURES, FlightColumns, encode, minutes

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
