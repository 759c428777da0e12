"""The one feature encoder: raw flight fields in, the model's feature matrix out, for training and serving alike."""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from models.schema import AIRLINES, DESTINATIONS, Flight

if TYPE_CHECKING:  # pandas is for training only: importing it would add half a second to every service start
    import pandas as pd

# Column order of the feature matrix. NaN marks an optional field the caller did not give,
# which HistGradientBoosting routes natively, so one model serves flights with and without them.
# Airline and destination are plain integer codes: declaring them categorical made sklearn add an
# OrdinalEncoder that tripled the cost of predicting a small batch, for no gain in ROC AUC.
FEATURES: tuple[str, ...] = (
    "airline",  # code in AIRLINES
    "international",  # 1 for TIPOVUELO I
    "month",  # 1..12
    "hour",  # of the scheduled departure
    "minute_of_day",
    "weekday",  # Monday 0
    "day_of_month",
    "day_of_year",
    "destination",  # code in DESTINATIONS
)

# The inputs monitored for drift (serving/monitoring.py), read as categories: each one's number of
# values; a NaN (an optional field not given) counts in one more slot. minute_of_day and day_of_year
# are finer copies of hour and of month and day: not monitored, by design.
MONITORED: dict[str, int] = {
    "airline": len(AIRLINES),
    "international": 2,
    "month": 13,  # 1..12; slot 0 unused
    "hour": 24,
    "weekday": 7,
    "day_of_month": 32,  # 1..31; slot 0 unused
    "destination": len(DESTINATIONS),
}
_MONITORED_COLUMNS = [(FEATURES.index(name), size) for name, size in MONITORED.items()]

_AIRLINE_CODE = {name: code for code, name in enumerate(AIRLINES)}
_DESTINATION_CODE = {name: code for code, name in enumerate(DESTINATIONS)}


@dataclass(frozen=True)
class FlightColumns:
    """A batch of flights as parallel arrays: the encoder's only input."""

    airline: np.ndarray  # int codes into AIRLINES
    international: np.ndarray  # bool
    month: np.ndarray  # int 1..12
    scheduled: np.ndarray  # datetime64[m], NaT where not given
    destination: np.ndarray  # float codes into DESTINATIONS, NaN where not given

    @classmethod
    def from_flights(cls, flights: Sequence[Flight]) -> "FlightColumns":
        """Columns of validated API flights, in one pass over the batch."""
        return cls(
            airline=np.array([_AIRLINE_CODE[f.OPERA] for f in flights], dtype=np.int64),
            international=np.array([f.TIPOVUELO == "I" for f in flights], dtype=bool),
            month=np.array([f.MES for f in flights], dtype=np.int64),
            scheduled=np.array([f.fecha_i or "NaT" for f in flights], dtype="datetime64[m]"),
            destination=np.array(
                [np.nan if f.SIGLADES is None else _DESTINATION_CODE[f.SIGLADES] for f in flights],
                dtype=np.float64,
            ),
        )

    @classmethod
    def from_frame(cls, frame: "pd.DataFrame") -> "FlightColumns":
        """Columns of dataset rows (see models.data.load_flights); the month comes from Fecha-I."""
        scheduled = frame["Fecha-I"].to_numpy(dtype="datetime64[m]")
        return cls(
            airline=frame["OPERA"].map(_AIRLINE_CODE).to_numpy(dtype=np.int64),
            international=(frame["TIPOVUELO"] == "I").to_numpy(dtype=bool),
            month=scheduled.astype("datetime64[M]").astype(np.int64) % 12 + 1,
            scheduled=scheduled,
            destination=frame["SIGLADES"].map(_DESTINATION_CODE).to_numpy(dtype=np.float64),
        )

    def without_optional(self) -> "FlightColumns":
        """The same flights as a caller who gives only the required fields would send them."""
        return replace(
            self,
            scheduled=np.full_like(self.scheduled, np.datetime64("NaT")),
            destination=np.full_like(self.destination, np.nan),
        )


def encode(columns: FlightColumns) -> np.ndarray:
    """Feature matrix (rows x FEATURES) of a batch, computed with whole-array numpy operations."""
    scheduled = columns.scheduled
    missing = np.isnat(scheduled)
    day = scheduled.astype("datetime64[D]")
    minute_of_day = (scheduled - day).astype(np.int64).astype(np.float64)
    day_of_month = (day - scheduled.astype("datetime64[M]")).astype(np.int64) + 1.0
    day_of_year = (day - scheduled.astype("datetime64[Y]")).astype(np.int64) + 1.0
    weekday = (day.astype(np.int64) + 3) % 7.0  # 1970-01-01 was a Thursday
    timed = np.column_stack([minute_of_day // 60, minute_of_day, weekday, day_of_month, day_of_year])
    timed[missing] = np.nan
    return np.column_stack(
        [
            columns.airline.astype(np.float64),
            columns.international.astype(np.float64),
            columns.month.astype(np.float64),
            timed,
            columns.destination,
        ]
    )


def category_counts(features: np.ndarray) -> list[np.ndarray]:
    """Flights per value of each MONITORED input (in its order) in a feature matrix, the last slot
    counting flights without it: one bincount per input."""
    counts = []
    for column, size in _MONITORED_COLUMNS:
        values = features[:, column]
        slots = np.where(np.isnan(values), size, values).astype(np.int64)
        counts.append(np.bincount(slots, minlength=size + 1))
    return counts
