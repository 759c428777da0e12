"""Monitoring drills on the real data: what GET /v1/monitoring says after real traffic and outcomes.

    .venv/bin/python loadtest/monitoring_drills.py same     # trained on the training days; held-out days sent
    .venv/bin/python loadtest/monitoring_drills.py season   # trained on January to June; July to December sent
    .venv/bin/python loadtest/monitoring_drills.py world    # as `same`, but 25% of on-time flights left 30 min late

Each trains its model with train.py into a model store of its own, serves it (one worker), sends the
flights as predictions and then as outcomes (POST /v1/outcomes), and writes
loadtest/results/monitoring/DRILL.json, .md and .png; an existing result is refused unless --overwrite.
Needs data/dataset_SCL.csv (never copied into the results: they hold counts and scores only).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run import PROJECT_DIR, say, server, unused  # noqa: E402

from models.config import DEFAULT_DATA_PATH, SEED, TEST_SIZE  # noqa: E402
from models.data import load_flights  # noqa: E402

RESULTS = HERE / "results" / "monitoring"
TOKEN = "drill-token"
PER_REQUEST = 500
# The alerts' own conditions (deploy/k8s/alerts/flight-delay.rules.yml), checked on the pod's figures.
NOT_ALERTED_INPUTS = ("hour", "weekday", "day_of_month", "month")
CALIBRATION_BOUND, ESTIMATE_BOUND = 0.05, 0.03


def held_out_days(flights: pd.DataFrame) -> np.ndarray:
    """Which flights train.py holds out: the same split by calendar day, seed and share."""
    days = flights["Fecha-I"].dt.strftime("%Y-%m-%d").to_numpy()
    _train, test = next(
        GroupShuffleSplit(n_splits=1, test_size=TEST_SIZE, random_state=SEED).split(flights, groups=days)
    )
    held_out = np.zeros(len(flights), dtype=bool)
    held_out[test] = True
    return held_out


def train_store(rows: pd.Series, home: Path) -> None:
    """train.py on the dataset's rows where `rows` is true (written to a temporary CSV), into store `home`."""
    raw = pd.read_csv(DEFAULT_DATA_PATH, low_memory=False)
    with tempfile.TemporaryDirectory() as directory:
        subset = Path(directory) / "subset.csv"
        raw[rows.to_numpy()].to_csv(subset, index=False)
        subprocess.run(
            [sys.executable, "train.py", "--data", str(subset)],
            cwd=PROJECT_DIR,
            env={**os.environ, "BENTOML_HOME": str(home)},
            check=True,
            capture_output=True,
        )


def as_requests(flights: pd.DataFrame, outcomes: bool) -> list[dict[str, Any]]:
    """The flights as request bodies of PER_REQUEST flights, with Fecha-O for outcomes."""
    body = [
        {
            "OPERA": row["OPERA"],
            "TIPOVUELO": row["TIPOVUELO"],
            "MES": int(row["Fecha-I"].month),
            "Fecha-I": f"{row['Fecha-I']:%Y-%m-%d %H:%M}",
            "SIGLADES": row["SIGLADES"],
            **({"Fecha-O": f"{row['Fecha-O']:%Y-%m-%d %H:%M}"} if outcomes else {}),
        }
        for _, row in flights.iterrows()
    ]
    return [{"flights": body[i : i + PER_REQUEST]} for i in range(0, len(body), PER_REQUEST)]


def run_drill(name: str, training: pd.Series, traffic: pd.DataFrame, outcomes: pd.DataFrame) -> dict[str, Any]:
    """Train on `training` rows, send `traffic` as predictions and `outcomes` as outcomes; the pod's figures."""
    with tempfile.TemporaryDirectory() as directory:
        home = Path(directory)
        say(f"{name}: training on {int(training.sum())} flights")
        train_store(training, home)
        env = {"BENTOML_HOME": str(home), "FLIGHT_DELAY_WORKERS": "1", "FLIGHT_DELAY_OUTCOMES_TOKEN": TOKEN}
        with server("service", env=env) as (url, _process), httpx.Client(base_url=url, timeout=60) as http:
            say(f"{name}: {len(traffic)} predictions, then their outcomes")
            for body in as_requests(traffic, outcomes=False):
                assert http.post("/v1/prediction", json=body).status_code == 200
            for body in as_requests(outcomes, outcomes=True):
                answer = http.post("/v1/outcomes", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
                assert answer.status_code == 200, answer.text
            time.sleep(1.5)  # each worker exports its counts once a second
            report = http.get("/v1/monitoring").json()
            card = http.get("/v1/model").json()
    report["training"] = {"flights": int(training.sum()), "held_out": card["metrics"]["all_fields"]["roc_auc"]}
    return report


def verdicts(report: dict[str, Any]) -> dict[str, Any]:
    """What the alerts' conditions say of the pod's figures (not their `for:` durations)."""
    drifted = sorted(name for name, d in report["drift"].items() if d["drifted"] and name not in NOT_ALERTED_INPUTS)
    outcomes = report["outcomes"]
    # the predictions and the outcomes are the same flights: the expected rate is that of the outcomes'
    gap = abs(report["estimated"]["delay_rate"] - outcomes["delay_rate"]) if outcomes["flights"] else None
    return {
        "inputs_drifted_alerted": drifted,
        "inputs_drifted_all": sorted(name for name, d in report["drift"].items() if d["drifted"]),
        "realized_calibration_error": outcomes["calibration_error"],
        "calibration_alert_condition": outcomes["calibration_error"] > CALIBRATION_BOUND,
        "expected_vs_realized_delay_rate_on_outcomes": round(gap, 4) if gap is not None else None,
        "estimate_alert_condition": gap is not None and gap > ESTIMATE_BOUND,
    }


def plot(report: dict[str, Any], path: Path, title: str) -> None:
    """Each input's drift against the threshold, and expected against realized quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    inputs = [name for name, d in report["drift"].items() if d["score"] is not None]
    left.barh(inputs, [report["drift"][name]["score"] for name in inputs], color="#4c72b0")
    left.axvline(0.1, color="#c44e52", linestyle="--", label="threshold 0.1")
    left.set_xlabel("Jensen-Shannon distance from the training flights")
    left.legend()
    measures = ("delay_rate", "brier", "roc_auc")
    x = np.arange(len(measures))
    for offset, (label, values) in enumerate(
        (
            ("expected from probabilities", report["estimated"]),
            ("realized from outcomes", report["outcomes"]),
            ("held-out days at training", report["reference"]),
        )
    ):
        left_edge = x + (offset - 1) * 0.27
        right.bar(left_edge, [values[m] or 0 for m in measures], width=0.27, label=label)
    right.set_xticks(x, measures)
    right.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def markdown(name: str, title: str, command: str, report: dict[str, Any], verdict: dict[str, Any]) -> str:
    """The drill's report page."""
    rows = "\n".join(
        f"| {input_name} | {d['score'] if d['score'] is not None else 'not judged'} | {d['flights']:,} | "
        f"{d.get('min_flights', '-')} | {'yes' if d['drifted'] else 'no' if d['drifted'] is not None else '-'} |"
        for input_name, d in report["drift"].items()
    )
    quality = "\n".join(
        f"| {m} | {report['estimated'][m]} | {report['outcomes'][m]} | {report['reference'][m]} |"
        for m in ("delay_rate", "brier", "roc_auc")
    )
    return f"""# Monitoring drill: {title}

{time.strftime("%Y-%m-%d")}, this machine (2 cores, shared); `{command}`. {report["predictions"]["flights"]:,}
predictions and {report["outcomes"]["flights"]:,} outcomes on a model trained on {report["training"]["flights"]:,}
flights; the figures are the pod's `GET /v1/monitoring` ([{name}.json]({name}.json)).

![drift and quality]({name}.png)

| input | drift score | flights | min flights | drifted |
|---|---:|---:|---:|---|
{rows}

| measure | expected (probabilities) | realized (outcomes) | held-out days at training |
|---|---:|---:|---:|
{quality}

Calibration error realized: {report["outcomes"]["calibration_error"]} (alert bound {CALIBRATION_BOUND}); expected
and realized delay rate of the same flights {verdict["expected_vs_realized_delay_rate_on_outcomes"]} apart (alert
bound {ESTIMATE_BOUND}). Alert conditions: inputs drifted {verdict["inputs_drifted_alerted"] or "none"}
(all drifted, clock and calendar inputs included: {verdict["inputs_drifted_all"] or "none"}); calibration
{"holds" if verdict["calibration_alert_condition"] else "does not hold"}; estimate vs realized
{"holds" if verdict["estimate_alert_condition"] else "does not hold"}.
"""


DRILLS = {
    "same": "trained on the training days, the held-out days sent",
    "season": "trained on January to June, July to December sent",
    "world": "as `same`, with 25% of the on-time flights made 30 minutes late in the outcomes",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("drill", choices=DRILLS)
    parser.add_argument("--overwrite", action="store_true", help="replace the drill's results if they exist")
    args = parser.parse_args()
    paths = [RESULTS / f"{args.drill}.{suffix}" for suffix in ("json", "md", "png")]
    unused(*paths, overwrite=args.overwrite)
    RESULTS.mkdir(parents=True, exist_ok=True)
    flights = load_flights(DEFAULT_DATA_PATH)
    if args.drill == "season":
        training = flights["Fecha-I"].dt.month <= 6
        traffic = flights[~training]
        outcomes = traffic
    else:
        held_out = held_out_days(flights)
        training = pd.Series(~held_out, index=flights.index)
        traffic = flights[held_out]
        outcomes = traffic.copy()
        if args.drill == "world":
            on_time = np.flatnonzero(outcomes["delayed"].to_numpy() == 0)
            late = np.random.default_rng(SEED).choice(on_time, size=len(on_time) // 4, replace=False)
            column = outcomes.columns.get_loc("Fecha-O")
            outcomes.iloc[late, column] = outcomes["Fecha-I"].iloc[late] + pd.Timedelta(minutes=30)
    report = run_drill(args.drill, training, traffic, outcomes)
    command = f".venv/bin/python loadtest/monitoring_drills.py {args.drill}"
    verdict = verdicts(report)
    outcome = {"drill": args.drill, "what": DRILLS[args.drill], "date": time.strftime("%Y-%m-%d %H:%M"),
               "command": command, "verdict": verdict, "monitoring": report}  # fmt: skip
    paths[0].write_text(json.dumps(outcome, indent=2) + "\n")
    paths[1].write_text(markdown(args.drill, DRILLS[args.drill], command, report, verdict))
    plot(report, paths[2], DRILLS[args.drill])
    print(json.dumps(verdict, indent=2))


if __name__ == "__main__":
    main()
