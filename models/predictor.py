"""The trained classifier with its decision threshold: what train.py saves and service.py loads.

scikit-learn fits the trees; the service evaluates the same trees with ONNX Runtime. scikit-learn's
`predict_proba` has a fixed cost of about 0.66 ms per call (a Python loop over the 100 trees),
nearly all of a small batch's time; ONNX Runtime's is about 0.012 ms (docs/performance.md), and
its probabilities differ from scikit-learn's by under 1e-6 (train.py measures the gap on every
held-out flight, refuses to save above MAX_PROBABILITY_GAP and stores it; tests/test_train.py
checks it again). The store keeps both models, so the check can be repeated on any stored model,
and the image carries no scikit-learn.
"""

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from models.features import FEATURES, FLIGHT_TYPES, FlightColumns, Vocabulary, encode

if TYPE_CHECKING:  # scikit-learn is for training: the service never imports it
    from sklearn.ensemble import HistGradientBoostingClassifier

SKLEARN_FILE = "classifier.joblib"  # the fitted model: the reference for checks and analyses
ONNX_FILE = "classifier.onnx"  # the same trees for ONNX Runtime: what the service evaluates
ONNX_INPUT, ONNX_OUTPUT = "features", "log_odds"
NODE_ATTRIBUTES = ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
                   "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true")  # fmt: skip
MAX_PROBABILITY_GAP = 1e-5  # allowed difference between the two evaluators' probabilities
REQUIRED_METADATA = (
    "threshold",
    "features",
    "vocabularies",
    "metrics",
    "training_data",
    "versions",
    "evaluator",
    "reference",
)


class ModelError(Exception):
    """A stored model the service must not serve; the message says why and how to fix it."""


class Classifier(Protocol):
    """What the predictor needs of a model: P(class) per row of a feature matrix."""

    def predict_proba(self, features: np.ndarray) -> np.ndarray: ...


class OnnxClassifier:
    """The trees in ONNX Runtime, on one thread: the service's workers already fill the cores."""

    def __init__(self, model: bytes) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Probabilities of both classes, like scikit-learn's: the trees' summed log-odds (float32;
        the features are small integers or NaN, exact in it) through the logistic in float64."""
        (log_odds,) = self.session.run([ONNX_OUTPUT], {ONNX_INPUT: features.astype(np.float32)})
        delayed = 1 / (1 + np.exp(-log_odds[:, 0].astype(np.float64)))
        return np.column_stack([1 - delayed, delayed])


@dataclass(frozen=True)
class DelayPredictor:
    """Delay probabilities and 0/1 labels for batches of flights."""

    classifier: Classifier
    threshold: float
    vocabulary: Vocabulary  # the airlines and destinations it was trained to know

    def probabilities(self, columns: FlightColumns) -> np.ndarray:
        """P(delay over 15 minutes) of each flight in the batch."""
        return self.scores(encode(columns))

    def scores(self, features: np.ndarray) -> np.ndarray:
        """P(delay over 15 minutes) of each row of an encoded feature matrix (models.features.encode)."""
        return self.classifier.predict_proba(features)[:, 1]

    def labels(self, probabilities: np.ndarray) -> np.ndarray:
        """1 where the probability reaches the threshold chosen at training time."""
        return (probabilities >= self.threshold).astype(np.int64)

    @cached_property
    def onnx_model(self) -> bytes:
        """The scikit-learn model's trees as ONNX (training only), converted once: train.py checks
        these very bytes against scikit-learn and `save` writes them."""
        return to_onnx(self.classifier)

    def compiled(self) -> "DelayPredictor":
        """The same predictor evaluated by ONNX Runtime (training only: it converts a scikit-learn model)."""
        return DelayPredictor(OnnxClassifier(self.onnx_model), self.threshold, self.vocabulary)

    def save(self, directory: str) -> None:
        """Write both models into a model-store directory (train.py's `bentoml.models.create`)."""
        import joblib

        joblib.dump(self.classifier, f"{directory}/{SKLEARN_FILE}")
        with open(f"{directory}/{ONNX_FILE}", "wb") as file:
            file.write(self.onnx_model)

    @classmethod
    def load(cls, directory: str, metadata: dict[str, Any]) -> "DelayPredictor":
        """The served predictor of a stored model (ONNX Runtime), refusing one whose metadata does not fit this code."""
        check_metadata(metadata)
        with open(f"{directory}/{ONNX_FILE}", "rb") as file:
            classifier = OnnxClassifier(file.read())
        return cls(classifier, float(metadata["threshold"]), Vocabulary.from_metadata(metadata["vocabularies"]))

    @classmethod
    def load_reference(cls, directory: str, metadata: dict[str, Any]) -> "DelayPredictor":
        """The scikit-learn predictor of a stored model: the reference the served one is checked against."""
        import joblib

        check_metadata(metadata)
        classifier = joblib.load(f"{directory}/{SKLEARN_FILE}")
        return cls(classifier, float(metadata["threshold"]), Vocabulary.from_metadata(metadata["vocabularies"]))


def to_onnx(classifier: "HistGradientBoostingClassifier") -> bytes:
    """The fitted trees as one ONNX TreeEnsembleRegressor whose output is each flight's log-odds.

    Written here rather than with skl2onnx 1.20, whose converter hands numpy scalars to protobuf,
    which refuses some of them ("Value out of range: 0") depending on the fitted trees. It reads
    scikit-learn 1.9's fitted internals, as skl2onnx does: `_baseline_prediction` and, per tree,
    the `nodes` array (feature_idx, num_threshold, missing_go_to_left, left, right, is_leaf, value).
    tests/test_train.py and tests/test_real_data.py compare the result with scikit-learn's own
    probabilities on every flight, so a scikit-learn that moves them fails there.
    """
    from onnx import TensorProto, helper

    nodes: dict[str, Any] = {name: [] for name in NODE_ATTRIBUTES}
    leaves: dict[str, Any] = {"target_treeids": [], "target_nodeids": [], "target_ids": [], "target_weights": []}
    for tree_id, (tree,) in enumerate(classifier._predictors):  # one tree per boosting iteration (two classes)
        for node_id, node in enumerate(tree.nodes):
            if node["is_categorical"]:
                raise ValueError("categorical splits are not converted; the encoder gives none")
            leaf = bool(node["is_leaf"])
            for name, value in (
                ("nodes_treeids", tree_id),
                ("nodes_nodeids", node_id),
                ("nodes_featureids", 0 if leaf else int(node["feature_idx"])),
                ("nodes_modes", "LEAF" if leaf else "BRANCH_LEQ"),  # x <= threshold goes left, as in scikit-learn
                ("nodes_values", 0.0 if leaf else float(node["num_threshold"])),
                ("nodes_truenodeids", 0 if leaf else int(node["left"])),
                ("nodes_falsenodeids", 0 if leaf else int(node["right"])),
                ("nodes_missing_value_tracks_true", 0 if leaf else int(node["missing_go_to_left"])),  # NaN goes left
            ):
                nodes[name].append(value)
            if leaf:
                for name, value in zip(leaves, (tree_id, node_id, 0, float(node["value"])), strict=True):
                    leaves[name].append(value)
    trees = helper.make_node(
        "TreeEnsembleRegressor",
        [ONNX_INPUT],
        [ONNX_OUTPUT],
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function="SUM",
        base_values=[float(classifier._baseline_prediction.ravel()[0])],
        post_transform="NONE",
        **nodes,
        **leaves,
    )
    graph = helper.make_graph(
        [trees],
        "flight_delay",
        [helper.make_tensor_value_info(ONNX_INPUT, TensorProto.FLOAT, [None, classifier.n_features_in_])],
        [helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    return bytes(model.SerializeToString())


def probability_gap(served: DelayPredictor, reference: DelayPredictor, columns: FlightColumns) -> float:
    """The largest difference between two predictors' probabilities on the same flights."""
    return float(np.abs(served.probabilities(columns) - reference.probabilities(columns)).max())


def expected_spec() -> dict[str, Any]:
    """The feature specification this code encodes; stored with every model."""
    return {"features": list(FEATURES)}


def vocabulary_problem(vocabularies: Any) -> str | None:
    """What is wrong with a stored vocabulary (models.features.Vocabulary.metadata), or None."""
    if not isinstance(vocabularies, dict) or vocabularies.get("TIPOVUELO") != list(FLIGHT_TYPES):
        return "is not a vocabulary of this code's encoder"
    for column in ("OPERA", "SIGLADES"):
        values = vocabularies.get(column)
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            return f"has no list of {column} names"
        if len(set(values)) != len(values):
            return f"repeats {column} names"
    return None


def check_metadata(metadata: dict[str, Any]) -> None:
    """Raise ModelError unless the metadata has every field and the encoder's exact specification."""
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelError(f"model metadata lacks {', '.join(missing)}; retrain with `make train`")
    for key, expected in expected_spec().items():
        if metadata[key] != expected:
            raise ModelError(f"model {key} do not match this code's encoder; retrain with `make train`")
    if problem := vocabulary_problem(metadata["vocabularies"]):
        raise ModelError(f"model vocabularies {problem}; retrain with `make train`")
    threshold = metadata["threshold"]
    if not isinstance(threshold, float) or not 0 < threshold < 1:
        raise ModelError(f"model threshold {threshold!r} is not a probability; retrain with `make train`")
