"""The one feature encoder: raw flight fields in, the model's feature matrix out, for training and serving alike."""

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from models.schema import Flight, PlainFlight, PlainRequest, PredictionRequest

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

    def knows(self, flight: Flight) -> bool:
        """Whether a flight's airline and city (if given) are this vocabulary's: `known` for one API flight."""
        return flight.OPERA in self.airline_code and (
            flight.SIGLADES is None or flight.SIGLADES in self.destination_code
        )


PLAIN_REQUEST = msgspec.json.Decoder(PlainRequest)
# Below this many bytes of body (about 25 flights), pydantic validating the flights and
# FlightColumns.from_flights are as fast as FlightColumns.from_json, whose numpy checks cost ~17 us a call.
PLAIN_BODY_BYTES = 2_048
# Fecha-I written 'YYYY-MM-DD HH:MM:SS', byte by byte: the lowest and highest byte allowed at each place
# (tens of month, day, hour, minute and second at most 1, 3, 2, 5 and 5); ':SS' may be left out.
LOWEST = np.frombuffer(b"0000-00-00 00:00:00", dtype=np.uint8)
HIGHEST = np.frombuffer(b"9999-19-39 29:59:59", dtype=np.uint8)
# Year, month, day, hour and minute from the digits at NUMBER_AT: one matrix product, in float64 (exact
# for these sums under 10,000) because numpy multiplies integer matrices without BLAS, at 2.5x the time.
NUMBER_AT = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15])
PLACES = np.array([[1000, 0, 0, 0, 0], [100, 0, 0, 0, 0], [10, 0, 0, 0, 0], [1, 0, 0, 0, 0],
                   [0, 10, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 10, 0, 0], [0, 0, 1, 0, 0],
                   [0, 0, 0, 10, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 10], [0, 0, 0, 0, 1]], dtype=np.float64)  # fmt: skip
ZEROS = ord("0") * PLACES.sum(axis=0)
DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
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
        return cls(
            **coded(flights, vocabulary),
            scheduled=np.array([NAT if (d := f.fecha_i) is None else minutes(d) for f in flights], dtype=np.int64).view(
                "datetime64[m]"
            ),
        )

    @classmethod
    def from_json(cls, body: bytes, vocabulary: Vocabulary) -> "FlightColumns | None":
        """Columns of a prediction request's JSON body, validated in one pass with whole-array checks,
        when every flight is plainly valid (known airline and destination, Fecha-I written
        'YYYY-MM-DD HH:MM[:SS]' in its month); None otherwise, and pydantic's Flight judges the body.
        What this accepts, Flight accepts with the same columns (a property test)."""
        try:
            flights = PLAIN_REQUEST.decode(body).flights
            columns = coded(flights, vocabulary)
        except (msgspec.DecodeError, KeyError):  # msgspec's ValidationError is a DecodeError
            return None
        texts = [f.fecha_i for f in flights]
        given = np.array([text is not None for text in texts], dtype=bool)
        scheduled = np.full(len(flights), NAT, dtype=np.int64)
        if given.any():
            written = schedule_minutes([text for text in texts if text is not None], columns["month"][given])
            if written is None:
                return None
            scheduled[given] = written
        return cls(**columns, scheduled=scheduled.view("datetime64[m]"))

    @classmethod
    def concatenate(cls, parts: Sequence["FlightColumns"]) -> "FlightColumns":
        """One batch of several requests' flights, in order."""
        return cls(*(np.concatenate([getattr(part, column.name) for part in parts]) for column in fields(cls)))

    def __len__(self) -> int:
        return len(self.airline)

    def __getitem__(self, flights: slice) -> "FlightColumns":
        """Some of the flights (BentoML's dispatcher splits a request larger than a batch's room)."""
        return FlightColumns(*(getattr(self, column.name)[flights] for column in fields(self)))

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


def coded(flights: Sequence[Flight | PlainFlight], vocabulary: Vocabulary) -> dict[str, np.ndarray]:
    """Every column but the schedule, of flights validated by pydantic or decoded by msgspec: the
    vocabulary's codes (KeyError for a name it lacks), the flight type and the month."""
    destination_code = vocabulary.destination_code
    return {
        "airline": np.array([vocabulary.airline_code[f.OPERA] for f in flights], dtype=np.int64),
        "international": np.array([f.TIPOVUELO == "I" for f in flights], dtype=bool),
        "month": np.array([f.MES for f in flights], dtype=np.int64),
        "destination": np.array(
            [np.nan if f.SIGLADES is None else destination_code[f.SIGLADES] for f in flights], dtype=np.float64
        ),
    }


def schedule_minutes(texts: list[str], months: np.ndarray) -> np.ndarray | None:
    """Minutes since 1970 of Fecha-I texts, as `minutes` gives them, when each is 'YYYY-MM-DD HH:MM' or
    'YYYY-MM-DD HH:MM:SS' in ASCII, a real date and time, in its flight's month (`months`, 1..12); else
    None. The same verdicts as models.schema.parse_schedule with Flight's month check (a property
    test), checked byte by byte over the whole batch at once."""
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    try:  # 19 bytes each, a shorter text padded with zero bytes (a longer one is refused below)
        written = np.array(texts, dtype="S19").view(np.uint8).reshape(len(texts), 19)
    except UnicodeEncodeError:
        return None
    allowed = (written >= LOWEST) & (written <= HIGHEST)
    short = lengths == 16
    allowed[:, 16:] |= short[:, None] & (written[:, 16:] == 0)
    if not (allowed.all() and (short | (lengths == 19)).all()):
        return None
    year, month, day, hour, minute = (written[:, NUMBER_AT] @ PLACES - ZEROS).astype(np.int64).T
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    last_day = DAYS_IN_MONTH[months] + ((months == 2) & leap)
    if not ((month == months) & (year >= 1) & (day >= 1) & (day <= last_day) & (hour <= 23)).all():
        return None
    days = ((year - 1970) * 12 + month - 1).astype("datetime64[M]").astype("datetime64[D]").view(np.int64) + day - 1
    return days * 1440 + hour * 60 + minute


Flights = FlightColumns | list[Flight]  # a request's flights: columns read straight from JSON, or pydantic's
# Up to this many pydantic flights are encoded row by row (`encode_rows`): numpy's cost per call on
# arrays of one element made the columns and `encode` 22 us of a one-flight request's 45 in-process.
ROW_FLIGHTS = 8
NO_SCHEDULE = (np.nan,) * 5  # hour, minute_of_day, weekday, day_of_month, day_of_year of a flight without Fecha-I


@dataclass(frozen=True)
class FlightReader:
    """Reads the prediction route's bodies and joins requests into batches, for one model's vocabulary:
    a large body that is plainly valid goes straight to columns (FlightColumns.from_json), anything
    else is judged by pydantic (`request_model`), whose verdict and problems the client sees."""

    request_model: type[PredictionRequest]
    vocabulary: Vocabulary

    def read(self, body: bytes) -> Flights:
        """A body's flights; pydantic's ValidationError when it is not a valid request."""
        if len(body) >= PLAIN_BODY_BYTES and (columns := FlightColumns.from_json(body, self.vocabulary)) is not None:
            return columns
        return self.request_model.model_validate_json(body or b"{}").flights  # type: ignore[no-any-return]

    def join(self, parts: Sequence[Flights]) -> Flights:
        """Several requests' flights as one batch, in order."""
        lists = [part for part in parts if isinstance(part, list)]
        if len(lists) == len(parts):
            return [flight for part in lists for flight in part]
        return FlightColumns.concatenate([self.columns(part) for part in parts])

    def features(self, flights: Flights) -> np.ndarray:
        """A batch's feature matrix: a few API flights row by row, any other batch through its columns."""
        if isinstance(flights, list) and len(flights) <= ROW_FLIGHTS:
            return encode_rows(flights, self.vocabulary)
        return encode(self.columns(flights))

    def columns(self, flights: Flights) -> FlightColumns:
        """A batch's flights as columns."""
        if isinstance(flights, FlightColumns):
            return flights
        return FlightColumns.from_flights(flights, self.vocabulary)


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


def encode_rows(flights: Sequence[Flight], vocabulary: Vocabulary) -> np.ndarray:
    """encode(FlightColumns.from_flights(flights, vocabulary)), the same matrix bit for bit (a property
    test), computed row by row with Python's datetime: for a few flights, a tenth of numpy's time."""
    airline_code, destination_code = vocabulary.airline_code, vocabulary.destination_code
    rows = []
    for f in flights:
        scheduled = f.fecha_i
        timed = (
            NO_SCHEDULE
            if scheduled is None
            else (
                scheduled.hour,
                scheduled.hour * 60 + scheduled.minute,
                scheduled.weekday(),
                scheduled.day,
                scheduled.timetuple().tm_yday,
            )
        )
        destination = np.nan if f.SIGLADES is None else destination_code[f.SIGLADES]
        rows.append((airline_code[f.OPERA], f.TIPOVUELO == "I", f.MES, *timed, destination))
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))


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
