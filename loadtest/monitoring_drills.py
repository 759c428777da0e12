"""Monitoring drills on the real data: what GET /v1/monitoring says after real traffic and outcomes.

    .venv/bin/python -m loadtest.monitoring_drills same     # trained on the training days; held-out days sent
    .venv/bin/python -m loadtest.monitoring_drills season   # trained on January to June; July to December sent
    .venv/bin/python -m loadtest.monitoring_drills world    # as `same`, but 25% of on-time flights left 30 min late
    .venv/bin/python -m loadtest.monitoring_drills cluster  # the held-out days through 2 replicas and Prometheus

The first three serve a model train.py fits in a store of their own; `cluster` runs --image, whose model must be
train.py's on this dataset, in loadtest.cluster. Writes results/monitoring/DRILL.json, .md, .png (counts and
scores, never the data). Needs data/dataset_SCL.csv; `cluster` also Docker (DOCKER_HOST), haproxy, prometheus.
"""

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
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
from loadtest.servers import server, train
from models.config import DEFAULT_DATA_PATH, SEED, TEST_SIZE
from models.data import file_sha256, load_flights
from models.features import Vocabulary
from models.quality import js_distance, min_flights, realized_quality

RESULTS = ALL_RESULTS / "monitoring"
TOKEN = "drill-token-not-a-secret"  # 16 characters at least (serving/settings.py)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PER_REQUEST = 500
MINUTE = "%Y-%m-%d %H:%M"
# The alerts' own conditions (deploy/k8s/alerts/flight-delay.rules.yml), checked on the pod's figures.
NOT_ALERTED_INPUTS = ("hour", "weekday", "day_of_month", "month")
CALIBRATION_BOUND, ESTIMATE_BOUND = 0.05, 0.03
QUALITY = ("delay_rate", "brier", "roc_auc")
DRILLS = {
    "same": "trained on the training days, the held-out days sent",
    "season": "trained on January to June, July to December sent",
    "world": "as `same`, with 25% of the on-time flights made 30 minutes late in the outcomes",
    "cluster": "two replicas behind HAProxy and Prometheus, the held-out days sent through the balancer",
}
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


def held_out_days(flights: pd.DataFrame) -> np.ndarray:
    """Which flights train.py holds out: the same split by calendar day, seed and share."""
    days = flights["Fecha-I"].dt.strftime("%Y-%m-%d").to_numpy()
    split = GroupShuffleSplit(n_splits=1, test_size=TEST_SIZE, random_state=SEED)
    held_out = np.zeros(len(flights), dtype=bool)
    held_out[next(split.split(flights, groups=days))[1]] = True
    return held_out


def drill_flights(drill: str, flights: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame, pd.DataFrame]:
    """A drill's training rows, the flights it predicts and those it reports outcomes of."""
    if drill == "season":
        training = flights["Fecha-I"].dt.month <= 6
        return training, flights[~training], flights[~training]
    held_out = held_out_days(flights)
    outcomes = flights[held_out].copy()
    if drill == "world":
        on_time = np.flatnonzero(outcomes["delayed"].to_numpy() == 0)
        late = np.random.default_rng(SEED).choice(on_time, size=len(on_time) // 4, replace=False)
        column = outcomes.columns.get_loc("Fecha-O")
        outcomes.iloc[late, column] = outcomes["Fecha-I"].iloc[late] + pd.Timedelta(minutes=30)
    return pd.Series(~held_out, index=flights.index), flights[held_out], outcomes


def as_requests(flights: pd.DataFrame, outcomes: bool) -> list[dict[str, Any]]:
    """The flights as request bodies of PER_REQUEST flights, with Fecha-O for outcomes."""
    columns = {"OPERA": flights["OPERA"], "TIPOVUELO": flights["TIPOVUELO"], "MES": flights["Fecha-I"].dt.month,
               "Fecha-I": flights["Fecha-I"].dt.strftime(MINUTE), "SIGLADES": flights["SIGLADES"]}  # fmt: skip
    if outcomes:
        columns["Fecha-O"] = flights["Fecha-O"].dt.strftime(MINUTE)
    body = pd.DataFrame(columns).to_dict("records")
    return [{"flights": body[i : i + PER_REQUEST]} for i in range(0, len(body), PER_REQUEST)]


def send(http: httpx.Client, flights: pd.DataFrame, outcomes: bool, parallel: int = 1) -> None:
    """The flights as predictions or as outcomes, `parallel` requests at a time; each must be answered 200."""
    route = "/v1/outcomes" if outcomes else "/v1/prediction"
    say(f"{len(flights)} flights to {route}")
    with ThreadPoolExecutor(parallel) as pool:
        for answer in pool.map(lambda body: http.post(route, json=body, headers=AUTH), as_requests(flights, outcomes)):
            assert answer.status_code == 200, answer.text


def run_drill(name: str, training: pd.Series, traffic: pd.DataFrame, outcomes: pd.DataFrame) -> dict[str, Any]:
    """Train on `training` rows, send `traffic` as predictions and `outcomes` as outcomes; the pod's figures."""
    with tempfile.TemporaryDirectory() as directory:
        home = Path(directory)
        say(f"{name}: training on {int(training.sum())} flights")
        pd.read_csv(DEFAULT_DATA_PATH, low_memory=False)[training.to_numpy()].to_csv(home / "data.csv", index=False)
        train(home / "data.csv", home)
        env = {"BENTOML_HOME": str(home), "FLIGHT_DELAY_WORKERS": "1", "FLIGHT_DELAY_OUTCOMES_TOKEN": TOKEN}
        with server("service", env=env) as (url, _process), httpx.Client(base_url=url, timeout=60) as http:
            card = http.get("/v1/model").json()
            # The model refuses (400) airlines and cities absent from its training data, as a client
            # sending them would see: they are counted apart, not sent.
            known = Vocabulary.from_metadata(card["vocabularies"])
            unknown = {
                "flights": int((~known.known(traffic)).sum()),
                "airlines": sorted(set(traffic["OPERA"]) - set(known.airlines)),
                "destinations": sorted(set(traffic["SIGLADES"]) - set(known.destinations)),
            }
            send(http, traffic[known.known(traffic)], outcomes=False)
            send(http, outcomes[known.known(outcomes)], outcomes=True)
            time.sleep(1.5)  # each worker exports its counts once a second
            report: dict[str, Any] = http.get("/v1/monitoring").json()
    # train.py holds out a third of the days it is given, so the model is fitted on the rest only
    report["training"] = {"flights": int(training.sum()), "fitted": card["reference"]["flights"]}
    report["unknown_to_the_model"] = unknown
    return report


def verdicts(report: dict[str, Any]) -> dict[str, Any]:
    """What the alerts' conditions say of the pod's figures (not their `for:` durations)."""
    drifted = sorted(name for name, d in report["drift"].items() if d["drifted"])
    outcomes = report["outcomes"]
    # the predictions and the outcomes are the same flights: the expected rate is that of the outcomes'
    gap = abs(report["estimated"]["delay_rate"] - outcomes["delay_rate"]) if outcomes["flights"] else None
    return {
        "inputs_drifted_alerted": [name for name in drifted if name not in NOT_ALERTED_INPUTS],
        "inputs_drifted_all": drifted,
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
        sources = {"expected from probabilities": "estimated", "realized from outcomes": "outcomes",
                   "held-out days at training": "reference"}  # fmt: skip
        for offset, (label, key) in enumerate(sources.items()):
            heights = [report[key][m] or 0 for m in QUALITY]
            right.bar(np.arange(len(QUALITY)) + (offset - 1) * 0.27, heights, width=0.27, label=label)
        right.set_xticks(np.arange(len(QUALITY)), QUALITY)
        right.legend(fontsize=8)
        drawn.suptitle(title)


def markdown(name: str, command: str, when: str, where: str, report: dict[str, Any], verdict: dict[str, Any]) -> str:
    """The drill's report page."""
    drift = "\n".join(
        f"| {input_name} | {d['score'] if d['score'] is not None else 'not judged'} | {d['flights']:,} | "
        f"{d.get('min_flights', '-')} | {'yes' if d['drifted'] else 'no' if d['drifted'] is not None else '-'} |"
        for input_name, d in report["drift"].items()
    )
    quality = "\n".join(f"| {m} | {report['estimated'][m]} | {report['outcomes'][m]} | {report['reference'][m]} |"
                        for m in QUALITY)  # fmt: skip
    unknown, training = report["unknown_to_the_model"], report["training"]
    holds = {True: "holds", False: "does not hold"}
    return f"""# Monitoring drill: {DRILLS[name]}

{when}, {where}; `{command}`. {report["predictions"]["flights"]:,} predictions and
{report["outcomes"]["flights"]:,} outcomes on a model given {training["flights"]:,} flights by train.py, fitted on
the {training["fitted"]:,} of its training days (the rest its own held-out days); the figures are the pod's
`GET /v1/monitoring` ([{name}.json]({name}.json)). Not sent, as the model would refuse them (400):
{unknown["flights"]:,} flights of an airline or city absent from its training data (airlines
{unknown["airlines"] or "none"}, cities {unknown["destinations"] or "none"}).

![drift and quality]({name}.png)

| input | drift score | flights | min flights | drifted |
|---|---:|---:|---:|---|
{drift}

| measure | expected (probabilities) | realized (outcomes) | held-out days at training |
|---|---:|---:|---:|
{quality}

Realized calibration error {report["outcomes"]["calibration_error"]} (alert bound {CALIBRATION_BOUND}); expected and
realized delay rate of the same flights {verdict["expected_vs_realized_delay_rate_on_outcomes"]} apart (alert bound
{ESTIMATE_BOUND}). Alert conditions: inputs drifted {verdict["inputs_drifted_alerted"] or "none"} (with the clock and
calendar inputs: {verdict["inputs_drifted_all"] or "none"}); calibration
{holds[verdict["calibration_alert_condition"]]}; estimate vs realized {holds[verdict["estimate_alert_condition"]]}.
"""


def by_input(samples: Samples, metric: str, model: str) -> dict[str, dict[str, float]]:
    """One model's samples of a metric by input and value, `missing` left out as the rules leave it out."""
    found: dict[str, dict[str, float]] = {}
    for key, value in samples.get(metric, {}).items():
        labels = dict(key)
        if labels.get("model") == model and labels["value"] != "missing":
            found.setdefault(labels["input"], {})[labels["value"]] = value
    return found


def pod_counts(samples: Samples, model: str, bins: int) -> dict[str, Any]:
    """One model's monitoring counts in a pod's samples, values keyed by their label (no vocabulary needed):
    flights by input and value, predictions, outcomes per probability bin and their sum of squared errors."""

    def total(metric: str) -> list[tuple[dict[str, str], float]]:
        return [(dict(key), value) for key, value in samples.get(metric, {}).items() if dict(key).get("model") == model]

    per_bin = {f"outcome_{key}": [0.0] * bins for key in ("flights", "delayed", "probability_sum")}
    for key, counts in per_bin.items():
        for labels, value in total(f"flight_delay_{key}_total"):
            counts[int(labels["bin"])] += value
    return {
        "predictions": sum(value for _, value in total("flight_delay_probability_bin_flights_total")),
        "inputs": by_input(samples, "flight_delay_input_flights_total", model),
        **per_bin,
        "outcome_squared_error": sum(value for _, value in total("flight_delay_outcome_squared_error_total")),
    }


def reference_shares(samples: Samples, model: str) -> dict[str, dict[str, float]]:
    """The model's training share of each value of each input, as a pod exports it (the rules' reference)."""
    return by_input(samples, "flight_delay_reference_share", model)


def combined(*pods: dict[str, Any]) -> dict[str, Any]:
    """Pods' counts added up, as Prometheus's `sum by` adds them (a value one pod lacks counts 0 there)."""
    both: dict[str, Any] = {}
    for key, first in pods[0].items():
        if isinstance(first, dict):
            both[key] = {
                name: {value: sum(pod[key][name].get(value, 0.0) for pod in pods)
                       for value in dict.fromkeys(v for pod in pods for v in pod[key][name])}
                for name in first
            }  # fmt: skip
        elif isinstance(first, list):
            both[key] = [float(sum(column)) for column in zip(*(pod[key] for pod in pods), strict=True)]
        else:
            both[key] = float(sum(pod[key] for pod in pods))
    return both


def figures(counts: dict[str, Any], shares: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """The figures the recording rules record, scored from counts with the service's own functions: each
    input's drift from `shares` (None below the minimum for the reference's values) and the realized ones."""
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
    """Each figure recorded by Prometheus beside the same from the pods' counts combined: do they agree
    within tolerance, or are both absent (an input the rule did not judge)?"""
    rows = []
    for name, want in counted.items():
        got = recorded.get(name)
        difference = None if got is None or want is None else abs(got - want)
        agrees = (got is None and want is None) or (difference is not None and difference <= tolerance)
        rows.append({"figure": name, "recorded": got, "pods_combined": want, "difference": difference,
                     "agrees": agrees})  # fmt: skip
    return rows


def pod_figures(report: dict[str, Any]) -> dict[str, float | None]:
    """The same figures from one pod's GET /v1/monitoring (its own counts only)."""
    return {
        **{f"drift {name}": d["score"] for name, d in report["drift"].items()},
        "realized delay_rate": report["outcomes"]["delay_rate"],
        "expected delay_rate": None,  # /v1/monitoring estimates all predictions, not the outcomes' flights
        "realized calibration_error": report["outcomes"]["calibration_error"],
    }


def first(answer: list[tuple[dict[str, str], float]]) -> float | None:
    """The value of a query's first series; None if it has none."""
    return next((value for _, value in answer), None)


def run_cluster(image: str, traffic: pd.DataFrame, training_flights: int) -> dict[str, Any]:
    """The held-out days through HAProxy to two replicas as predictions and outcomes; Prometheus's
    recorded figures and raw sums, and each pod's counts and /v1/monitoring, read at one moment."""
    with (
        cluster(image, CLUSTER_SLOTS, prometheus=True, env=(f"FLIGHT_DELAY_OUTCOMES_TOKEN={TOKEN}",)) as (
            _replicas, _balancer, prometheus),
        httpx.Client(base_url=LB_URL, timeout=60) as http,
    ):  # fmt: skip
        card = http.get("/v1/model").json()
        if card["training_data"]["sha256"] != file_sha256(DEFAULT_DATA_PATH) or (
            sum(card["reference"]["inputs"]["airline"]) != training_flights
        ):
            sys.exit(f"{image}'s model was not trained by train.py on {DEFAULT_DATA_PATH}: `make train`, then "
                     "`LOCAL_BASE=1 make container`")  # fmt: skip
        # Prometheus applies new targets at most every 5 s, and counts made before its first scrape of a
        # pod are missing from every rate() (the first sample starts a window).
        up = 'up{job="flight-delay"} == 1'
        wait_until(lambda: len(prometheus.query(up, time.time())) == len(CLUSTER_SLOTS), 30, "both pods scraped", 0.2)
        scraping_since = time.time()
        send(http, traffic, outcomes=False, parallel=2)  # two at a time, so both replicas take requests
        send(http, traffic, outcomes=True, parallel=2)
        totals = [
            f'sum(flight_delay_{name}_total{{job="flight-delay"}})'
            for name in ("probability_bin_flights", "outcome_flights")
        ]
        counted = lambda: all(first(prometheus.query(t, time.time())) == len(traffic) for t in totals)  # noqa: E731
        wait_until(counted, 30, "every flight counted in Prometheus", step=0.5)
        # rate()'s extrapolation, per pod, shrinks as the sampled time grows: read a minute and a half
        # after the first scrape, and three rule evaluations after the last flight.
        time.sleep(max(3.0, READ_AFTER_S - (time.time() - scraping_since)))
        at, model = time.time(), card["tag"]
        of_model, query = f'{{model="{model}"}}', partial(prometheus.query, at=at)
        recorded = {f"drift {labels['input']}": value for labels, value in query(RECORDED_DRIFT + of_model)}
        recorded |= {name: first(query(series + of_model)) for name, series in RECORDED_OUTCOMES.items()}
        job = f'job="flight-delay", model="{model}"'
        raw_inputs = query(f'sum by (input, value) (flight_delay_input_flights_total{{{job}, value!="missing"}})')
        raw_outcomes = query(f"sum by (bin) (flight_delay_outcome_flights_total{{{job}}})")
        implied = query(f"model_input:flight_delay_input_flights:rate1h{of_model} * 3600")
        extrapolated_outcomes = first(query(f"model:flight_delay_outcome_flights:rate6h{of_model} * 21600"))
        alerts = query("ALERTS")
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
        "extrapolated_counts": {"inputs": {labels["input"]: value for labels, value in implied},
                                "outcomes": extrapolated_outcomes},
        "alerts": [labels for labels, _ in alerts],
        "recorded": recorded,
    }  # fmt: skip


def cluster_outcome(result: dict[str, Any]) -> dict[str, Any]:
    """The recorded figures against the pods' counts combined, beside each pod's own figures and their
    plain mean (which the rules must not compute)."""
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
    """The cluster drill's report page; docs/monitoring.md explains its figures."""
    pods, counted, sent = list(outcome["per_pod"]), outcome["combined_counts"], result["sent"]["predictions"]

    def line(row: dict[str, Any]) -> str:
        absent = "-" if row["figure"] == "expected delay_rate" else "not judged"  # no pod has it, by design
        cells = [row["recorded"], row["pods_combined"], *(row[f"pod {name}"] for name in pods), row["mean_of_pods"]]
        text = [(absent if i > 1 else "not judged") if v is None else f"{v:.4f}" for i, v in enumerate(cells)]
        text.insert(2, "-" if row["difference"] is None else f"{row['difference']:.1e}")
        return f"| {row['figure']} | " + " | ".join(text) + " |"

    rows = "\n".join(line(row) for row in outcome["rows"])
    split = ", ".join(f"{name} {n['predictions']:,.0f} predictions and {n['outcomes']:,.0f} outcomes"
                      for name, n in outcome["per_pod"].items())  # fmt: skip
    extrapolated = result["extrapolated_counts"]
    implied = ", ".join(f"{value:,}" for value in sorted({round(v) for v in extrapolated["inputs"].values()}))
    airline = next(row for row in outcome["rows"] if row["figure"] == "drift airline")
    yes = {True: "yes", False: "no"}
    # the chance distance of k values at n flights, sqrt((k - 1) / (8 n ln 2)) (docs/monitoring.md)
    fewest = min(n["predictions"] for n in outcome["per_pod"].values())
    noise = np.sqrt((len(result["reference"]["shares"]["airline"]) - 1) / (8 * fewest * np.log(2)))
    alerts = ", ".join(f"{a.get('alertname')} ({a.get('alertstate')})" for a in result["alerts"]) or "none"
    return f"""# Monitoring drill: cluster view

{when}, {where}; `{command}`. Image `{result["image"]}`, model `{result["model"]}`: train.py on the real
dataset (sha256 `{result["training_data"]["sha256"][:12]}...`), trained on the {result["reference"]["flights"]:,}
flights of the training days. Two replicas (1 worker each) behind HAProxy; Prometheus scrapes both and
evaluates deploy/k8s/alerts/flight-delay.rules.yml each second. The held-out days ({sent:,} flights) went
through the balancer as predictions, then as outcomes, {PER_REQUEST} flights a request, two at a time.
Split: {split} ([cluster.json](cluster.json)). Why the figures differ as they do:
[docs/monitoring.md](../../../docs/monitoring.md#cluster-view).

![recorded against the pods' counts](cluster.png)

- Prometheus's raw counters, summed by input and value and by bin, equal the pods' `/metrics` counts:
  {yes[result["raw_counters_in_prometheus_equal_pods_combined"]]}.
- The recorded figures equal those scored from both pods' counts added up (`models.quality`) within
  {outcome["tolerance"]}: {yes[outcome["all_agree"]]}, largest difference {outcome["largest_difference"]:.1e}.
- Each pod's own `GET /v1/monitoring` (3101, 3102) and their mean are not the cluster's: airline drift
  {" and ".join(f"{airline[f'pod {name}']:.3f}" for name in pods)} on the pods, {airline["pods_combined"]:.3f} on the
  cluster (sampling noise about {noise:.3f} for airline at {fewest:,.0f} flights).

| figure | recorded (Prometheus) | pods' counts combined | difference | {" | ".join(pods)} | mean of pods |
|---|---:|---:|---:|{"---:|" * len(pods)}---:|
{rows}

rate()'s extrapolation {result["seconds_since_first_scrape"]:.0f} s after the first scrape: `rate1h * 3600` gives
{implied} flights per input and `rate6h * 21600` {extrapolated["outcomes"]:,.0f} outcomes, for
{counted["predictions"]:,.0f} and {counted["outcomes"]:,.0f} counted. "expected delay_rate" is the mean probability of
the outcomes' flights (a pod estimates over all its predictions: no pod column). Alerts pending or firing at the end:
{alerts} (every monitoring alert has a `for:` of 30 min or more).
"""


def plot_cluster(outcome: dict[str, Any], path: Path) -> None:
    """Each figure as recorded by Prometheus, from the pods' counts combined, and from each pod alone."""
    rows = [row for row in outcome["rows"] if row["recorded"] is not None]
    series = {"recorded by Prometheus": "recorded", "pods' counts combined": "pods_combined",
              **{f"pod {name} alone": f"pod {name}" for name in outcome["per_pod"]}}  # fmt: skip
    with figure(path, size=(11, 4.5)) as (_, axes):
        x, width = np.arange(len(rows)), 0.8 / len(series)
        for offset, (label, key) in enumerate(series.items()):
            axes.bar(x + (offset - (len(series) - 1) / 2) * width, [row[key] or 0 for row in rows], width, label=label)
        axes.axhline(0.1, color="#c44e52", linestyle="--", linewidth=0.8, label="drift threshold 0.1")
        axes.set_xticks(x, [row["figure"].replace(" ", "\n") for row in rows], fontsize=8)
        axes.set_title("Cluster view: recorded cluster-wide figures against the two pods' counts combined")
        axes.legend(fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("drill", choices=DRILLS)
    parser.add_argument("--overwrite", action="store_true", help="replace the drill's results if they exist")
    parser.add_argument("--image", default="flight-delay:latest", help="cluster: the image the replicas run")
    args = parser.parse_args()
    paths = [RESULTS / f"{args.drill}.{suffix}" for suffix in ("json", "md", "png")]
    unused(*paths, overwrite=args.overwrite)
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = f".venv/bin/python -m loadtest.monitoring_drills {args.drill}"
    when, where = time.strftime("%Y-%m-%d %H:%M"), machine()
    head = {"drill": args.drill, "what": DRILLS[args.drill], "date": when, "machine": where, "command": command}
    flights = load_flights(DEFAULT_DATA_PATH)
    if args.drill == "cluster":
        held_out = held_out_days(flights)
        run = {"image": args.image, **run_cluster(args.image, flights[held_out], int((~held_out).sum()))}
        comparison = cluster_outcome(run)
        outcome = {**head, "comparison": comparison, "run": run}
        page = cluster_markdown(command, when, where, run, comparison)
        plot_cluster(comparison, paths[2])
        summary = {key: comparison[key] for key in ("per_pod", "all_agree", "largest_difference")}
    else:
        report = run_drill(args.drill, *drill_flights(args.drill, flights))
        summary = verdicts(report)
        outcome = {**head, "verdict": summary, "monitoring": report}
        page = markdown(args.drill, command, when, where, report, summary)
        plot(report, paths[2], DRILLS[args.drill])
    write_json(paths[0], outcome)
    paths[1].write_text(page)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
