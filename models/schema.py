"""Request and response models of the prediction API; `request_models` fits them to a model's vocabulary."""

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
)
from typing_extensions import TypedDict  # pydantic reads field descriptions of this one on Python < 3.12

from models.config import DELAY_MINUTES, MAX_FLIGHTS

SCHEDULE_FORMATS = ("%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S")  # the dataset's own, as strptime writes them
CANONICAL_SCHEDULE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}(:[0-9]{2})?")  # them, two digits each


def parse_schedule(value: Any) -> Any:
    """Accept only the dataset's own date-time formats, two ASCII digits to each part (four to the
    year) and one space between date and time, so '2017-02-30', a bare date, '08:3' (read as 08:03
    by strptime, a truncated 08:30 perhaps) or any other white space there is refused.

    Parsed by `datetime.fromisoformat` (C), since `strptime` (pure Python) was about two thirds of
    validating flights (docs/performance.md); the same dates and times as strptime with
    SCHEDULE_FORMATS on every string the pattern admits (a property test).
    """
    if not isinstance(value, str):
        return value  # pydantic then reports the wrong type
    if CANONICAL_SCHEDULE.fullmatch(value):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass  # an impossible date or time
    raise ValueError("must be a real date-time written 'YYYY-MM-DD HH:MM' or 'YYYY-MM-DD HH:MM:SS', two digits each")


# How the API document describes a date-time: the pattern above, not JSON Schema's RFC 3339
# `date-time` (2017-03-14T08:30:00Z), which clients generated from the document would send and get 400 for.
Schedule = Annotated[
    datetime,
    WithJsonSchema({"type": "string", "pattern": f"^{CANONICAL_SCHEDULE.pattern}$"}),
]


# OPERA and SIGLADES are any text in Flight and Outcome: `request_models` narrows them to the
# vocabulary of the model being served.
class Flight(BaseModel):
    """One scheduled departure from SCL; the optional fields sharpen the prediction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    OPERA: str = Field(description="Operating airline.", examples=["Grupo LATAM"])
    TIPOVUELO: Literal["I", "N"] = Field(description="I: international, N: national.", examples=["N"])
    MES: int = Field(strict=True, ge=1, le=12, description="Month of the scheduled departure.", examples=[3])
    fecha_i: Annotated[Schedule | None, BeforeValidator(parse_schedule)] = Field(
        default=None,
        alias="Fecha-I",
        strict=True,
        description="Scheduled departure, 'YYYY-MM-DD HH:MM[:SS]'; its month must equal MES.",
        examples=["2017-03-14 08:30"],
    )
    SIGLADES: str | None = Field(default=None, description="Destination city.", examples=["Antofagasta"])

    @field_validator("fecha_i")
    @classmethod
    def _month_matches_mes(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        month = info.data.get("MES")  # absent when MES itself failed; that error is reported already
        if value is not None and month is not None and value.month != month:
            raise ValueError(f"Fecha-I is in month {value.month} but MES is {month}")
        return value


class PlainFlight(msgspec.Struct, forbid_unknown_fields=True):
    """Flight's fields as msgspec decodes them, for the prediction route's fast path
    (models.features.FlightColumns.from_json): at least as strict as Flight, so what it accepts Flight
    accepts with the same values (a property test), and anything else is left to Flight's verdict.

    msgspec because it decodes JSON into these in C, about a tenth of pydantic's time for the same
    flights (docs/performance.md): pydantic's verdict was the largest cost of a 100-flight request."""

    OPERA: str
    TIPOVUELO: Literal["I", "N"]
    MES: Annotated[int, msgspec.Meta(ge=1, le=12)]
    fecha_i: str | None = msgspec.field(default=None, name="Fecha-I")  # checked by FlightColumns.from_json
    SIGLADES: str | None = None


class PlainRequest(msgspec.Struct, forbid_unknown_fields=True):
    """PredictionRequest as msgspec decodes it (see PlainFlight)."""

    flights: Annotated[list[PlainFlight], msgspec.Meta(min_length=1, max_length=MAX_FLIGHTS)]


class Prediction(TypedDict):
    """The answer for one flight.

    A typed dict, not a model: much cheaper to build per flight, and serialized by pydantic's Rust
    core (measured in docs/performance.md), while the schema (and so the API document) stays the same.
    """

    delay: Annotated[
        int, Field(ge=0, le=1, description="1 when the flight is predicted to leave over 15 minutes late.")
    ]
    probability: Annotated[float, Field(ge=0, le=1, description="Predicted probability of a delay over 15 minutes.")]


class ChallengeResponse(BaseModel):
    """Response of the LATAM challenge's /predict contract."""

    predict: list[Literal[0, 1]] = Field(description="One 0/1 delay label per flight, in request order.")


# The one example: API docs default, README curl, tests and the load test's first body.
EXAMPLE_REQUEST: dict[str, list[dict[str, Any]]] = {
    "flights": [
        {"OPERA": "Grupo LATAM", "TIPOVUELO": "N", "MES": 3},
        {
            "OPERA": "Sky Airline",
            "TIPOVUELO": "I",
            "MES": 7,
            "Fecha-I": "2017-07-21 19:40",
            "SIGLADES": "Lima",
        },
    ]
}

FlightList = Annotated[
    list[Flight],
    Field(
        min_length=1,
        max_length=MAX_FLIGHTS,
        description=f"1 to {MAX_FLIGHTS} flights.",
        json_schema_extra={"example": EXAMPLE_REQUEST["flights"]},  # prefills /docs
    ),
]


class PredictionRequest(BaseModel):
    """Body of both prediction routes: the flights to predict, nothing else."""

    model_config = ConfigDict(extra="forbid")

    flights: FlightList


# An outcome further from its schedule than this is refused as implausible: in the 2017 data the
# earliest departure was 14 minutes early and the latest 161 minutes late; a day covers every delay
# an airline reports as one (later, the flight is cancelled and rescheduled).
OUTCOME_WINDOW_MINUTES = (-60, 24 * 60)


class Outcome(Flight):
    """A flight that has left: the prediction fields with Fecha-I required, and its real departure."""

    fecha_i: Annotated[Schedule, BeforeValidator(parse_schedule)] = Field(
        alias="Fecha-I",
        strict=True,
        description="Scheduled departure, 'YYYY-MM-DD HH:MM[:SS]'; its month must equal MES.",
        examples=["2017-03-14 08:30"],
    )
    fecha_o: Annotated[Schedule, BeforeValidator(parse_schedule)] = Field(
        alias="Fecha-O",
        strict=True,
        description="Real departure, 'YYYY-MM-DD HH:MM[:SS]': from 1 hour before Fecha-I to 1 day after.",
        examples=["2017-03-14 08:52"],
    )

    @field_validator("fecha_o")
    @classmethod
    def _plausible(cls, value: datetime, info: ValidationInfo) -> datetime:
        scheduled = info.data.get("fecha_i")  # absent when Fecha-I itself failed
        if scheduled is not None:
            minutes = (value - scheduled).total_seconds() / 60
            early, late = OUTCOME_WINDOW_MINUTES
            if not early <= minutes <= late:
                raise ValueError(
                    f"Fecha-O is {minutes:+.0f} minutes from Fecha-I; an outcome lies {-early} minutes before "
                    f"to {late} minutes after its schedule"
                )
        return value

    @property
    def delayed(self) -> bool:
        """Whether it left more than DELAY_MINUTES late, the training target."""
        return (self.fecha_o - self.fecha_i).total_seconds() > DELAY_MINUTES * 60


EXAMPLE_OUTCOMES: dict[str, list[dict[str, Any]]] = {
    "flights": [
        {"OPERA": "Sky Airline", "TIPOVUELO": "I", "MES": 7, "Fecha-I": "2017-07-21 19:40", "SIGLADES": "Lima",
         "Fecha-O": "2017-07-21 20:02"},
    ]
}  # fmt: skip


class OutcomeRequest(BaseModel):
    """Body of POST /v1/outcomes: flights that have left, in the dataset's own column names."""

    model_config = ConfigDict(extra="forbid")

    flights: list[Outcome] = Field(
        min_length=1,
        max_length=MAX_FLIGHTS,
        description=f"1 to {MAX_FLIGHTS} flights that have left.",
        json_schema_extra={"example": EXAMPLE_OUTCOMES["flights"]},  # type: ignore[dict-item]  # JSON, typed Any here
    )


@dataclass(frozen=True)
class RequestModels:
    """The request bodies of one model: its airlines and destinations are the only ones they accept."""

    flight: type[Flight]
    prediction_request: type[PredictionRequest]
    outcome: type[Outcome]
    outcome_request: type[OutcomeRequest]


def request_models(airlines: tuple[str, ...], destinations: tuple[str, ...]) -> RequestModels:
    """The request bodies accepting exactly these airlines and destinations (a model's vocabulary), as
    enums: validation, the 400 that lists the accepted values, and the OpenAPI document all follow them."""
    fields: dict[str, Any] = {
        "OPERA": (
            Literal[airlines],
            Field(description=f"Operating airline, one of the model's {len(airlines)}.", examples=[airlines[0]]),
        ),
        "SIGLADES": (
            Literal[destinations] | None,
            Field(
                default=None,
                description=f"Destination city, one of the model's {len(destinations)}.",
                examples=[destinations[0]],
            ),
        ),
    }
    flight = create_model("Flight", __base__=Flight, __doc__=Flight.__doc__, **fields)
    outcome = create_model("Outcome", __base__=Outcome, __doc__=Outcome.__doc__, **fields)
    flights = PredictionRequest.model_fields["flights"]
    outcomes = OutcomeRequest.model_fields["flights"]
    return RequestModels(
        flight=flight,
        prediction_request=create_model(
            "PredictionRequest",
            __base__=PredictionRequest,
            __doc__=PredictionRequest.__doc__,
            flights=(list[flight], flights),  # type: ignore[valid-type]  # a class made at run time
        ),
        outcome=outcome,
        outcome_request=create_model(
            "OutcomeRequest",
            __base__=OutcomeRequest,
            __doc__=OutcomeRequest.__doc__,
            flights=(list[outcome], outcomes),  # type: ignore[valid-type]  # same
        ),
    )
