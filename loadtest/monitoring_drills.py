"""Monitoring drills on the real data: what GET /v1/monitoring says after real traffic and outcomes.

    .venv/bin/python -m loadtest.monitoring_drills same     # trained on the training days; held-out days sent
    .venv/bin/python -m loadtest.monitoring_drills season   # trained on January to June; July to December sent
    .venv/bin/python -m loadtest.monitoring_drills world    # as `same`, but 25% of on-time flights left 30 min late
    .venv/bin/python -m loadtest.monitoring_drills cluster  # the held-out days through 2 replicas and Prometheus

Each of the first three trains its model with train.py into a model store of its own, serves it (one
worker), sends the flights as predictions and then as outcomes (POST /v1/outcomes). `cluster` runs
two replicas of the image (--image, 1 worker each) behind HAProxy and Prometheus with the project's
recording rules (loadtest.cluster), sends the held-out days through the balancer, and
checks the recorded cluster-wide drift and realized figures against both pods' counts combined; the
image's model must be train.py's on this very dataset (checked by its sha256), whose held-out days
those are. Each writes loadtest/results/monitoring/DRILL.json, .md and .png; an existing result is
refused unless --overwrite. Needs data/dataset_SCL.csv (never copied into the results: they hold
counts and scores only); `cluster` also a Docker engine (DOCKER_HOST), haproxy and prometheus.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from loadtest.cluster import LB_URL, cluster, port, wait_until
from loadtest.probes import Samples, metrics
from loadtest.results import RESULTS as ALL_RESULTS
from loadtest.results import figure, machine, say, unused, write_json
from loadtest.servers import PROJECT_DIR, server
from models.config import DEFAULT_DATA_PATH, SEED, TEST_SIZE
from models.data import file_sha256, load_flights
from models.features import Vocabulary
from models.quality import js_distance, min_flights, realized_quality

RESULTS = ALL_RESULTS / "monitoring"
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
            card = http.get("/v1/model").json()
            # The model accepts only the airlines and cities of its training data: the others would
            # get 400, as a client sending them would. They are counted apart, not sent.
            vocabulary = Vocabulary.from_metadata(card["vocabularies"])
            unknown = {
                "flights": int((~vocabulary.known(traffic)).sum()),
                "airlines": sorted(set(traffic["OPERA"]) - set(vocabulary.airlines)),
                "destinations": sorted(set(traffic["SIGLADES"]) - set(vocabulary.destinations)),
            }
            traffic, outcomes = traffic[vocabulary.known(traffic)], outcomes[vocabulary.known(outcomes)]
            say(f"{name}: {len(traffic)} predictions, then their outcomes; {unknown['flights']} unknown to the model")
            for body in as_requests(traffic, outcomes=False):
                assert http.post("/v1/prediction", json=body).status_code == 200
            for body in as_requests(outcomes, outcomes=True):
                answer = http.post("/v1/outcomes", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
                assert answer.status_code == 200, answer.text
            time.sleep(1.5)  # each worker exports its counts once a second
            report = http.get("/v1/monitoring").json()
    # train.py holds out a third of the days it is given, so the model is fitted on the rest only
    report["training"] = {"flights": int(training.sum()), "fitted": card["reference"]["flights"]}
    report["unknown_to_the_model"] = unknown
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
    with figure(path, 2, (11, 4)) as (drawn, (left, right)):
        inputs = [name for name, d in report["drift"].items() if d["score"] is not None]
        left.barh(inputs, [report["drift"][name]["score"] for name in inputs], color="#4c72b0")
        left.axvline(0.1, color="#c44e52", linestyle="--", label="threshold 0.1")
        left.set_xlabel("Jensen-Shannon distance from the training flights")
        left.legend()
        measures = ("delay_rate", "brier", "roc_auc")
        x = np.arange(len(measures))
        sources = (("expected from probabilities", "estimated"), ("realized from outcomes", "outcomes"),
                   ("held-out days at training", "reference"))  # fmt: skip
        for offset, (label, key) in enumerate(sources):
            right.bar(x + (offset - 1) * 0.27, [report[key][m] or 0 for m in measures], width=0.27, label=label)
        right.set_xticks(x, measures)
        right.legend(fontsize=8)
        drawn.suptitle(title)


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
    unknown = report["unknown_to_the_model"]
    return f"""# Monitoring drill: {title}

{time.strftime("%Y-%m-%d")}, this machine (2 cores, shared); `{command}`. {report["predictions"]["flights"]:,}
predictions and {report["outcomes"]["flights"]:,} outcomes on a model given {report["training"]["flights"]:,} flights
by train.py, fitted on the {report["training"]["fitted"]:,} of its training days (the rest its own held-out days);
the figures are the pod's `GET /v1/monitoring` ([{name}.json]({name}.json)). Not sent, since the model
would refuse them (400): {unknown["flights"]:,} flights of an airline or city absent from its training data
(airlines {unknown["airlines"] or "none"}, cities {unknown["destinations"] or "none"}).

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


# The cluster drill: two replicas, the recorded series it checks, and how close they must be.
CLUSTER_SLOTS = (1, 2)
# rate() scales each pod's counts by (sampled + time to the window's end) / sampled, a factor within
# 1 / seconds-since-first-scrape of the other pod's: ratios of summed rates then differ from those of
# summed counts by that times the pods' difference, about 1e-4 here. 1e-3 is ten times that, and a
# hundredth of the drift threshold.
CLUSTER_TOLERANCE = 1e-3
READ_AFTER_S = 90
RECORDED_DRIFT = "model_input:flight_delay_input_drift:js1h"
RECORDED_OUTCOMES = {
    "realized delay_rate": "model:flight_delay_outcome_delay_rate:ratio6h",
    "expected delay_rate": "model:flight_delay_outcome_expected_delay_rate:ratio6h",
    "realized calibration_error": "model:flight_delay_outcome_calibration_error:ratio6h",
}


def pod_counts(samples: Samples, model: str, bins: int) -> dict[str, Any]:
    """One model's monitoring counts in a pod's samples: flights by input and value (`missing` left out,
    as the rules leave it out), predictions, and outcomes per probability bin with their sum of
    squared errors. Values are keyed by their label, so no vocabulary is needed here."""

    def of(name: str) -> list[tuple[dict[str, str], float]]:
        return [(dict(key), value) for key, value in samples.get(name, {}).items() if dict(key).get("model") == model]

    inputs: dict[str, dict[str, float]] = {}
    for labels, value in of("flight_delay_input_flights_total"):
        if labels["value"] != "missing":
            inputs.setdefault(labels["input"], {})[labels["value"]] = value
    per_bin = {}
    for key in ("flights", "delayed", "probability_sum"):
        counts = [0.0] * bins
        for labels, value in of(f"flight_delay_outcome_{key}_total"):
            counts[int(labels["bin"])] += value
        per_bin[f"outcome_{key}"] = counts
    return {
        "predictions": sum(value for _, value in of("flight_delay_probability_bin_flights_total")),
        "inputs": inputs,
        **per_bin,
        "outcome_squared_error": sum(value for _, value in of("flight_delay_outcome_squared_error_total")),
    }


def reference_shares(samples: Samples, model: str) -> dict[str, Any]:
    """The model's training share of each value of each input, as a pod exports it (the rules' reference)."""
    shares: dict[str, dict[str, float]] = {}
    for key, value in samples.get("flight_delay_reference_share", {}).items():
        labels = dict(key)
        if labels.get("model") == model:
            shares.setdefault(labels["input"], {})[labels["value"]] = value
    return shares


def combined(*pods: dict[str, Any]) -> dict[str, Any]:
    """Pods' counts added up, as Prometheus's `sum by` adds them (a value one pod lacks counts 0 there)."""
    first = pods[0]
    both: dict[str, Any] = {}
    for key in first:
        if isinstance(first[key], dict):
            both[key] = {
                name: {
                    value: sum(pod[key][name].get(value, 0.0) for pod in pods)
                    for value in dict.fromkeys(v for pod in pods for v in pod[key][name])
                }
                for name in first[key]
            }
        elif isinstance(first[key], list):
            both[key] = [float(sum(column)) for column in zip(*(pod[key] for pod in pods), strict=True)]
        else:
            both[key] = float(sum(pod[key] for pod in pods))
    return both


def figures(counts: dict[str, Any], shares: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """The figures the recording rules record, scored from counts with the service's own functions:
    each input's drift from the reference `shares` (None below its minimum of flights, which counts the
    reference's values as the rule does) and the realized figures of the outcomes."""
    scores: dict[str, float | None] = {}
    for name, reference in shares.items():
        values = sorted(set(reference) | set(counts["inputs"].get(name, {})))
        live = np.array([counts["inputs"].get(name, {}).get(value, 0.0) for value in values])
        expected = np.array([reference.get(value, 0.0) for value in values])
        judged = live.sum() >= min_flights(len(reference))
        scores[f"drift {name}"] = js_distance(live, expected) if judged else None
    flights, delayed, sums = (np.array(counts[f"outcome_{k}"]) for k in ("flights", "delayed", "probability_sum"))
    realized = realized_quality(flights, delayed, sums, counts["outcome_squared_error"])
    scores["realized delay_rate"] = realized["delay_rate"]
    scores["expected delay_rate"] = float(sums.sum() / flights.sum()) if flights.sum() else None
    scores["realized calibration_error"] = realized["calibration_error"]
    return scores


def compare(
    recorded: dict[str, float | None], counted: dict[str, float | None], tolerance: float = CLUSTER_TOLERANCE
) -> list[dict[str, Any]]:
    """Each figure recorded by Prometheus beside the same figure from the pods' counts combined; within
    tolerance, or both absent (an input the rule did not judge)."""
    rows = []
    for name in counted:
        got, want = recorded.get(name), counted[name]
        difference = None if got is None or want is None else abs(got - want)
        agrees = (got is None and want is None) or (difference is not None and difference <= tolerance)
        rows.append({"figure": name, "recorded": got, "pods_combined": want, "difference": difference,
                     "agrees": agrees})  # fmt: skip
    return rows


def pod_figures(report: dict[str, Any]) -> dict[str, float | None]:
    """The same figures from one pod's GET /v1/monitoring (its own counts only)."""
    scores: dict[str, float | None] = {f"drift {name}": d["score"] for name, d in report["drift"].items()}
    outcomes = report["outcomes"]
    scores["realized delay_rate"] = outcomes["delay_rate"]
    scores["expected delay_rate"] = None  # /v1/monitoring estimates all predictions, not the outcomes' flights
    scores["realized calibration_error"] = outcomes["calibration_error"]
    return scores


def run_cluster(image: str, traffic: pd.DataFrame, training_flights: int) -> dict[str, Any]:
    """The held-out days through HAProxy to two replicas as predictions and outcomes; Prometheus's
    recorded figures and raw sums, and each pod's counts and /v1/monitoring, read at one moment."""
    env = ("FLIGHT_DELAY_OUTCOMES_TOKEN=" + TOKEN,)
    with (
        cluster(image, CLUSTER_SLOTS, prometheus=True, env=env) as (_replicas, _balancer, prometheus),
        httpx.Client(base_url=LB_URL, timeout=60) as http,
    ):
        card = http.get("/v1/model").json()
        if card["training_data"]["sha256"] != file_sha256(DEFAULT_DATA_PATH) or (
            sum(card["reference"]["inputs"]["airline"]) != training_flights
        ):
            sys.exit(f"{image}'s model was not trained by train.py on {DEFAULT_DATA_PATH}: `make train`, then "
                     "`LOCAL_BASE=1 make container`")  # fmt: skip
        # Prometheus applies new targets at most every 5 s: counts made before its first scrape of a
        # pod would be missing from every rate() (the first sample is the start of a window).
        up = 'up{job="flight-delay"} == 1'
        wait_until(lambda: len(prometheus.query(up, time.time())) == len(CLUSTER_SLOTS), 30, "both pods scraped", 0.2)
        scraping_since = time.time()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for route, outcomes in (("/v1/prediction", False), ("/v1/outcomes", True)):
            say(f"cluster: {len(traffic)} flights to {route} through the balancer")
            with ThreadPoolExecutor(2) as pool:  # two at a time, so both replicas take requests
                for answer in pool.map(
                    lambda body: http.post(route, json=body, headers=headers),  # noqa: B023
                    as_requests(traffic, outcomes=outcomes),
                ):
                    assert answer.status_code == 200, answer.text

        def scraped() -> bool:
            totals = [prometheus.query(f'sum({name}{{job="flight-delay"}})', time.time()) for name in
                      ("flight_delay_probability_bin_flights_total", "flight_delay_outcome_flights_total")]  # fmt: skip
            return all(total and total[0][1] == len(traffic) for total in totals)

        wait_until(scraped, 30, "every flight counted in Prometheus", step=0.5)
        # Read a minute and a half after the first scrape (and three rule evaluations after the last
        # flight's): rate()'s extrapolation, per pod, shrinks as the sampled time grows (cluster.md).
        time.sleep(max(3.0, READ_AFTER_S - (time.time() - scraping_since)))
        at = time.time()
        model = card["tag"]
        selector = f'{{job="flight-delay", model="{model}"}}'
        recorded: dict[str, float | None] = {
            f"drift {labels['input']}": value
            for labels, value in prometheus.query(f'{RECORDED_DRIFT}{{model="{model}"}}', at)
        }
        for figure, name in RECORDED_OUTCOMES.items():
            answer = prometheus.query(f'{name}{{model="{model}"}}', at)
            recorded[figure] = answer[0][1] if answer else None
        seen = f'{{job="flight-delay", model="{model}", value!="missing"}}'
        raw_inputs = prometheus.query(f"sum by (input, value) (flight_delay_input_flights_total{seen})", at)
        raw_outcomes = prometheus.query(f"sum by (bin) (flight_delay_outcome_flights_total{selector})", at)
        implied = prometheus.query(f'model_input:flight_delay_input_flights:rate1h{{model="{model}"}} * 3600', at)
        extrapolated = {labels["input"]: value for labels, value in implied}
        extrapolated_outcomes = prometheus.query(
            f'model:flight_delay_outcome_flights:rate6h{{model="{model}"}} * 21600', at
        )
        alerts = prometheus.query("ALERTS", at)
        pods, shares = {}, []
        for slot in CLUSTER_SLOTS:
            url = f"http://127.0.0.1:{port(slot)}"
            samples = metrics(url, timeout=10)
            shares.append(reference_shares(samples, model))
            pods[f"r{slot}"] = {
                "port": port(slot),
                "counts": pod_counts(samples, model, len(card["reference"]["probability_edges"]) + 1),
                "monitoring": httpx.get(f"{url}/v1/monitoring", timeout=10).json(),
            }
    if any(share != shares[0] for share in shares):
        sys.exit("the replicas export different reference shares: not one model")
    both = combined(*(pod["counts"] for pod in pods.values()))
    counted_inputs = {(name, value): n for name, values in both["inputs"].items() for value, n in values.items()}
    raw_equal = {(labels["input"], labels["value"]): value for labels, value in raw_inputs} == counted_inputs and {
        int(labels["bin"]): value for labels, value in raw_outcomes
    } == dict(enumerate(both["outcome_flights"]))
    return {
        "model": model,
        "training_data": card["training_data"],
        "reference": {"flights": training_flights, "shares": shares[0]},
        "sent": {"predictions": len(traffic), "outcomes": len(traffic)},
        "read_at": round(at, 1),
        "seconds_since_first_scrape": round(at - scraping_since, 1),
        "pods": pods,
        "raw_counters_in_prometheus_equal_pods_combined": raw_equal,
        "extrapolated_counts": {
            "inputs": extrapolated,
            "outcomes": extrapolated_outcomes[0][1] if extrapolated_outcomes else None,
        },
        "alerts": [labels for labels, _ in alerts],
        "recorded": recorded,
    }  # fmt: skip


DRILLS = {
    "same": "trained on the training days, the held-out days sent",
    "season": "trained on January to June, July to December sent",
    "world": "as `same`, with 25% of the on-time flights made 30 minutes late in the outcomes",
    "cluster": "two replicas behind HAProxy and Prometheus, the held-out days sent through the balancer",
}


def cluster_outcome(result: dict[str, Any]) -> dict[str, Any]:
    """The cluster drill's comparison: the recorded figures against the pods' counts combined, and
    each pod's own figures with their plain mean (which the rules must not compute)."""
    both = combined(*(pod["counts"] for pod in result["pods"].values()))
    rows = compare(result["recorded"], figures(both, result["reference"]["shares"]))
    own = {name: pod_figures(pod["monitoring"]) for name, pod in result["pods"].items()}
    for row in rows:
        values = [own[name][row["figure"]] for name in own]
        row.update({f"pod {name}": value for name, value in zip(own, values, strict=True)})
        row["mean_of_pods"] = None if None in values else float(np.mean([v for v in values if v is not None]))
    return {
        "combined_counts": {"predictions": both["predictions"], "outcomes": sum(both["outcome_flights"])},
        "per_pod": {
            name: {"predictions": pod["counts"]["predictions"], "outcomes": sum(pod["counts"]["outcome_flights"])}
            for name, pod in result["pods"].items()
        },
        "tolerance": CLUSTER_TOLERANCE,
        "all_agree": all(row["agrees"] for row in rows),
        "largest_difference": max((row["difference"] for row in rows if row["difference"] is not None), default=None),
        "rows": rows,
    }  # fmt: skip


def cluster_markdown(command: str, when: str, where: str, result: dict[str, Any], outcome: dict[str, Any]) -> str:
    """The cluster drill's report page."""

    pods = list(outcome["per_pod"])

    def line(row: dict[str, Any]) -> str:
        absent = "-" if row["figure"] == "expected delay_rate" else "not judged"  # no pod has it, by design
        cells = [row["recorded"], row["pods_combined"], *(row[f"pod {name}"] for name in pods), row["mean_of_pods"]]
        text = ["not judged" if v is None else f"{v:.4f}" for v in cells[:2]]
        text += [absent if v is None else f"{v:.4f}" for v in cells[2:]]
        text.insert(2, "-" if row["difference"] is None else f"{row['difference']:.1e}")
        return f"| {row['figure']} | " + " | ".join(text) + " |"

    rows = "\n".join(line(row) for row in outcome["rows"])
    split = ", ".join(
        f"{name} {counts['predictions']:,.0f} predictions and {counts['outcomes']:,.0f} outcomes"
        for name, counts in outcome["per_pod"].items()
    )
    extrapolated = result["extrapolated_counts"]
    implied = sorted({round(value) for value in extrapolated["inputs"].values()})
    alerts = ", ".join(f"{a.get('alertname')} ({a.get('alertstate')})" for a in result["alerts"])
    airline = next(row for row in outcome["rows"] if row["figure"] == "drift airline")
    yes = {True: "yes", False: "no"}
    training, sent = result["reference"]["flights"], result["sent"]["predictions"]
    # the chance distance of k values at n flights, sqrt((k - 1) / (8 n ln 2)) (docs/monitoring.md)
    fewest = min(counts["predictions"] for counts in outcome["per_pod"].values())
    noise = np.sqrt((len(result["reference"]["shares"]["airline"]) - 1) / (8 * fewest * np.log(2)))
    on_pods = " and ".join(f"{airline[f'pod {name}']:.3f}" for name in pods)
    rules_count = (
        f"`rate1h * 3600` gives {', '.join(f'{value:,}' for value in implied)} flights per input and `rate6h * 21600` "
        f"{extrapolated['outcomes']:,.0f} outcomes, for {outcome['combined_counts']['predictions']:,.0f} and "
        f"{outcome['combined_counts']['outcomes']:,.0f} counted"
    )
    return f"""# Monitoring drill: cluster view

{when}, {where}; `{command}`.
Image `{result["image"]}`, model `{result["model"]}`: train.py on the real dataset
(sha256 `{result["training_data"]["sha256"][:12]}...`), trained on the {training:,} flights of the training days.
Two replicas (1 worker each) behind HAProxy; Prometheus scrapes both each second and evaluates
deploy/k8s/alerts/flight-delay.rules.yml each second. The held-out days ({sent:,} flights) went
through the balancer as predictions, then as outcomes, 500 flights a request, two requests at a
time. The balancer split them: {split} ([cluster.json](cluster.json)).

![recorded against the pods' counts](cluster.png)

- Prometheus's raw counters, summed over the pods by input and value and by bin, equal the pods' own
  `/metrics` counts exactly: {yes[result["raw_counters_in_prometheus_equal_pods_combined"]]}.
- The recorded cluster-wide figures equal the same figures scored from both pods' counts added up
  (`models.quality.js_distance`, `realized_quality`) within {outcome["tolerance"]}: {yes[outcome["all_agree"]]},
  largest difference {outcome["largest_difference"]:.1e}.
- Each pod's own `GET /v1/monitoring` (ports 3101 and 3102) and the plain mean of the two are not the
  cluster's figure: airline drift {on_pods} on the pods, {airline["pods_combined"]:.3f} on the cluster.
  A request's 500 flights are consecutive rows of the dataset, which is ordered by route
  within each month, and each request goes whole to one replica, so each pod's mix of airlines and
  months is skewed while the two together are the held-out days (sampling noise alone is about
  {noise:.3f} for airline at {fewest:,.0f} flights).

| figure | recorded (Prometheus) | pods' counts combined | difference | {" | ".join(pods)} | mean of pods |
|---|---:|---:|---:|{"---:|" * len(pods)}---:|
{rows}

Why not exactly equal: the rules use `rate(...[1h])` and `rate(...[6h])`. Prometheus extrapolates
each pod's increase from its first to its last sample on to the evaluation time, by a factor
(sampled time + time to the end) / sampled time of its own. The drift and realized figures are
ratios of the pods' summed rates: the factor cancels where both pods' are equal, and leaves a
difference of the order of their gap times the pods' difference. The rules' own counts show the
factor, {result["seconds_since_first_scrape"]:.0f} s after the pods' first scrape: {rules_count}.
The drill therefore reads them well after its last flight: the gap shrinks as the sampled time
grows. "expected delay_rate" is the mean probability of the outcomes' flights; a pod's
`/v1/monitoring` estimates over all its predictions instead, so it has no pod column. Alerts pending
or firing at the end: {alerts or "none"} (every monitoring alert has a `for:` of 30 min or more).
"""


def plot_cluster(outcome: dict[str, Any], path: Path) -> None:
    """Each figure as recorded by Prometheus, from the pods' counts combined, and from each pod alone."""
    rows = [row for row in outcome["rows"] if row["recorded"] is not None]
    series = [("recorded by Prometheus", "recorded"), ("pods' counts combined", "pods_combined"),
              *((f"pod {name} alone", f"pod {name}") for name in outcome["per_pod"])]  # fmt: skip
    with figure(path, size=(11, 4.5)) as (_, axes):
        x = np.arange(len(rows))
        width = 0.8 / len(series)
        for offset, (label, key) in enumerate(series):
            axes.bar(x + (offset - (len(series) - 1) / 2) * width, [row[key] or 0 for row in rows], width, label=label)
        axes.axhline(0.1, color="#c44e52", linestyle="--", linewidth=0.8, label="drift threshold 0.1")
        axes.set_xticks(x, [row["figure"].replace(" ", "\n") for row in rows], fontsize=8)
        axes.set_title("Cluster view: recorded cluster-wide figures against the two pods' counts combined")
        axes.legend(fontsize=8)


def main_cluster(image: str, paths: list[Path]) -> None:
    """The cluster drill: run it, compare, write its results."""
    flights = load_flights(DEFAULT_DATA_PATH)
    held_out = held_out_days(flights)
    result = {"image": image, **run_cluster(image, flights[held_out], int((~held_out).sum()))}
    outcome = cluster_outcome(result)
    command = ".venv/bin/python -m loadtest.monitoring_drills cluster"
    when, where = time.strftime("%Y-%m-%d %H:%M"), machine()
    report = {"drill": "cluster", "what": DRILLS["cluster"], "date": when, "machine": where, "command": command,
              "comparison": outcome, "run": result}  # fmt: skip
    write_json(paths[0], report)
    paths[1].write_text(cluster_markdown(command, when, where, result, outcome))
    plot_cluster(outcome, paths[2])
    print(json.dumps({key: outcome[key] for key in ("per_pod", "all_agree", "largest_difference")}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("drill", choices=DRILLS)
    parser.add_argument("--overwrite", action="store_true", help="replace the drill's results if they exist")
    parser.add_argument("--image", default="flight-delay:latest", help="cluster: the image the replicas run")
    args = parser.parse_args()
    paths = [RESULTS / f"{args.drill}.{suffix}" for suffix in ("json", "md", "png")]
    unused(*paths, overwrite=args.overwrite)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.drill == "cluster":
        main_cluster(args.image, paths)
        return
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
    command = f".venv/bin/python -m loadtest.monitoring_drills {args.drill}"
    verdict = verdicts(report)
    outcome = {"drill": args.drill, "what": DRILLS[args.drill], "date": time.strftime("%Y-%m-%d %H:%M"),
               "command": command, "verdict": verdict, "monitoring": report}  # fmt: skip
    write_json(paths[0], outcome)
    paths[1].write_text(markdown(args.drill, DRILLS[args.drill], command, report, verdict))
    plot(report, paths[2], DRILLS[args.drill])
    print(json.dumps(verdict, indent=2))


if __name__ == "__main__":
    main()
