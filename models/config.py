"""Constants shared by training and serving, and the one settings object read from the environment."""

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

MODEL_NAME = "flight_delay"
PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DATA_PATH = PROJECT_DIR / "data" / "dataset_SCL.csv"

SEED = 42
TEST_SIZE = 0.33  # share of calendar days held out for evaluation
CV_FOLDS = 5  # folds of the out-of-fold predictions that choose the threshold
CALIBRATION_BINS = 10  # equal-count bins of the calibration error and the reliability diagram
TARGET_RECALL = 0.65  # share of delayed flights the served threshold must catch on training data
DELAY_MINUTES = 15  # a flight is late when it leaves more than this after schedule

MAX_FLIGHTS = 1_000  # flights per request
PREDICTION_ROUTES = ("/v1/prediction", "/predict")


class Settings(BaseSettings):
    """Serving knobs, read from FLIGHT_DELAY_* environment variables.

    The defaults are the fast configuration measured in the README's stress-test section.
    """

    model_config = SettingsConfigDict(env_prefix="FLIGHT_DELAY_")

    workers: int | Literal["cpu_count"] = "cpu_count"
    batching: bool = True
    greedy_batching: bool = True  # cap BentoML's learned batching wait: see serving/batching.py
    max_batch_size: int = 256
    max_latency_ms: int = 10_000  # lower, BentoML's latency estimate sheds requests that would be fast
    max_in_flight: int = 512  # per worker; beyond it requests are shed at once with 503 (Retry-After)
    shed_after_ms: int = 1_000  # while a request has waited longer for its answer, new ones get 503
    timeout_s: int = 30
    max_body_bytes: int = 1_048_576  # 1,000 flights with every field take about 120 KB
    access_log: bool = False
    tracing_sample_rate: float = 0.0
    untraced_routes: list[str] = ["/v1/prediction", "/predict", "/health", "/v1/model"]
    metrics: bool = True  # /metrics, with the adaptive-batching and process metrics
    gc_freeze: bool = True
    lean_route: bool = True  # /v1/prediction without BentoML's per-request framework: see serving/lean_route.py

    def lean_route_applies(self) -> bool:
        """Whether /v1/prediction takes the lean path: asked for, and nothing it would skip is on
        (the access log, or tracing of that route)."""
        traced = self.tracing_sample_rate > 0 and PREDICTION_ROUTES[0] not in self.untraced_routes
        return self.lean_route and not self.access_log and not traced
