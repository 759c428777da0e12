"""A challenger (FLIGHT_DELAY_CHALLENGER) scores the flights the champion answers without touching the
answers, counts what it cannot score apart, records its probability in the prediction log, and is judged
against the champion on the same flights' outcomes; the judgement is models.quality's, as tools/compare.py's."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import bentoml_serve, log_records, pin_model

import train
from loadtest.probes import fresh
from loadtest.servers import SERVERS
from models.config import MODEL_NAME, PROJECT_DIR
from models.data import embedded_sample
from models.features import FlightColumns, encode
from models.predictor import DelayPredictor
from models.quality import (
    MARGINS,
    MIN_SHARED_FLIGHTS,
    calibration_error,
    calibration_groups,
    paired_comparison,
    probability_bins,
    verdict,
)
from models.schema import Flight
from serving import challenger as challenger_module
from serving.challenger import Challenger
from serving.monitoring import Monitor
from serving.wiring import trained_model as stored_model

TOKEN = "test-token-not-a-secret"
LOGS: list[Path] = []  # the served service's prediction log
RARE = 15  # the challenger learns only airlines and cities with this many flights: it knows fewer than the champion


@pytest.fixture(scope="module")
def pair(trained_model: str, sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A store with the session's model (the champion) and, as its latest, a challenger train.py fits on
    the same sample with --min-flights RARE: (store, champion tag, challenger tag). Trained in this
    process, into the session's store, and linked into a store of its own."""
    assert train.main(["--data", str(sample_csv), "--min-flights", str(RARE)]) == 0
    challenger = str(bentoml.models.get(f"{MODEL_NAME}:latest").tag)
    home = tmp_path_factory.mktemp("challenger-home")
    pin_model(home, trained_model)
    pin_model(home, challenger)
    return home, trained_model, challenger


def predictor(home: Path, tag: str) -> DelayPredictor:
    """The served predictor of a model of the store `home`, read from its directory."""
    directory = home / "models" / MODEL_NAME / tag.split(":")[1]
    return DelayPredictor.load(str(directory), yaml.safe_load((directory / "model.yaml").read_text())["metadata"])


def edges(home: Path, tag: str) -> np.ndarray:
    """A stored model's probability bins (its reference's inner edges)."""
    directory = home / "models" / MODEL_NAME / tag.split(":")[1]
    return np.array(
        yaml.safe_load((directory / "model.yaml").read_text())["metadata"]["reference"]["probability_edges"]
    )


@pytest.fixture(scope="module")
def served(pair: tuple[Path, str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two workers answering with the champion, the challenger beside it, every request logged (in
    prediction-log/ beside the server's log, LOGS[url])."""
    home, champion, challenger = pair
    log = tmp_path_factory.mktemp("challenger-serve") / "serve.log"
    LOGS.append(log.parent / "prediction-log")
    env = {
        "BENTOML_HOME": str(home),
        "FLIGHT_DELAY_MODEL": champion,
        "FLIGHT_DELAY_CHALLENGER": challenger,
        "FLIGHT_DELAY_WORKERS": "2",
        "FLIGHT_DELAY_OUTCOMES_TOKEN": TOKEN,
        "FLIGHT_DELAY_LOG_SAMPLE": "1",
    }
    with bentoml_serve(log, env) as (url, _process):
        yield url


def sample_flights(champion: DelayPredictor, rows: int, offset: int = 0) -> pd.DataFrame:
    """Flights of the embedded sample the champion knows (it refuses the others with 400)."""
    flights, _source = embedded_sample()
    return flights[champion.vocabulary.known(flights)].iloc[offset : offset + rows]


def as_flights(rows: pd.DataFrame, outcomes: bool = False) -> list[dict[str, Any]]:
    """Request flights of dataset rows, with their real departure for outcomes."""
    flights = [
        {"OPERA": a, "TIPOVUELO": k, "MES": int(s.month), "Fecha-I": f"{s:%Y-%m-%d %H:%M}", "SIGLADES": c}
        for a, k, s, c in zip(rows["OPERA"], rows["TIPOVUELO"], rows["Fecha-I"], rows["SIGLADES"], strict=True)
    ]
    if outcomes:
        for flight, left in zip(flights, rows["Fecha-O"], strict=True):
            flight["Fecha-O"] = f"{left:%Y-%m-%d %H:%M}"
    return flights


def report(url: str) -> dict[str, Any]:
    """GET /v1/monitoring after the challenger's next pass and the workers' next export."""
    time.sleep(2.5)
    return dict(fresh().get(f"{url}/v1/monitoring", timeout=10).json())


@pytest.mark.integration
def test_answers_stay_the_champions_and_the_challenger_scores_the_same_flights(
    pair: tuple[Path, str, str], served: str
) -> None:
    home, champion_tag, challenger_tag = pair
    champion, challenger = predictor(home, champion_tag), predictor(home, challenger_tag)
    assert len(challenger.vocabulary.airlines) < len(champion.vocabulary.airlines), "the fixture's premise"
    rows = sample_flights(champion, 1_500)
    sent = as_flights(rows)
    route = f"{served}/v1/prediction"
    answers = [fresh().post(route, json={"flights": sent[i : i + 100]}) for i in range(0, 1_500, 100)]
    assert {answer.status_code for answer in answers} == {200}
    probabilities = np.array([p["probability"] for answer in answers for p in answer.json()])
    expected = champion.probabilities(FlightColumns.from_frame(rows, champion.vocabulary))
    np.testing.assert_allclose(probabilities, expected, rtol=1e-12)  # the champion's own, untouched
    known = challenger.vocabulary.known(rows)
    assert 0 < int((~known).sum()) < len(rows), "some flights the challenger does not know"
    theirs = challenger.probabilities(FlightColumns.from_frame(rows[known], challenger.vocabulary))
    mine = expected[known]
    seen = report(served)["challenger"]
    assert seen["model"] == challenger_tag
    assert seen["predictions"]["flights"] == seen["agreement"]["flights"] == int(known.sum())
    assert seen["unknown"] == int((~known).sum()) and seen["dropped"] == 0
    same = np.mean(challenger.labels(theirs) == champion.labels(mine))
    assert seen["agreement"]["same_label"] == pytest.approx(same, abs=1e-4)
    assert seen["agreement"]["mean_probability_gap"] == pytest.approx(np.mean(np.abs(theirs - mine)), abs=1e-4)
    assert seen["estimated"]["delay_rate"] == pytest.approx(theirs.mean(), abs=1e-4)


@pytest.mark.integration
def test_outcomes_judge_both_models_on_the_flights_both_scored(pair: tuple[Path, str, str], served: str) -> None:
    home, champion_tag, challenger_tag = pair
    champion, challenger = predictor(home, champion_tag), predictor(home, challenger_tag)
    rows = sample_flights(champion, 3_000, offset=2_000)
    sent = as_flights(rows, outcomes=True)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    answers = [
        fresh().post(f"{served}/v1/outcomes", json={"flights": sent[i : i + 1_000]}, headers=headers, timeout=30)
        for i in range(0, 3_000, 1_000)
    ]
    assert {answer.status_code for answer in answers} == {200}
    known = challenger.vocabulary.known(rows)
    assert sum(answer.json()["challenger"]["flights"] for answer in answers) == int(known.sum())
    assert {answer.json()["challenger"]["model"] for answer in answers} == {challenger_tag}
    both = rows[known]
    delayed = both["delayed"].to_numpy().astype(float)
    mine = champion.probabilities(FlightColumns.from_frame(both, champion.vocabulary))
    theirs = challenger.probabilities(FlightColumns.from_frame(both, challenger.vocabulary))
    seen = report(served)
    assert seen["outcomes"]["flights"] == 3_000  # the champion counts every flight it knows
    assert seen["challenger"]["outcomes"]["flights"] == len(both)
    assert seen["challenger"]["outcomes"]["brier"] == pytest.approx(np.mean((delayed - theirs) ** 2), abs=1e-4)
    comparison = seen["comparison"]
    assert comparison["flights"] == len(both) >= MIN_SHARED_FLIGHTS
    difference = (delayed - theirs) ** 2 - (delayed - mine) ** 2
    assert comparison["brier"]["difference"] == pytest.approx(difference.mean(), abs=1e-5)
    spread = difference.std() / np.sqrt(len(difference))
    assert comparison["brier"]["upper"] == pytest.approx(difference.mean() + 1.6449 * spread, abs=1e-5)

    def calibration(tag: str, p: np.ndarray) -> float:
        """The calibration error over the model's own bins, ten by ten, as GET /v1/monitoring's."""
        deciles = probability_bins(edges(home, tag), p) // 10
        return float(sum(abs(p[deciles == d].sum() - delayed[deciles == d].sum()) for d in range(10)) / len(p))

    gap = calibration(challenger_tag, theirs) - calibration(champion_tag, mine)
    assert comparison["calibration_error"]["difference"] == pytest.approx(gap, abs=1e-5)
    for role, tag, p in (
        ("champion", champion_tag, mine),
        ("challenger", challenger_tag, theirs),
    ):  # on the same flights
        own = {"brier": np.mean((delayed - p) ** 2), "calibration_error": calibration(tag, p)}
        assert comparison[role] == pytest.approx(own, abs=1e-5)
    bounds = {
        metric: (comparison[metric]["lower"], comparison[metric]["upper"]) for metric in ("brier", "calibration_error")
    }
    assert comparison["verdict"] == verdict(len(both), bounds)


@pytest.mark.integration
def test_prediction_log_records_the_challengers_probability_beside_the_champions(
    pair: tuple[Path, str, str], served: str, tmp_path: Path
) -> None:
    home, champion_tag, challenger_tag = pair
    champion, challenger = predictor(home, champion_tag), predictor(home, challenger_tag)
    rows = sample_flights(champion, 40, offset=6_000)
    known = challenger.vocabulary.known(rows)
    assert fresh().post(f"{served}/v1/prediction", json={"flights": as_flights(rows)}).status_code == 200
    time.sleep(1)
    requests: dict[str, list[dict[str, Any]]] = {}
    for record in log_records(LOGS[0]):
        requests.setdefault(record["request_id"], []).append(record)
    (ours,) = [sorted(rs, key=lambda r: r["index"]) for rs in requests.values() if len(rs) == 40]
    theirs = challenger.probabilities(FlightColumns.from_frame(rows[known], challenger.vocabulary))
    logged = [r["challenger_probability"] for r in ours]
    assert [p is None for p in logged] == list(~known)
    np.testing.assert_allclose([p for p in logged if p is not None], theirs, rtol=1e-9)


def test_verdict_needs_enough_flights_and_reads_each_bound_against_its_margin() -> None:
    margin = {m.metric: m.margin for m in MARGINS}
    within = {"brier": (-0.001, 0.001), "calibration_error": (-0.01, 0.01)}
    assert verdict(MIN_SHARED_FLIGHTS - 1, within) == "undecided"
    assert verdict(MIN_SHARED_FLIGHTS, within) == "non-inferior"
    assert verdict(MIN_SHARED_FLIGHTS, {**within, "brier": (-0.004, -0.001)}) == "better"
    assert verdict(MIN_SHARED_FLIGHTS, {**within, "brier": (margin["brier"] + 1e-4, 0.01)}) == "worse"
    assert (
        verdict(MIN_SHARED_FLIGHTS, {**within, "calibration_error": (margin["calibration_error"] + 1e-4, 0.05)})
        == "worse"
    )
    assert (
        verdict(MIN_SHARED_FLIGHTS, {**within, "calibration_error": (0.0, margin["calibration_error"] + 1e-4)})
        == "undecided"
    )
    assert verdict(MIN_SHARED_FLIGHTS, {**within, "brier": (-0.01, margin["brier"] + 1e-4)}) == "undecided"


def test_paired_comparison_from_sums_equals_the_figures_of_the_flights_themselves() -> None:
    rng = np.random.default_rng(3)
    flights = 5_000
    champion, challenger = rng.uniform(0.02, 0.6, flights), rng.uniform(0.02, 0.6, flights)
    delayed = (rng.uniform(size=flights) < champion).astype(float)
    champion_edges, challenger_edges = (np.quantile(p, np.linspace(0, 1, 101)[1:-1]) for p in (champion, challenger))

    def per_bin(edges: np.ndarray, p: np.ndarray) -> list[np.ndarray]:
        bins = probability_bins(edges, p)
        return [np.bincount(bins, weights=w, minlength=100) for w in (np.ones(flights), delayed, p)]

    errors = (delayed - champion) ** 2, (delayed - challenger) ** 2
    difference = errors[1] - errors[0]
    result = paired_comparison(
        flights, (float(errors[0].sum()), float(errors[1].sum())), float((difference**2).sum()),
        per_bin(champion_edges, champion), per_bin(challenger_edges, challenger),
    )  # fmt: skip
    assert result["brier"]["difference"] == pytest.approx(difference.mean())
    assert result["brier"]["upper"] == pytest.approx(difference.mean() + 1.6449 * difference.std() / np.sqrt(flights))

    def own(edges: np.ndarray, p: np.ndarray) -> float | None:
        grouped_flights, grouped_delayed, grouped_sums = calibration_groups(*per_bin(edges, p))
        return calibration_error(grouped_flights, grouped_sums, grouped_delayed)

    gap = own(challenger_edges, challenger) - own(champion_edges, champion)  # type: ignore[operator]
    assert result["calibration_error"]["difference"] == pytest.approx(gap)
    # each model's own figures on these very flights, which its block of GET /v1/monitoring does not give
    for role, p, edges, error in (
        ("champion", champion, champion_edges, errors[0]),
        ("challenger", challenger, challenger_edges, errors[1]),
    ):
        assert result[role] == pytest.approx({"brier": error.mean(), "calibration_error": own(edges, p)})
    assert result["verdict"] == "worse"  # a challenger of random probabilities is far worse on Brier


def test_a_challenger_that_falls_behind_drops_and_counts_instead_of_queueing(
    trained_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = bentoml.models.get(trained_model)
    metadata: dict[str, Any] = dict(stored.info.metadata)
    model = DelayPredictor.load(stored.path, metadata)
    monkeypatch.setattr(challenger_module, "MAX_PENDING_FLIGHTS", 10)
    monkeypatch.setattr(challenger_module, "SCORE_EVERY_S", 3600)  # no pass during the test
    monitors = [Monitor(metadata["reference"], model.threshold, tag, model.vocabulary) for tag in ("test:a", "test:b")]
    challenger = Challenger(model, monitors[1], model, monitors[0])
    dropped: list[float] = []
    challenger.dropped = type("Counted", (), {"inc": lambda self, n: dropped.append(n)})()
    flights = [Flight.model_validate({"OPERA": model.vocabulary.airlines[0], "TIPOVUELO": "N", "MES": 3})] * 4
    features = encode(FlightColumns.from_flights(flights, model.vocabulary))
    for _ in range(4):
        challenger.offer(features, model.scores(features))
    assert challenger.pending == 8 and challenger.unsent_drops == 8 and dropped == []
    challenger.close()  # the last pass scores what waits and counts the drops
    assert challenger.pending == 0 and dropped == [8]
    for monitor in monitors:
        monitor.close()


@pytest.mark.parametrize("tag", ["flight_delay:latest ", " latest", "lat est", "flight_delay:a/b"])
def test_a_tag_bentoml_cannot_read_is_refused_in_one_line_naming_the_variable(trained_model: str, tag: str) -> None:
    # BentoML's own "Invalid Tag" error named no variable (a copied tag's trailing space, say)
    with pytest.raises(SystemExit) as refused:
        stored_model(tag, "FLIGHT_DELAY_MODEL")
    assert str(refused.value).startswith(
        f"refusing to start: FLIGHT_DELAY_MODEL={tag!r} is not accepted: a {MODEL_NAME} version or tag"
    )


def test_the_models_name_alone_is_its_latest(trained_model: str) -> None:
    assert stored_model(MODEL_NAME, "FLIGHT_DELAY_MODEL").tag == stored_model("latest", "FLIGHT_DELAY_MODEL").tag


@pytest.mark.integration
@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"FLIGHT_DELAY_CHALLENGER": "flight_delay:nosuchversion"},
            "FLIGHT_DELAY_CHALLENGER='flight_delay:nosuchversion' is not accepted: no such model",
        ),
        ({"FLIGHT_DELAY_MODEL": "nosuchversion"}, "FLIGHT_DELAY_MODEL='nosuchversion' is not accepted: no such model"),
        (
            {"FLIGHT_DELAY_CHALLENGER": "{champion}"},
            "FLIGHT_DELAY_CHALLENGER='{champion}' is not accepted: it is the champion",
        ),
        (
            {"FLIGHT_DELAY_CHALLENGER": "{challenger}", "FLIGHT_DELAY_MONITORING": "false"},
            "is not accepted with monitoring off",
        ),
    ],
    ids=["unknown challenger", "unknown champion", "same model twice", "without monitoring"],
)
def test_start_refuses_a_challenger_it_cannot_run_in_one_line_naming_the_variable(
    pair: tuple[Path, str, str], variables: dict[str, str], message: str
) -> None:
    home, champion, challenger = pair
    filled = {name: value.format(champion=champion, challenger=challenger) for name, value in variables.items()}
    result = subprocess.run(
        [*SERVERS["service"], "0"],
        cwd=PROJECT_DIR,
        env={**os.environ, "BENTOML_HOME": str(home), "FLIGHT_DELAY_MODEL": champion, **filled},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert message.format(champion=champion) in result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_trained_with_min_flights_describes_the_flights_it_kept(
    pair: tuple[Path, str, str], sample_csv: Path
) -> None:
    """The challenger (--min-flights RARE) leaves out the flights of rarer airlines and cities: its
    metadata counts the file's rows and, apart, the flights trained on, and its monthly delay rates
    (the next training's comparison) are those of the flights it kept."""
    home, _, challenger = pair
    metadata: dict[str, Any] = dict(bentoml.models.get(challenger).info.metadata)
    flights = pd.read_csv(sample_csv, parse_dates=["Fecha-I", "Fecha-O"])
    flights["delayed"] = (flights["Fecha-O"] - flights["Fecha-I"]).dt.total_seconds() > 15 * 60
    kept = flights.loc[predictor(home, challenger).vocabulary.known(flights)]
    assert metadata["training_data"]["rows"] == len(flights) > metadata["training_data"]["flights"] == len(kept)
    assert metadata["monthly_delay_rate"] == train.monthly_delay_rate(kept)


@pytest.mark.integration
def test_a_bento_built_with_a_challenger_carries_both_models(pair: tuple[Path, str, str]) -> None:
    home, champion, challenger = pair
    variables = {"BENTOML_HOME": str(home), "FLIGHT_DELAY_MODEL": champion, "FLIGHT_DELAY_CHALLENGER": challenger}
    built = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag", "."],
        cwd=PROJECT_DIR,
        env={**os.environ, **variables},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    bento = yaml.safe_load((home / "bentos" / MODEL_NAME / tag.split(":")[1] / "bento.yaml").read_text())
    assert {model["tag"] for model in bento["services"][0]["models"]} == {champion, challenger}


def test_challenger_drill_page_is_made_from_its_committed_results() -> None:
    """The drill's page in loadtest/results/challenger/ is its markdown() of the JSON beside it: the
    figures docs/monitoring.md cites come from the run, not from an edit."""
    from loadtest.challenger_drill import RESULTS, markdown

    for data in sorted(RESULTS.glob("*.json")):
        assert markdown(json.loads(data.read_text())) == data.with_suffix(".md").read_text(), data.name
