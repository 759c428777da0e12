"""Operator mistakes: the service refuses to start, in one line that says how to fix it, rather than serve."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import VOCABULARY, bentoml_serve, stand_in_reference

from loadtest.servers import SERVERS
from models.config import PROJECT_DIR
from models.predictor import ONNX_FILE, expected_spec
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


def store_with_model(store: Path, metadata: dict[str, Any], classifier: str = "'not a model'") -> Path:
    """A model store holding one flight_delay model with the given metadata.

    classifier: Python code whose value is stored as the served model file (a string literal is written
    as text, a scikit-learn model converted for ONNX Runtime). scikit-learn and the converter are
    imported for a model only: they are most of the 2 s of CPU the helper takes.
    """
    fitting = (
        "from models.predictor import to_onnx\n"
        "import numpy as np\n"
        "from sklearn.ensemble import HistGradientBoostingClassifier\n"
    )
    code = (
        "import bentoml, json, sys\n"
        + ("" if classifier.startswith(("'", '"')) else fitting)
        + f"classifier = {classifier}\n"
        "with bentoml.models.create('flight_delay', metadata=json.loads(sys.argv[1])) as ref:\n"
        f"    path = ref.path + '/{ONNX_FILE}'\n"
        "    open(path, 'wb').write(classifier.encode() if isinstance(classifier, str) else to_onnx(classifier))\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, json.dumps(metadata)],
        cwd=PROJECT_DIR,
        env={**os.environ, "BENTOML_HOME": str(store)},
        check=True,
        capture_output=True,
        timeout=120,
    )
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
    broken = "HistGradientBoostingClassifier(max_iter=2).fit(np.arange(60.0).reshape(20, 3), [0, 1] * 10)"
    store = store_with_model(tmp_path / "store", metadata, broken)
    log = tmp_path / "serve.log"
    with bentoml_serve(log, env={"BENTOML_HOME": str(store)}) as (url, _process):
        answer = httpx.post(f"{url}/v1/prediction", json=EXAMPLE_REQUEST, timeout=30)
        health = httpx.get(f"{url}/health", timeout=10)
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error, see the server log", "detail": []}
    for leak in ("Traceback", "File ", ".py", "/", "onnxruntime", "numpy", "features"):
        assert leak not in answer.text
    assert health.status_code == 200
    assert "invalid dimensions for input: features" in log.read_text(), "the server log must say what failed"
