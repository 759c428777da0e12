"""The one feature encoder: raw flight fields in, the model's feature matrix out, for training and serving alike."""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from models.schema import Flight

if TYPE_CHECKING:  # pandas is for training only: importing it would add half a second to every service start
    import pandas as pd

# Column order of the feature matrix. NaN marks an optional field the caller did not give,
# which HistGradientBoosting routes natively, so one model serves flights with and without them.
# Airline and destination are plain integer codes: declaring them categorical made sklearn add an
# OrdinalEncoder that tripled the cost of predicting a small batch, for no gain in ROC AUC.
FEATURES: tuple[str, ...] = (
    "airline",  # code in the model's Vocabulary
    "international",  # 1 for TIPOVUELO I
    "month",  # 1..12
    "hour",  # of the scheduled departure
    "minute_of_day",
    "weekday",  # Monday 0
    "day_of_month",
    "day_of_year",
    "destination",  # code in the model's Vocabulary
)

# The inputs monitored for drift (serving/monitoring.py), read as categories (Vocabulary.monitored
# gives each one's number of values); a NaN (an optional field not given) counts in one more slot.
# minute_of_day and day_of_year are finer copies of hour and of month and day: not monitored, by design.
MONITORED: tuple[str, ...] = ("airline", "international", "month", "hour", "weekday", "day_of_month", "destination")
FLIGHT_TYPES: tuple[str, ...] = ("I", "N")


@dataclass(frozen=True)
class Vocabulary:
    """The airlines (OPERA) and destination cities (SIGLADES) a model knows: learned by train.py from
    its data, stored with the model, and the only values its service accepts. A value's code is its
    position here."""

    airlines: tuple[str, ...]
    destinations: tuple[str, ...]
    airline_code: dict[str, int] = field(init=False, repr=False, compare=False)
    destination_code: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "airline_code", {name: code for code, name in enumerate(self.airlines)})
        object.__setattr__(self, "destination_code", {name: code for code, name in enumerate(self.destinations)})

    @classmethod
    def learn(cls, frame: "pd.DataFrame", min_flights: int) -> "Vocabulary":
        """Every airline and destination with at least `min_flights` flights in the data, sorted."""

        def kept(column: str) -> tuple[str, ...]:
            counts = frame[column].value_counts()
            return tuple(sorted(str(value) for value in counts[counts >= min_flights].index))

        return cls(kept("OPERA"), kept("SIGLADES"))

    @classmethod
    def from_metadata(cls, vocabularies: dict[str, Any]) -> "Vocabulary":
        """The vocabulary a model stored (its metadata's `vocabularies`)."""
        return cls(tuple(vocabularies["OPERA"]), tuple(vocabularies["SIGLADES"]))

    def metadata(self) -> dict[str, list[str]]:
        """What the model stores, under `vocabularies`: also what /v1/model shows."""
        return {"OPERA": list(self.airlines), "SIGLADES": list(self.destinations), "TIPOVUELO": list(FLIGHT_TYPES)}

    def monitored(self) -> dict[str, int]:
        """The number of values of each MONITORED input, in its order."""
        return {
            "airline": len(self.airlines),
            "international": 2,
            "month": 13,  # 1..12; slot 0 unused
            "hour": 24,
            "weekday": 7,
            "day_of_month": 32,  # 1..31; slot 0 unused
            "destination": len(self.destinations),
        }

    def known(self, frame: "pd.DataFrame") -> np.ndarray:
        """Which dataset rows have an airline and a destination this vocabulary knows."""
        return (frame["OPERA"].isin(self.airline_code) & frame["SIGLADES"].isin(self.destination_code)).to_numpy()


NAT = np.iinfo(np.int64).min  # numpy's NaT as an integer of datetime64
UNIX_DAY = datetime(1970, 1, 1).toordinal()


def minutes(scheduled: datetime) -> int:
    """Minutes since 1970 (seconds dropped), what numpy makes of a datetime as datetime64[m]: by hand,
    because numpy converting datetime objects took 0.9 us each, most of the columns' time."""
    return (scheduled.toordinal() - UNIX_DAY) * 1440 + scheduled.hour * 60 + scheduled.minute


@dataclass(frozen=True)
class FlightColumns:
    """A batch of flights as parallel arrays: the encoder's only input."""

    airline: np.ndarray  # int codes of the Vocabulary
    international: np.ndarray  # bool
    month: np.ndarray  # int 1..12
    scheduled: np.ndarray  # datetime64[m], NaT where not given
    destination: np.ndarray  # float codes of the Vocabulary, NaN where not given

    @classmethod
    def from_flights(cls, flights: Sequence[Flight], vocabulary: Vocabulary) -> "FlightColumns":
        """Columns of API flights validated against `vocabulary`, in one pass over the batch."""
        destination_code = vocabulary.destination_code
        return cls(
            airline=np.array([vocabulary.airline_code[f.OPERA] for f in flights], dtype=np.int64),
            international=np.array([f.TIPOVUELO == "I" for f in flights], dtype=bool),
            month=np.array([f.MES for f in flights], dtype=np.int64),
            scheduled=np.array([NAT if (d := f.fecha_i) is None else minutes(d) for f in flights], dtype=np.int64).view(
                "datetime64[m]"
            ),
            destination=np.array(
                [np.nan if f.SIGLADES is None else destination_code[f.SIGLADES] for f in flights],
                dtype=np.float64,
            ),
        )

    @classmethod
    def from_frame(cls, frame: "pd.DataFrame", vocabulary: Vocabulary) -> "FlightColumns":
        """Columns of dataset rows (see models.data.load_flights) whose airline and destination the
        vocabulary knows (`Vocabulary.known`); the month comes from Fecha-I."""
        scheduled = frame["Fecha-I"].to_numpy(dtype="datetime64[m]")
        return cls(
            airline=frame["OPERA"].map(vocabulary.airline_code).to_numpy(dtype=np.int64),
            international=(frame["TIPOVUELO"] == "I").to_numpy(dtype=bool),
            month=scheduled.astype("datetime64[M]").astype(np.int64) % 12 + 1,
            scheduled=scheduled,
            destination=frame["SIGLADES"].map(vocabulary.destination_code).to_numpy(dtype=np.float64),
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


def category_counts(features: np.ndarray, sizes: dict[str, int]) -> list[np.ndarray]:
    """Flights per value of each MONITORED input (in its order; `sizes`: Vocabulary.monitored) in a
    feature matrix, the last slot counting flights without it: one bincount per input."""
    counts = []
    for name in MONITORED:
        size = sizes[name]
        values = features[:, FEATURES.index(name)]
        slots = np.where(np.isnan(values), size, values).astype(np.int64)
        counts.append(np.bincount(slots, minlength=size + 1))
    return counts
