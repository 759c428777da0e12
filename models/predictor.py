"""The trained classifier with its decision threshold: what train.py saves and service.py loads."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
from threadpoolctl import ThreadpoolController

from models.features import FEATURES, FlightColumns, encode
from models.schema import AIRLINES, DESTINATIONS

if TYPE_CHECKING:  # unpickling the model imports scikit-learn in the workers; `bentoml serve` itself never needs it
    from sklearn.ensemble import HistGradientBoostingClassifier

MODEL_FILE = "classifier.joblib"
REQUIRED_METADATA = ("threshold", "features", "vocabularies", "metrics", "training_data", "versions")


class ModelError(Exception):
    """A stored model the service must not serve; the message says why and how to fix it."""


@dataclass(frozen=True)
class DelayPredictor:
    """Delay probabilities and 0/1 labels for batches of flights."""

    classifier: "HistGradientBoostingClassifier"
    threshold: float
    threads: ThreadpoolController = field(default_factory=ThreadpoolController, repr=False, compare=False)

    def probabilities(self, columns: FlightColumns) -> np.ndarray:
        """P(delay over 15 minutes) of each flight in the batch.

        On one OpenMP thread: the service's workers already fill the cores, and OpenMP's idle
        threads spinning in every small predict tripled the CPU time per request under load.
        The limit is set per call because it holds only in the calling thread.
        """
        with self.threads.limit(limits=1, user_api="openmp"):
            return self.classifier.predict_proba(encode(columns))[:, 1]

    def labels(self, probabilities: np.ndarray) -> np.ndarray:
        """1 where the probability reaches the threshold chosen at training time."""
        return (probabilities >= self.threshold).astype(np.int64)

    def save(self, directory: str) -> None:
        """Write the classifier into a model-store directory (train.py's `bentoml.models.create`)."""
        joblib.dump(self.classifier, f"{directory}/{MODEL_FILE}")

    @classmethod
    def load(cls, directory: str, metadata: dict[str, Any]) -> "DelayPredictor":
        """Load a stored model, refusing one whose metadata does not match this code."""
        check_metadata(metadata)
        return cls(classifier=joblib.load(f"{directory}/{MODEL_FILE}"), threshold=float(metadata["threshold"]))


def expected_spec() -> dict[str, Any]:
    """The feature specification and vocabularies this code encodes; stored with every model."""
    return {
        "features": list(FEATURES),
        "vocabularies": {"OPERA": list(AIRLINES), "SIGLADES": list(DESTINATIONS), "TIPOVUELO": ["I", "N"]},
    }


def check_metadata(metadata: dict[str, Any]) -> None:
    """Raise ModelError unless the metadata has every field and the encoder's exact specification."""
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelError(f"model metadata lacks {', '.join(missing)}; retrain with `python train.py`")
    for key, expected in expected_spec().items():
        if metadata[key] != expected:
            raise ModelError(f"model {key} do not match this code's encoder; retrain with `python train.py`")
    threshold = metadata["threshold"]
    if not isinstance(threshold, float) or not 0 < threshold < 1:
        raise ModelError(f"model threshold {threshold!r} is not a probability; retrain with `python train.py`")
