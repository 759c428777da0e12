"""Constants of the model's code, shared by training and serving: where data lives, how the model is
trained and judged, and what one request may hold."""

from pathlib import Path

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
