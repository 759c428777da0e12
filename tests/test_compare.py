"""tools/compare.py: models trained here on synthetic flights (a baseline, one on shuffled outcomes,
one that knows a new airline) compared on other synthetic flights."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, f1_score, roc_auc_score

import train
from models.data import DATE_FORMAT, STATS_PATH, file_sha256, synthetic_frame
from models.features import FlightColumns
from models.quality import calibration_error, equal_count_bins
from tools.compare import MIN_SHARED_FLIGHTS, gather, judged, load_model, main

FLIGHTS = 6_000  # flights compared: enough for the minimum (2,000) with some of a new airline
# The baseline's training flights: the session's 4,000 give a calibration error near 0.08 on new
# flights, which the alert's bound (0.05) rightly refuses; 12,000 give about 0.02.
BASELINE_ROWS = 12_000
NEW_AIRLINE = "Arajet"
NEW_SHARE = 0.05  # of the flights, given the new airline


def synthetic(rows: int, seed: int) -> pd.DataFrame:
    """Synthetic flights in the dataset's format."""
    return synthetic_frame(json.loads(STATS_PATH.read_text()), rows=rows, seed=seed)


def with_new_airline(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The flights with NEW_SHARE of them flown by NEW_AIRLINE instead."""
    renamed = np.random.default_rng(seed).random(len(frame)) < NEW_SHARE
    return frame.assign(OPERA=np.where(renamed, NEW_AIRLINE, frame["OPERA"]))


def trained_on(frame: pd.DataFrame, folder: Path) -> str:
    """Tag of a model train.py saves from these flights."""
    path = folder / "training.csv"
    frame.to_csv(path, index=False)
    assert train.main(["--data", str(path)]) == 0
    return str(bentoml.models.get("flight_delay:latest").tag)


@pytest.fixture(scope="module")
def flights_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FLIGHTS labelled flights none of the models was trained on (another seed), some of NEW_AIRLINE."""
    path = tmp_path_factory.mktemp("compare-data") / "flights.csv"
    with_new_airline(synthetic(FLIGHTS, seed=7), seed=8).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def baseline_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model of BASELINE_ROWS synthetic flights (the training seed), calibrated well enough to serve."""
    return trained_on(synthetic(BASELINE_ROWS, seed=42), tmp_path_factory.mktemp("baseline"))


@pytest.fixture(scope="module")
def shuffled_model(sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model of the session's training flights with their delays shuffled among them: no skill."""
    frame = pd.read_csv(sample_csv, dtype=str, keep_default_na=False)
    scheduled = pd.to_datetime(frame["Fecha-I"], format=DATE_FORMAT)
    late = pd.to_datetime(frame["Fecha-O"], format=DATE_FORMAT) - scheduled
    shuffled = late.sample(frac=1, random_state=1).to_numpy()
    frame["Fecha-O"] = (scheduled + shuffled).dt.strftime(DATE_FORMAT)
    return trained_on(frame, tmp_path_factory.mktemp("shuffled"))


@pytest.fixture(scope="module")
def new_airline_model(sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model of the session's training flights, NEW_SHARE of them flown by NEW_AIRLINE."""
    frame = pd.read_csv(sample_csv, dtype=str, keep_default_na=False)
    return trained_on(with_new_airline(frame, seed=2), tmp_path_factory.mktemp("new-airline"))


@pytest.fixture
def served(baseline_model: str) -> Iterator[str]:
    """URL of a stand-in service whose GET /v1/model names the session's model, and another URL's
    /v1/model a model the store lacks."""

    class Card(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            tag = baseline_model if self.path == "/v1/model" else "flight_delay:notstored"
            body = json.dumps({"tag": tag, "threshold": 0.2}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test output is not a web server's log."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Card)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """main's exit code, stdout and report.md ('' when none was written)."""
    code = main([*args, "--out", str(out)])
    report = out / "report.md"
    return code, capsys.readouterr().out, report.read_text() if report.exists() else ""


@pytest.mark.parametrize("repeated", [1, 3])
def test_judged_equals_scikit_learn_on_the_rows_written_out(repeated: int) -> None:
    rng = np.random.default_rng(0)
    delayed = (rng.random(3_000) < 0.2).astype(np.int64)
    probability = np.round(np.clip(0.2 + 0.2 * delayed + rng.normal(0, 0.15, 3_000), 0.01, 0.99), 2)  # with ties
    weights = rng.integers(0, 4, 3_000).astype(float) if repeated > 1 else np.ones(3_000)
    rows = np.repeat(np.arange(3_000), weights.astype(np.int64))
    got = judged(delayed, probability, 0.3, weights)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(delayed[rows], probability[rows]), abs=1e-12)
    assert got["brier"] == pytest.approx(brier_score_loss(delayed[rows], probability[rows]), abs=1e-12)
    assert got["f1"] == pytest.approx(f1_score(delayed[rows], probability[rows] >= 0.3), abs=1e-12)
    bins = equal_count_bins(delayed[rows], probability[rows])
    assert got["calibration_error"] == pytest.approx(calibration_error(*bins), abs=1e-12)


def test_main_refuses_a_candidate_trained_on_shuffled_outcomes(
    baseline_model: str, shuffled_model: str, flights_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--candidate", shuffled_model, "--baseline", baseline_model, "--data", str(flights_csv)]
    code, out, report = run(args, tmp_path, capsys)
    assert code == 1
    assert "refuse: ROC AUC: the lower 95% bound of the difference" in out
    assert "Verdict: **refuse** (exit code 1)." in report
    assert "| ROC AUC |" in report.split("## Margins")[0]
    assert (tmp_path / "reliability.png").stat().st_size > 0


def test_main_accepts_the_same_model_as_both(
    baseline_model: str, flights_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--candidate", baseline_model, "--baseline", baseline_model, "--data", str(flights_csv)]
    code, out, report = run(args, tmp_path, capsys)
    assert code == 0
    assert out.splitlines()[-1] == f"accept: {baseline_model} is not worse than {baseline_model} beyond any margin"
    assert f"note: the candidate is the baseline ({baseline_model}): the two agree by construction" in out
    table = report.split("## On the flights both models know")[1].split("## Margins")[0]
    for label in ("ROC AUC", "Brier", "calibration error", "F1 (delayed)"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} |")).split(" | ")
        assert row[3:5] == ["+0.0000", "+0.0000"]  # difference and its bound
        assert row[6] == "accept |"


def test_gather_compares_a_new_airline_on_the_shared_flights_and_reports_it_apart(
    baseline_model: str, new_airline_model: str, flights_csv: Path
) -> None:
    baseline = load_model("baseline", baseline_model, "--baseline")
    candidate = load_model("candidate", new_airline_model, "--candidate")
    assert NEW_AIRLINE in candidate.predictor.vocabulary.airlines
    assert NEW_AIRLINE not in baseline.predictor.vocabulary.airlines
    frame = pd.read_csv(flights_csv, dtype=str, keep_default_na=False)
    new = frame["OPERA"] == NEW_AIRLINE
    comparison = gather(baseline, candidate, flights_csv, resamples=20)
    assert comparison.shared == int((~new).sum())
    assert comparison.apart.candidate_only == int(new.sum()) > 0
    assert comparison.apart.baseline_only == comparison.apart.neither == 0
    assert comparison.apart.values == [
        {"column": "OPERA", "value": NEW_AIRLINE, "flights": int(new.sum()), "lacked_by": "baseline"}
    ]
    assert comparison.apart.candidate_figures is not None
    assert comparison.apart.candidate_figures["flights"] == int(new.sum())
    # the baseline's figures are those of exactly the other flights
    known = frame.loc[~new].assign(**{"Fecha-I": pd.to_datetime(frame.loc[~new, "Fecha-I"], format=DATE_FORMAT)})
    delayed = (pd.to_datetime(known["Fecha-O"], format=DATE_FORMAT) - known["Fecha-I"]).dt.total_seconds() > 15 * 60
    probability = baseline.predictor.probabilities(FlightColumns.from_frame(known, baseline.predictor.vocabulary))
    assert comparison.figures[0]["roc_auc"] == pytest.approx(roc_auc_score(delayed, probability), abs=1e-12)


def test_gather_notes_the_flights_a_candidate_would_refuse(
    baseline_model: str, new_airline_model: str, flights_csv: Path
) -> None:
    baseline = load_model("baseline", new_airline_model, "--baseline")  # the other way round: the candidate lacks it
    candidate = load_model("candidate", baseline_model, "--candidate")
    comparison = gather(baseline, candidate, flights_csv, resamples=20)
    new = comparison.apart.baseline_only
    assert comparison.apart.values == [
        {"column": "OPERA", "value": NEW_AIRLINE, "flights": new, "lacked_by": "candidate"}
    ]
    assert comparison.notes == [
        f"the candidate does not know the airline or destination of {new:,} flights the baseline answers: "
        "once it serves, they are refused (400)"
    ]


def test_gather_notes_a_model_trained_on_the_compared_flights(
    baseline_model: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = load_model("baseline", baseline_model, "--baseline")
    # baseline_model's own training file: the model keeps its name and digest, not where it lay
    digest = model.metadata["training_data"]["sha256"]
    own_training = next(
        path for path in tmp_path_factory.getbasetemp().rglob("training.csv") if file_sha256(path) == digest
    )
    comparison = gather(model, model, own_training, resamples=20)
    assert comparison.notes == [
        f"{model.tag} (baseline) was trained on this very file: its figures include its own training flights and "
        "flatter it; compare on flights neither model was trained on",
        f"{model.tag} (candidate) was trained on this very file: its figures include its own training flights and "
        "flatter it; compare on flights neither model was trained on",
        f"the candidate is the baseline ({model.tag}): the two agree by construction",
    ]


def test_main_reports_the_new_airline_apart_with_the_baseline_lacking_it(
    baseline_model: str,
    new_airline_model: str,
    flights_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--candidate", new_airline_model, "--baseline", baseline_model, "--data", str(flights_csv)]
    code, _, report = run(args, tmp_path, capsys)
    new = int((pd.read_csv(flights_csv, usecols=["OPERA"])["OPERA"] == NEW_AIRLINE).sum())
    assert code in (0, 1)  # the verdict is the margins' business; what is compared is this test's
    assert f"{FLIGHTS - new:,} known by both models" in report
    assert f"| OPERA | {NEW_AIRLINE} | {new:,} | baseline |" in report
    assert f"The candidate on the {new:,} flights only it knows" in report


def test_main_reads_the_baseline_from_the_served_model(
    served: str, baseline_model: str, flights_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--candidate", baseline_model, "--served", served, "--data", str(flights_csv)]
    code, _, report = run(args, tmp_path, capsys)
    assert code == 0
    assert f"| baseline | `{baseline_model}` (served at {served})" in report


def test_main_takes_the_stores_latest_model_as_the_default_candidate(
    baseline_model: str, flights_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latest = str(bentoml.models.get("flight_delay:latest").tag)
    code, _, report = run(["--baseline", baseline_model, "--data", str(flights_csv)], tmp_path, capsys)
    assert code in (0, 1)
    assert f"| candidate | `{latest}` (the store's latest)" in report


def test_main_refuses_to_judge_too_few_shared_flights(
    baseline_model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    few = tmp_path / "few.csv"
    synthetic(MIN_SHARED_FLIGHTS - 1, seed=7).to_csv(few, index=False)
    code, out, report = run(["--candidate", baseline_model, "--baseline", baseline_model, "--data", str(few)],
                            tmp_path / "out", capsys)  # fmt: skip
    assert code == 1
    assert out.splitlines()[-1].startswith(f"refuse: too few flights to judge: {MIN_SHARED_FLIGHTS - 1:,} flights")
    assert "Verdict: **refuse** (exit code 1)." in report


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("bad data", "error: "),
        ("no data file", "error: no dataset file at "),
        ("unstored baseline", "error: baseline flight_delay:notstored (--baseline) is not in the BentoML store"),
        ("unstored served", "error: baseline flight_delay:notstored (served at http://127.0.0.1:"),
        ("no service", "error: cannot read the served model from http://127.0.0.1:9/v1/model: "),
        ("not a tag", "error: baseline 'flight_delay:latest ' (--baseline) is not a model tag: "),
        ("out is a file", "error: --out "),
    ],
)
def test_main_ends_a_usage_or_data_error_with_one_line(
    case: str,
    message: str,
    baseline_model: str,
    flights_csv: Path,
    served: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, baseline = flights_csv, ["--baseline", baseline_model]
    if case == "bad data":
        data = tmp_path / "bad.csv"
        data.write_text("Fecha-I,OPERA\n2017-01-01 00:00:00,Sky Airline\n")
        message = f"error: {data}, row 1 (the header): no column Fecha-O"
    elif case == "no data file":
        data = tmp_path / "absent.csv"
    elif case == "unstored baseline":
        baseline = ["--baseline", "flight_delay:notstored"]
    elif case == "unstored served":
        baseline = ["--served", f"{served}/other"]  # its /other/v1/model names a model the store lacks
    elif case == "not a tag":
        baseline = ["--baseline", "flight_delay:latest "]  # a trailing space, as a copied tag may have
    elif case == "out is a file":
        (tmp_path / "out").write_text("")
    else:
        baseline = ["--served", "http://127.0.0.1:9"]  # the discard port: nothing listens
    assert main(["--candidate", baseline_model, *baseline, "--data", str(data), "--out", str(tmp_path / "out")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[compare ")]
    assert len(errors) == 1
    assert errors[0].startswith(message)
    assert (tmp_path / "out").is_file() if case == "out is a file" else not (tmp_path / "out").exists()
