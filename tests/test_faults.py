"""Operator mistakes: the service refuses to start, in one line that says how to fix it, rather than serve."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from models.config import PROJECT_DIR
from models.predictor import MODEL_FILE, expected_spec

pytestmark = pytest.mark.integration


def serve(store: Path) -> subprocess.CompletedProcess[str]:
    """Run `bentoml serve` on a model store until it exits (it must, at once)."""
    return subprocess.run(
        [sys.executable, "-m", "bentoml", "serve", "service:FlightDelay", "--host", "127.0.0.1", "--port", "0"],
        cwd=PROJECT_DIR,
        env={**os.environ, "BENTOML_HOME": str(store)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def store_with_model(store: Path, metadata: dict[str, Any]) -> Path:
    """A model store holding one flight_delay model with the given metadata."""
    code = (
        "import bentoml, sys, json\n"
        "with bentoml.models.create('flight_delay', metadata=json.loads(sys.argv[1])) as ref:\n"
        f"    open(ref.path + '/{MODEL_FILE}', 'w').write('not a model')\n"
    )
    import json

    subprocess.run(
        [sys.executable, "-c", code, json.dumps(metadata)],
        env={**os.environ, "BENTOML_HOME": str(store)},
        check=True,
        capture_output=True,
        timeout=120,
    )
    return store


def test_serve_without_model_refuses_and_says_how_to_train(tmp_path: Path) -> None:
    result = serve(tmp_path)
    assert result.returncode != 0
    assert "no flight_delay model in the BentoML store; train one first: python train.py" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"threshold": 0.5}, "model metadata lacks features, vocabularies, metrics, training_data, versions"),
        (
            {
                "threshold": 0.5,
                "metrics": {},
                "training_data": {},
                "versions": {},
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
