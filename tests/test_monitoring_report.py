"""tools/monitoring_report.py: a synthetic prediction log (with a cut line, /predict records and a
second model) and synthetic outcomes, reported on, each figure checked against one computed here from
what was written."""

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import bentoml
import httpx
import numpy as np
import pandas as pd
import pytest
from helpers import VOCABULARY, bentoml_serve

from models.data import STATS_PATH, synthetic_frame
from models.features import FlightColumns
from models.predictor import DelayPredictor
from models.quality import js_distance
from tools.monitoring_report import Report, gather, main, read_log, vocabulary_of

FLIGHTS = 3_000  # enough for airline (2,300), international and hour (2,400) to be judged, not destination (6,200)
OTHER_FLIGHTS = 40  # records of another model, left out
OTHER_TAG = "flight_delay:notstored"


@dataclass
class Written:
    """What a test wrote: the log dir, the outcomes CSV, and the model's records as a frame."""

    log: Path
    outcomes: Path
    records: pd.DataFrame  # the model's records: the logged fields, plus `p`, the probability the report should use
    tag: str


def write_log(folder: Path, records: list[dict[str, Any]], workers: int = 2) -> Path:
    """Records in bentoml.monitor's layout: flight_delay/data/data.<worker>.log and a rotated .1 copy."""
    data = folder / "flight_delay" / "data"
    data.mkdir(parents=True)
    files = [data / f"data.{worker}.log" for worker in range(workers)] + [data / "data.0.log.1"]
    lines: list[list[str]] = [[] for _ in files]
    for number, record in enumerate(records):
        fields = {key: None if value is None or pd.isna(value) else value for key, value in record.items()}
        lines[number % len(files)].append(json.dumps(fields))
    for path, text in zip(files, lines, strict=True):
        path.write_text("\n".join(text) + "\n")
    return data


@pytest.fixture(scope="module")
def written(trained_model: str, tmp_path_factory: pytest.TempPathFactory) -> Written:
    """A log of FLIGHTS synthetic flights for the session's model (one in ten through /predict, one in
    ten without the optional fields, a third with seconds in Fecha-I, probabilities drawn at random, not
    the model's), OTHER_FLIGHTS of another model, one outcome record, one cut line and one JSON line that
    is no record; and the same flights' outcomes as a dataset CSV."""
    folder = tmp_path_factory.mktemp("monitoring-log")
    frame = synthetic_frame(json.loads(STATS_PATH.read_text()), rows=FLIGHTS, seed=7)  # not the training seed
    outcomes = folder / "outcomes.csv"
    frame.to_csv(outcomes, index=False)
    rng = np.random.default_rng(3)
    scheduled = pd.to_datetime(frame["Fecha-I"])
    latam = rng.random(FLIGHTS) < 0.1
    bare = rng.random(FLIGHTS) < 0.1
    seconds = rng.random(FLIGHTS) < 0.3
    model = bentoml.models.get(trained_model)
    predictor = DelayPredictor.load(model.path, model.info.metadata)
    view = FlightColumns.from_frame(frame.assign(**{"Fecha-I": scheduled}), predictor.vocabulary)
    optional = predictor.probabilities(view)
    required = predictor.probabilities(view.without_optional())
    logged = rng.uniform(0.01, 0.9, FLIGHTS).round(6)
    records = pd.DataFrame(
        {
            "OPERA": frame["OPERA"],
            "TIPOVUELO": frame["TIPOVUELO"],
            "MES": scheduled.dt.month,
            "Fecha-I": frame["Fecha-I"]
            .str[:16]
            .where(~seconds, scheduled.dt.strftime("%Y-%m-%d %H:%M:%S"))
            .where(~bare),  # NaN, written as null
            "SIGLADES": frame["SIGLADES"].where(~bare),
            "delay": 0,
            "probability": pd.Series(logged).where(~latam),
            "model": trained_model,
            "route": np.where(latam, "/predict", "/v1/prediction"),
            "index": 0,
            "timestamp": [f"2026-12-0{1 + i % 3}T10:00:{i % 60:02d}.000001+00:00" for i in range(FLIGHTS)],
            "request_id": "r",
            "trace_id": None,
        }
    )
    other = records.head(OTHER_FLIGHTS).assign(model=OTHER_TAG)
    data = write_log(folder, [*records.to_dict("records"), *other.to_dict("records")])
    with (data / "data.1.log").open("a") as file:
        outcome = {**records.iloc[0].to_dict(), "route": "/v1/outcomes", "probability": None, "Fecha-O": None}
        file.write(json.dumps(outcome, default=str) + "\n")  # an outcome: not a prediction
        file.write("[1, 2]\n" + '{"OPERA": "Sky Airline", "TIPOVUELO": "I", "MES"')  # no record; a cut last line
    records["p"] = np.where(latam, np.where(bare, required, optional), logged)
    return Written(folder, outcomes, records, trained_model)


@pytest.fixture(scope="module")
def report(written: Written) -> Report:
    """The report's figures for the written log and outcomes."""
    return gather(written.log, written.outcomes, None)


def test_read_log_counts_the_cut_line_and_the_line_that_is_no_record(written: Written) -> None:
    log = read_log(written.log, vocabulary_of)
    assert log.lines == FLIGHTS + OTHER_FLIGHTS + 3
    assert log.skipped == {"not JSON (a cut line)": 1, "not a prediction record": 1, "an outcome record": 1}
    assert log.counts() == {written.tag: FLIGHTS, OTHER_TAG: OTHER_FLIGHTS}


def test_read_log_skips_and_counts_a_record_its_model_does_not_know(written: Written, tmp_path: Path) -> None:
    # a KeyError in the encoder ended the report: the log's flights were checked by Flight, not the model
    record = {key: value for key, value in written.records.iloc[0].to_dict().items() if key != "p"}
    data = write_log(tmp_path, [record, {**record, "OPERA": "Zed Air"}, {**record, "SIGLADES": "Atlantis"}], workers=1)
    log = read_log(data, vocabulary_of)
    assert log.skipped == {"a value its model does not know": 2}
    assert log.counts() == {written.tag: 1}


@pytest.mark.parametrize("where", [".", "flight_delay", "flight_delay/data"])
def test_read_log_finds_the_data_files_from_the_log_dir_or_below(written: Written, where: str) -> None:
    assert len(read_log(written.log / where, vocabulary_of).files) == 3


def test_gather_reports_the_model_most_records_carry(report: Report, written: Written) -> None:
    assert report.tag == written.tag
    assert len(report.live.logged) == FLIGHTS


def test_drift_scores_equal_js_distance_of_the_written_counts(report: Report, written: Written) -> None:
    metadata = cast(dict[str, Any], bentoml.models.get(written.tag).info.metadata)  # JSON, typed loosely
    reference = metadata["reference"]["inputs"]
    records = written.records
    timed = records["Fecha-I"].notna()
    counts: dict[str, tuple[Counter[Any], list[Any]]] = {
        "airline": (Counter(records["OPERA"]), list(VOCABULARY.airlines)),
        "international": (Counter(records["TIPOVUELO"].map({"N": 0, "I": 1})), [0, 1]),
        "hour": (Counter(pd.to_datetime(records.loc[timed, "Fecha-I"], format="mixed").dt.hour), list(range(24))),
    }
    for name, (counter, values) in counts.items():
        live = np.array([counter[value] for value in values], dtype=np.float64)
        expected = round(js_distance(live, np.array(reference[name][:-1], dtype=np.float64)), 4)
        assert report.drift[name]["score"] == expected
        assert report.drift[name]["drifted"] == (expected > 0.1)
    assert report.drift["hour"]["missing"] == int((~timed).sum())


def test_drift_is_not_judged_below_the_minimum_count(report: Report, written: Written) -> None:
    entry = report.drift["destination"]
    assert entry["min_flights"] == 100 * len(VOCABULARY.destinations)
    assert entry["flights"] == int(written.records["SIGLADES"].notna().sum()) < entry["min_flights"]
    assert entry["score"] is None and entry["drifted"] is None


def test_estimated_delay_rate_per_day_is_the_mean_of_the_written_probabilities(
    report: Report, written: Written
) -> None:
    records = written.records
    days = pd.to_datetime(records["Fecha-I"], format="mixed").dt.strftime("%Y-%m-%d")
    expected = records.assign(day=days).dropna(subset=["day"]).groupby("day")["p"].agg(["count", "mean"])
    got = {str(day["day"]): day for day in report.days if day["logged"]}
    assert sorted(got) == sorted(expected.index)
    for day, (count, mean) in expected.iterrows():
        assert got[str(day)]["logged"] == count
        assert got[str(day)]["estimated"] == pytest.approx(mean, abs=1e-9)
    assert report.estimated["delay_rate"] == pytest.approx(records["p"].mean(), abs=1e-9)


def test_predict_records_get_the_models_probability(report: Report, written: Written) -> None:
    latam = (written.records["route"] == "/predict").to_numpy()
    unlogged = np.isnan(report.live.logged)
    assert unlogged.sum() == latam.sum() > 0
    # the log's order is its files' order, not the written one: the same probabilities, sorted
    got, expected = np.sort(report.live.probabilities[unlogged]), np.sort(written.records["p"].to_numpy()[latam])
    assert np.abs(got - expected).max() < 1e-9


def test_realized_delay_rate_per_day_is_the_outcomes_share_over_15_minutes_late(
    report: Report, written: Written
) -> None:
    frame = pd.read_csv(written.outcomes)
    late = pd.to_datetime(frame["Fecha-O"]) - pd.to_datetime(frame["Fecha-I"]) > pd.Timedelta(minutes=15)
    expected = late.groupby(frame["Fecha-I"].str[:10]).agg(["count", "mean"])
    got = {str(day["day"]): day for day in report.days}
    for day, (count, rate) in expected.iterrows():
        assert (got[str(day)]["outcomes"], got[str(day)]["realized"]) == (count, pytest.approx(rate, abs=1e-12))
    assert report.realized["delay_rate"] == pytest.approx(late.mean(), abs=1e-12)


def test_live_reliability_bins_hold_every_outcome_flight_at_its_delay_rate(report: Report) -> None:
    bins = report.live_reliability
    assert sum(b["flights"] for b in bins) == report.realized["flights"] == FLIGHTS
    gaps = sum(abs(b["predicted"] - b["observed"]) * b["flights"] for b in bins) / FLIGHTS
    assert gaps == pytest.approx(report.realized["calibration_error"], abs=1e-12)
    assert sum(b["observed"] * b["flights"] for b in bins) / FLIGHTS == pytest.approx(report.realized["delay_rate"])


def test_main_writes_the_report_with_its_plots(written: Written, tmp_path: Path) -> None:
    assert main(["--log", str(written.log), "--outcomes", str(written.outcomes), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    latam = int((written.records["route"] == "/predict").sum())
    routes = f"`/v1/prediction` {FLIGHTS - latam:,}, `/predict` {latam:,}"
    assert f"| records of this model | {FLIGHTS:,} ({routes}) |" in text
    assert f"| records of other models (left out) | {OTHER_TAG} ({OTHER_FLIGHTS}) |" in text
    assert "| skipped lines | 1 an outcome record, 1 not a prediction record, 1 not JSON (a cut line)" in text
    assert "--log " + str(written.log) in text
    pictures = [line.split("(")[-1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert len(pictures) == 9
    for name in pictures:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_without_outcomes_says_no_outcomes_given(written: Written, tmp_path: Path) -> None:
    assert main(["--log", str(written.log), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "| outcomes | no outcomes given |" in text
    assert "Live: no outcomes given." in text


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "error: no log directory at"),
        ("empty", "error: no prediction log files (data.<worker>.log) in"),
        ("garbage", "error: no prediction records in 1 log file(s)"),
        ("absent model", "error: no records of model flight_delay:absent in the log; it holds flight_delay:"),
        ("unstored model", f"error: model {OTHER_TAG} is not in the BentoML store"),
        ("bad outcomes", "error: outcomes: "),
        ("unknown outcomes", "error: outcomes: none of the "),
    ],
)
def test_main_refuses_with_one_line(
    case: str, message: str, written: Written, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, extra = written.log, []
    if case == "missing":
        log = tmp_path / "nothing"
    elif case == "empty":
        log = tmp_path
    elif case == "garbage":
        (tmp_path / "data.0.log").write_text("not json\n")
        log = tmp_path
    elif case == "absent model":
        extra = ["--model", "flight_delay:absent"]
    elif case == "unstored model":
        extra = ["--model", OTHER_TAG]
    elif case == "unknown outcomes":  # every flight of an airline the model does not know: no figure to make
        pd.read_csv(written.outcomes).assign(OPERA="Zed Air").to_csv(tmp_path / "outcomes.csv", index=False)
        extra = ["--outcomes", str(tmp_path / "outcomes.csv")]
    else:
        (tmp_path / "outcomes.csv").write_text("Fecha-I,OPERA\n2017-01-01 00:00:00,Sky Airline\n")
        extra = ["--outcomes", str(tmp_path / "outcomes.csv")]
    assert main(["--log", str(log), "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(message)
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_report_agrees_with_get_monitoring_on_the_flights_a_service_logged(written: Written, tmp_path: Path) -> None:
    if os.environ.get("FLIGHT_DELAY_URL"):
        pytest.skip("the report reads the service's own log, which an outside service keeps elsewhere")
    flights = [
        {key: value for key, value in record.items() if value is not None and not pd.isna(value)}
        for record in written.records.loc[:, ["OPERA", "TIPOVUELO", "MES", "Fecha-I", "SIGLADES"]].to_dict("records")
    ][:2_500]  # airline is judged from 2,300 flights
    env = {"FLIGHT_DELAY_LOG_SAMPLE": "1", "FLIGHT_DELAY_LOG_DIR": str(tmp_path / "log")}
    with bentoml_serve(tmp_path / "serve.log", env) as (url, _process), httpx.Client(base_url=url, timeout=30) as http:
        for start in range(0, len(flights), 100):
            route = "/predict" if start % 1_000 == 0 else "/v1/prediction"  # three requests of 100 through /predict
            assert http.post(route, json={"flights": flights[start : start + 100]}).status_code == 200
        deadline = time.monotonic() + 10  # both the counts' export and the log's writer lag by about a second
        while (served := http.get("/v1/monitoring").json())["predictions"]["flights"] < len(flights):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        while read_log(tmp_path / "log", vocabulary_of).counts()[written.tag] < len(flights):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    report = gather(tmp_path / "log", None, None)
    for name, entry in report.drift.items():
        assert {key: entry[key] for key in ("score", "drifted", "flights", "missing")} == {
            key: served["drift"][name][key] for key in ("score", "drifted", "flights", "missing")
        }
    assert report.drift["airline"]["score"] is not None
    for key, value in report.estimated.items():
        assert value == pytest.approx(served["estimated"][key], abs=5e-5)  # the service rounds to 4 places
