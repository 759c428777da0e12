"""Operator mistakes: the service refuses to start, in one line that says how to fix it, rather than serve."""

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pytest
from helpers import VOCABULARY, bentoml_serve, stand_in_reference
from sklearn.ensemble import HistGradientBoostingClassifier

from loadtest.probes import fresh
from loadtest.servers import SERVERS
from models.config import MODEL_NAME, PROJECT_DIR
from models.predictor import ONNX_FILE, expected_spec, to_onnx
from models.schema import EXAMPLE_REQUEST

pytestmark = pytest.mark.integration


def serve(store: Path) -> subprocess.CompletedProcess[str]:
    """Run `bentoml serve` on a model store until it exits (it must, at once)."""
    return subprocess.run(
        [*SERVERS["service"], "0"],
        cwd=PROJECT_DIR,
        env={**os.environ, "BENTOML_HOME": str(store)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def store_with_model(store: Path, metadata: dict[str, Any], classifier: object = None) -> Path:
    """A model store holding one flight_delay model, as its latest, with the given metadata.

    classifier: a fitted scikit-learn model, stored converted for ONNX Runtime; None stores a file that
    is not a model. Made in this process's store (bentoml.models.create), copied to `store`, and
    deleted from this process's store again.
    """
    with bentoml.models.create(MODEL_NAME, metadata=metadata) as ref:
        Path(ref.path, ONNX_FILE).write_bytes(b"not a model" if classifier is None else to_onnx(classifier))
    models, version = store / "models" / MODEL_NAME, str(ref.tag.version)
    shutil.copytree(ref.path, models / version)
    (models / "latest").write_text(version)
    bentoml.models.delete(ref.tag)
    return store


def test_serve_without_model_refuses_and_says_how_to_train(tmp_path: Path) -> None:
    result = serve(tmp_path)
    assert result.returncode != 0
    assert "no flight_delay model in the BentoML store; train one first: make train" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (
            {"threshold": 0.5},
            "model metadata lacks features, vocabularies, metrics, training_data, versions, evaluator",
        ),
        (
            {
                "threshold": 0.5,
                "metrics": {},
                "training_data": {},
                "versions": {},
                "evaluator": {},
                "reference": stand_in_reference(),
                "vocabularies": VOCABULARY.metadata(),
                **expected_spec(),
                "features": ["x"],
            },
            "model features do not match this code's encoder",
        ),
    ],
    ids=["missing fields", "feature mismatch"],
)
def test_serve_with_incompatible_model_refuses(tmp_path: Path, metadata: dict[str, Any], message: str) -> None:
    result = serve(store_with_model(tmp_path, metadata))
    assert result.returncode != 0
    assert "refusing to serve flight_delay:" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failure_inside_the_model_answers_500_without_internals(tmp_path: Path) -> None:
    """A classifier fitted on 3 features passes the metadata check and fails on every prediction."""
    metadata = {
        "threshold": 0.5,
        "metrics": {},
        "training_data": {},
        "versions": {},
        "evaluator": {},
        "reference": stand_in_reference(),
        "vocabularies": VOCABULARY.metadata(),
        **expected_spec(),
    }
    broken = HistGradientBoostingClassifier(max_iter=2).fit(np.arange(60.0).reshape(20, 3), [0, 1] * 10)
    store = store_with_model(tmp_path / "store", metadata, broken)
    log = tmp_path / "serve.log"
    with bentoml_serve(log, env={"BENTOML_HOME": str(store)}) as (url, _process):
        answer = fresh().post(f"{url}/v1/prediction", json=EXAMPLE_REQUEST, timeout=30)
        health = fresh().get(f"{url}/health", timeout=10)
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error, see the server log", "detail": []}
    for leak in ("Traceback", "File ", ".py", "/", "onnxruntime", "numpy", "features"):
        assert leak not in answer.text
    assert health.status_code == 200
    assert "invalid dimensions for input: features" in log.read_text(), "the server log must say what failed"
