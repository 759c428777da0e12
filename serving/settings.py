"""The serving settings, read from FLIGHT_DELAY_* environment variables, and the service's route names."""

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, PositiveInt, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

PREDICTION_ROUTES = ("/v1/prediction", "/predict")
OUTCOMES_ROUTE = "/v1/outcomes"
# Why GET /v1/monitoring and POST /v1/outcomes answer 404 with monitoring off (and the API document says).
MONITORING_OFF = "monitoring is off: FLIGHT_DELAY_MONITORING and FLIGHT_DELAY_METRICS"
LOG_FILES = 4  # files each worker's prediction log rotates over
# The shortest outcomes token accepted. 16 hex digits are 64 bits: guessing at 100,000 requests a
# second would take about 3 million years on average. `openssl rand -hex 32`, as the docs say, gives 64.
MIN_TOKEN_CHARACTERS = 16
SECRET_SETTINGS = ("outcomes_token",)  # never echoed in a refusal
# A batch of up to this many flights runs on the event loop; a larger one in a thread. Measured paired
# against the thread for every batch (docs/performance.md): open-loop p99 8.2 against 17.1 ms at
# 1,500 req/s and 47 against 84 ms at 2,700; closed-loop throughput unchanged. With 64, the reference
# load's batches ran on the loop too and closed-loop throughput fell to 0.89x.
INLINE_FLIGHTS = 8
# A request of up to INLINE_FLIGHTS flights, with at most this many requests in flight in its worker
# (itself included) once the requests read in the same turn of the event loop are in, is run as its
# own batch at once instead of through BentoML's dispatcher (serving/layer.py, `unbatched`).
FEW_REQUESTS = 4
# A request of at least this many flights is run as its own batch, without BentoML's dispatcher
# (serving/internals.py, `BatchedApi.infer`): it is a batch already. Paired against the dispatcher for
# every request (docs/performance.md): 1,000 flights a request 1.09x; with 64, 100 flights a request
# fell to 0.75x, since the dispatcher's joined batches saved more thread hops than it cost.
ALONE_FLIGHTS = 500


class Settings(BaseSettings):
    """Serving knobs, read from FLIGHT_DELAY_* environment variables and checked at start
    (`Settings.from_environment`).

    The defaults are the fast configuration measured in the README's stress-test section.
    """

    # allow_inf_nan: `inf` would pass every positive bound and turn a time-out or page interval into never
    model_config = SettingsConfigDict(env_prefix="FLIGHT_DELAY_", allow_inf_nan=False)

    # The models of the BentoML store it serves (serving/wiring.py `served_models`): the champion answers
    # (the store's latest unless named); a challenger, when named, scores the same flights off the
    # request path and is judged against it on their outcomes (serving/challenger.py).
    model: str = "latest"
    challenger: str | None = None
    # At most 256: BentoML starts every worker asked for at once, and 999999 was accepted.
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["cpu_count"] = "cpu_count"
    batching: bool = True
    greedy_batching: bool = True  # cap BentoML's learned batching wait: see serving/internals.py
    # Flights per adaptive batch (BentoML refuses 1): two of the largest requests. A request larger than
    # the batch is split into parts run one after another; at 256, 1,000-flight requests did 0.56x and
    # 100-flight ones 0.63x what they do at 2,048, with one flight per request the same
    # (loadtest/results/shapes-2026-12-05, docs/performance.md).
    max_batch_size: Annotated[int, Field(ge=2)] = 2_048
    max_latency_ms: PositiveInt = 10_000  # lower, BentoML's latency estimate sheds requests that would be fast
    max_in_flight: PositiveInt = 512  # per worker; beyond it requests are shed at once with 503 (Retry-After)
    # Request bodies a worker holds admitted at once; past it a request is shed with 503 (a lone one is
    # always admitted). 1 MiB is 8 1,000-flight requests: about 0.2 s of work (a lone one takes 26.5 ms,
    # loadtest/results/reliability/lone.json), under shed_after_ms; 64 connections' 100-flight requests fit twice.
    max_bytes_in_flight: Annotated[int, Field(ge=65_536)] = 1_048_576
    shed_after_ms: PositiveInt = 1_000  # while a request has waited longer for its answer, new ones get 503
    timeout_s: PositiveInt = 30
    max_body_bytes: PositiveInt = 1_048_576  # 1,000 flights with every field take about 120 KB
    # Connections (serving/connections.py). Idle: uvicorn's own keep-alive default. Request: a
    # 1,000-flight body (120 KB) over "Slow 3G" (400 kbit/s, 2 s round trips) takes 2.4 s to send
    # plus about 5 round trips of TCP slow start and the request's own: about 14 s.
    idle_timeout_s: PositiveFloat = 5.0
    request_timeout_s: PositiveFloat = 20.0
    max_connections: PositiveInt = 4_096  # per worker, and at most its open-file limit less a reserve
    # An answer whose client takes none of it for this long is abandoned and its connection aborted
    # (nginx's send_timeout is 60 s). A client on "Slow 3G" takes 50 KB a second: any live client
    # takes a byte within a second, and 20 s outlasts TCP's retransmission back-off up to its fifth try.
    send_timeout_s: PositiveFloat = 20.0
    # Unsent answer bytes the stalled connections of a worker may hold together (serving/connections.py):
    # with the per-connection bound, a worker's connections hold at most about 128 MB (docs/reliability.md).
    max_unsent_mb: PositiveInt = 64
    access_log: bool = False
    tracing_sample_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    untraced_routes: list[str] = ["/v1/prediction", "/predict", "/health", "/v1/model"]
    metrics: bool = True  # /metrics, with the adaptive-batching and process metrics
    # Each worker reads the pod's metric files for its /metrics page and for GET /v1/monitoring at most
    # this often (serving/metrics.py, serving/monitoring.py): a flood of either costs one read a second.
    # 0: every request reads them (the tests, which read right after acting).
    # At most a minute: Prometheus scrapes every 15 s or so, and GET /v1/monitoring is read after acting.
    metrics_page_s: Annotated[float, Field(ge=0, le=60)] = 1.0
    monitoring: bool = True  # drift and expected quality of the predictions (serving/monitoring.py); needs metrics
    outcomes_token: SecretStr | None = None  # Bearer token of POST /v1/outcomes; without one the route answers 403
    # The prediction log (serving/prediction_log.py): share of prediction requests logged, where, and
    # the disk each worker's log may take (in LOG_FILES rotated files). At 5,000 one-flight requests
    # a second, 1% is 3,000 records (about 300 bytes each: 0.9 MB) a minute: on 2 workers, 256 MB
    # each keeps the last 9 hours or so.
    log_sample: Annotated[float, Field(ge=0, le=1)] = 0.01
    log_dir: Path = Path("monitoring")  # bentoml.monitor's default place: relative to the working directory
    log_max_mb: Annotated[int, Field(ge=LOG_FILES)] = 256
    gc_freeze: bool = True
    lean_route: bool = True  # /v1/prediction without BentoML's per-request framework: see serving/layer.py

    @field_validator("challenger", mode="before")
    @classmethod
    def _no_challenger_when_empty(cls, value: object) -> object:
        """An empty FLIGHT_DELAY_CHALLENGER is none: `kubectl set env ... FLIGHT_DELAY_CHALLENGER=` drops
        the challenger an image was built with."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_dir", mode="before")
    @classmethod
    def _named_log_dir(cls, value: object) -> object:
        """Refuse an empty FLIGHT_DELAY_LOG_DIR, which would be the working directory; FLIGHT_DELAY_LOG_SAMPLE=0
        is how the log is turned off."""
        if isinstance(value, str) and not value.strip():
            raise ValueError("a directory: it is empty (FLIGHT_DELAY_LOG_SAMPLE=0 turns the log off)")
        return value

    @field_validator("outcomes_token", mode="before")
    @classmethod
    def _usable_token(cls, value: object) -> object:
        """Strip the whitespace around the token (a token file's newline); refuse an empty, short or
        non-printable one, which would let anyone in (an empty token matched `Bearer` alone) or no one."""
        if not isinstance(value, str):
            return value
        token = value.strip()
        if not token:
            raise ValueError(f"a token of at least {MIN_TOKEN_CHARACTERS} printable characters: it is empty")
        if not token.isprintable() or not token.isascii() or any(character.isspace() for character in token):
            raise ValueError("a token of printable ASCII characters without spaces: it holds others")
        if len(token) < MIN_TOKEN_CHARACTERS:
            raise ValueError(f"a token of at least {MIN_TOKEN_CHARACTERS} characters: it has {len(token)}")
        return token

    @classmethod
    def from_environment(cls) -> "Settings":
        """The settings, or BadSettingError with one line per bad variable: its name, its value and what
        is accepted (a crash-looping pod shows that line, not a traceback)."""
        try:
            return cls()
        except ValidationError as exc:
            problems: dict[str, list[str]] = {}
            for error in exc.errors(include_url=False):
                message = error["msg"].removeprefix("Value error, ")  # pydantic's prefix of a validator's words
                problems.setdefault(str(error["loc"][0]), []).append(message[0].lower() + message[1:])
            raise BadSettingError(
                "\n".join(refusal(field, " or ".join(messages)) for field, messages in problems.items())
            ) from None
        except SettingsError as exc:  # a list that is not JSON
            field = str(exc).split('"')[1] if '"' in str(exc) else "?"
            raise BadSettingError(refusal(field, "a JSON list of strings")) from None

    def make_log_dir(self) -> None:
        """Make the prediction log's directory when the log is on, or BadSettingError if it cannot be written
        (checked at start: a worker would otherwise fail at its first logged request)."""
        if not self.log_sample:
            return
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if not os.access(self.log_dir, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as exc:
            raise BadSettingError(refusal("log_dir", f"a directory it can write ({exc.strerror})")) from None

    def lean_route_applies(self) -> bool:
        """Whether /v1/prediction takes the lean path: asked for, batched (it hands flights to BentoML's
        batching dispatcher), and nothing it would skip is on (the access log, or tracing of that route)."""
        traced = self.tracing_sample_rate > 0 and PREDICTION_ROUTES[0] not in self.untraced_routes
        return self.lean_route and self.batching and not self.access_log and not traced


class BadSettingError(ValueError):
    """A FLIGHT_DELAY_* variable holds a value the service does not accept."""


def refusal(field: str, accepted: str) -> str:
    """The one line that refuses a setting; a secret's value is not shown."""
    variable = f"FLIGHT_DELAY_{field.upper()}"
    # pydantic-settings reads the name in any case, as it was set
    value = next((value for name, value in os.environ.items() if name.upper() == variable), "")
    shown = f"<{len(value)} characters, not shown>" if field in SECRET_SETTINGS else repr(value)
    return f"{variable}={shown} is not accepted: {accepted}"


def settings_or_exit() -> Settings:
    """The settings in force, with the prediction log's directory made; or the process exits with one
    line per bad variable (a crash-looping pod shows that line, not a traceback)."""
    try:
        settings = Settings.from_environment()
        settings.make_log_dir()
    except BadSettingError as exc:
        raise SystemExit("\n".join(f"refusing to start: {line}" for line in str(exc).splitlines())) from None
    return settings
