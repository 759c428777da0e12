"""The prediction log: one record per flight of each sampled request, in BentoML's monitoring format;
bounded on disk and in memory, never blocking a prediction; nothing waiting lost at shutdown."""

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import log_records

from models.config import MODEL_NAME
from models.schema import EXAMPLE_OUTCOMES, EXAMPLE_REQUEST
from serving import prediction_log
from serving.prediction_log import PredictionLog
from serving.settings import LOG_FILES

BODY = json.dumps(EXAMPLE_REQUEST).encode()
ANSWER = json.dumps([{"delay": 0, "probability": 0.25}, {"delay": 1, "probability": 0.5}]).encode()


def opened(tmp_path: Path, **options: Any) -> PredictionLog:
    return PredictionLog(tmp_path, sample=1.0, model="flight_delay:test", worker=3, **options)


def test_log_writes_a_record_per_flight_with_its_inputs_as_sent_and_its_answer(tmp_path: Path) -> None:
    log = opened(tmp_path)
    log.offer("/v1/prediction", "rid-1", BODY, ANSWER, at=0.0)
    log.offer("/predict", "rid-2", BODY, b'{"predict":[0,1]}', at=60.0)
    log.close()
    written = log_records(tmp_path)
    assert [(r["route"], r["request_id"], r["index"]) for r in written] == [
        ("/v1/prediction", "rid-1", 0),
        ("/v1/prediction", "rid-1", 1),
        ("/predict", "rid-2", 0),
        ("/predict", "rid-2", 1),
    ]
    first, second = EXAMPLE_REQUEST["flights"]
    assert written[0] | {"SIGLADES": None} == {  # the first example flight leaves out both optional fields
        "OPERA": first["OPERA"], "TIPOVUELO": first["TIPOVUELO"], "MES": first["MES"], "Fecha-I": None,
        "SIGLADES": None, "delay": 0, "probability": 0.25, "index": 0, "model": "flight_delay:test",
        "route": "/v1/prediction", "timestamp": "1970-01-01T00:00:00+00:00", "request_id": "rid-1", "trace_id": None,
    }  # fmt: skip
    assert {key: written[1][key] for key in second} == second
    assert [r["probability"] for r in written[2:]] == [None, None]  # /predict answers labels only
    assert [r["delay"] for r in written[2:]] == [0, 1]
    assert written[2]["timestamp"] == "1970-01-01T00:01:00+00:00"
    schema = (tmp_path / MODEL_NAME / "schema" / "schema.3.log").read_text().splitlines()
    assert [column["name"] for column in json.loads(schema[0])["columns"]] == [
        *prediction_log.FIELDS, "Fecha-O", "counted", "delay", "probability", "challenger_probability", "model",
        "route", "index",
    ]  # fmt: skip
    assert all("challenger_probability" not in r for r in written)  # no challenger runs


def test_log_writes_outcomes_with_their_departure_and_whether_each_was_counted(tmp_path: Path) -> None:
    flights = [EXAMPLE_OUTCOMES["flights"][0], {**EXAMPLE_OUTCOMES["flights"][0], "OPERA": "Nowhere Air"}]
    answer = {"model": "m", "flights": 1, "delayed": 1, "not_counted": [{"index": 1, "loc": [], "msg": "unknown"}]}
    log = opened(tmp_path)
    log.offer("/v1/outcomes", "rid-3", json.dumps({"flights": flights}).encode(), json.dumps(answer).encode())
    log.close()
    written = log_records(tmp_path)
    assert [(r["OPERA"], r["Fecha-O"], r["counted"], r["delay"], r["probability"]) for r in written] == [
        ("Sky Airline", "2017-07-21 20:02", True, None, None),
        ("Nowhere Air", "2017-07-21 20:02", False, None, None),
    ]
    assert {r["route"] for r in written} == {"/v1/outcomes"}


def test_log_escapes_the_characters_a_line_reader_splits_at(tmp_path: Path) -> None:
    odd = {**EXAMPLE_REQUEST["flights"][0], "OPERA": "A\u2028B\u2029C\x85D\x0bE\x1cF"}
    log = opened(tmp_path)
    log.offer(
        "/v1/prediction", "rid-4", json.dumps({"flights": [odd]}).encode(), ANSWER[: ANSWER.index(b"}") + 1] + b"]"
    )
    log.close()
    text = next((tmp_path / MODEL_NAME / "data").glob("data.*.log")).read_text()
    assert len(text.splitlines()) == 1
    assert json.loads(text)["OPERA"] == odd["OPERA"]


def test_log_rotates_within_its_disk_bound_and_keeps_the_newest_log_records(tmp_path: Path) -> None:
    bound = 40_000
    log = opened(tmp_path, max_bytes=bound)
    for number in range(400):  # about 110 KB of records
        log.offer("/v1/prediction", f"rid-{number}", BODY, ANSWER)
    log.close()
    files = list((tmp_path / MODEL_NAME / "data").iterdir())
    assert len(files) == LOG_FILES
    assert sum(path.stat().st_size for path in files) <= bound
    kept = {record["request_id"] for record in log_records(tmp_path)}
    assert "rid-399" in kept and "rid-0" not in kept


def test_log_with_a_full_queue_drops_and_counts_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prediction_log, "MAX_PENDING_BYTES", 10 * (len(BODY) + len(ANSWER)))
    release = threading.Event()
    drops: list[str] = []
    log = opened(tmp_path, on_drop=drops.append)
    monkeypatch.setattr(log, "write", lambda lines: release.wait(10))  # a disk that hangs
    start = time.monotonic()
    for number in range(50):
        log.offer("/v1/prediction", f"rid-{number}", BODY, ANSWER)
    assert time.monotonic() - start < 0.5
    assert drops.count("queue_full") >= 39  # 10 wait, one may be in the writer's hands
    release.set()
    log.close()


def test_log_write_error_is_counted_and_later_requests_are_written(tmp_path: Path) -> None:
    drops: list[str] = []
    log = opened(tmp_path, on_drop=drops.append)
    log.offer("/v1/prediction", "unreadable", b"not json", ANSWER)
    log.offer("/v1/prediction", "rid-ok", BODY, ANSWER)
    log.close()
    assert drops == ["write_error"]
    assert {record["request_id"] for record in log_records(tmp_path)} == {"rid-ok"}


def test_log_samples_about_its_share_of_requests(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, sample=0.1, model="m", worker=0)
    sampled = sum(log.sampled() for _ in range(20_000))
    log.close()
    assert 1_800 < sampled < 2_200  # 2,000 expected; 4.7 standard deviations either side
    never = PredictionLog(tmp_path, sample=0.0, model="m", worker=1)
    assert not any(never.sampled() for _ in range(1_000))
    never.close()
