"""What validating a request costs now that the accepted airlines and cities come from the served
model (models.schema.request_models) instead of constants in code, against the schema of a git
revision that had them as constants, in one process, interleaved.

    .venv/bin/python studies/validation_cost.py [--against 040354c]

Both validate the load test's flights (loadtest/flights.jsonl) with `model_validate_json`, as the
service does; medians of 9 interleaved runs, so the ratio holds on a noisy machine.
"""

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bentoml

from models.config import MODEL_NAME, PROJECT_DIR
from models.features import Vocabulary
from models.schema import request_models


def schema_at(revision: str, folder: Path) -> Any:
    """models/schema.py of `revision`, imported under another name (it imports models.config, unchanged)."""
    text = subprocess.run(
        ["git", "show", f"{revision}:models/schema.py"], cwd=PROJECT_DIR, check=True, capture_output=True, text=True
    ).stdout
    path = folder / "schema_then.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("schema_then", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", default="040354c", help="a revision with the constants (default 040354c)")
    args = parser.parse_args()
    metadata: dict[str, Any] = dict(bentoml.models.get(f"{MODEL_NAME}:latest").info.metadata)
    vocabulary = Vocabulary.from_metadata(metadata["vocabularies"])
    now = request_models(vocabulary.airlines, vocabulary.destinations).prediction_request
    pool = [json.loads(line) for line in (PROJECT_DIR / "loadtest" / "flights.jsonl").read_text().splitlines()]
    with tempfile.TemporaryDirectory() as folder:
        then = schema_at(args.against, Path(folder)).PredictionRequest
        print(f"| flights per request | at {args.against} | now | ratio |")
        print("|---:|---:|---:|---:|")
        for size in (1, 100):
            body = json.dumps({"flights": [pool[i % len(pool)] for i in range(size)]}).encode()
            calls = 2_000 // size + 200
            runs: dict[str, list[float]] = {"then": [], "now": []}
            for _ in range(9):
                for name, model in (("then", then), ("now", now)):
                    started = time.perf_counter()
                    for _ in range(calls):
                        model.model_validate_json(body)
                    runs[name].append((time.perf_counter() - started) / calls * 1e6)
            before, after = statistics.median(runs["then"]), statistics.median(runs["now"])
            print(f"| {size} | {before:.1f} µs | {after:.1f} µs | {after / before:.3f}x |")


if __name__ == "__main__":
    main()
