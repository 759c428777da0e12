"""Live counts of what the service predicts, and the pod's drift and expected quality from them.

Each worker counts the flights per value of every monitored input (models.features.MONITORED) and
per probability bin of its model's reference (stored by train.py), with the sums the expected
quality needs. The batch path only hands over its encoded features and probabilities (a list append
under a lock); a thread of the worker counts everything handed over since its last pass, with
whole-array operations over all of it, and adds the counts to Prometheus counters, once a second
(EXPORT_EVERY_S): /metrics and /v1/monitoring lag by at most that. Counted in the batch path, as
first built, it cost 155 us a batch against 284 us for encoding and predicting one flight (timed
while the machine was busy), most of it numpy's fixed cost per call, paid per batch.

Nothing acknowledged is lost: outcomes (answered 200 only once counted) go to the counters in the
request's own thread, not through the export; an export that fails is logged and counted
(`flight_delay_monitoring_export_errors_total`) and the thread goes on; past MAX_PENDING_FLIGHTS
waiting, a batch is dropped and counted (`flight_delay_monitoring_dropped_flights_total`) rather than
held without bound; at shutdown `close()` exports what waits.

Prometheus sums the pods (deploy/k8s/alerts/flight-delay.rules.yml records the cluster's drift);
`pod_report()` sums this pod's workers from the metric files and scores them with models.quality,
the functions train.py used for the reference.

It relies on BentoML's metrics living in prometheus_client's multiprocess files, in the directory
named by PROMETHEUS_MULTIPROC_DIR (BentoML 1.4.40 sets it for every worker; tests/test_monitoring.py
reads /v1/monitoring of a two-worker service).
"""

import logging
import os
import threading
import time
from datetime import UTC, datetime
from functools import cache
from types import SimpleNamespace
from typing import Any

import bentoml
import numpy as np

from models.features import FEATURES, MONITORED, Vocabulary, category_counts
from models.quality import (
    DRIFT_THRESHOLD,
    expected_quality,
    input_drift,
    paired_comparison,
    probability_bins,
    realized_quality,
)

logger = logging.getLogger("bentoml.flight_delay")
EXPORT_EVERY_S = 1.0
# Flights handed over and not yet counted, past which a batch is dropped (and counted as dropped):
# about 6 MB of features and probabilities, 50 s of the reference load's 4,000 flights a second.
MAX_PENDING_FLIGHTS = 200_000
# Flights copied into a buffer reused from export to export, rather than kept as their own arrays
# (0.6 MB a worker). A second's thousands of small batches, kept until the export, spread each
# request's memory over more of the cache: a worker kept none at 1.03x with a new connection per
# request (docs/performance.md). Batches past it in an export's interval are kept as before.
BUFFER_FLIGHTS = 8_192
NOT_MONITORED = ("minute_of_day", "day_of_year")  # finer copies of hour, month and day: not judged


def slot_names(vocabulary: Vocabulary) -> dict[str, list[str]]:
    """The label of each slot of each monitored input: its value as a client sends it, "missing" for the last."""
    values = {
        "airline": list(vocabulary.airlines),
        "international": ["N", "I"],
        "month": [str(month) for month in range(13)],
        "hour": [str(hour) for hour in range(24)],
        "weekday": [str(day) for day in range(7)],
        "day_of_month": [str(day) for day in range(32)],
        "destination": list(vocabulary.destinations),
    }
    return {name: [*values[name], "missing"] for name in MONITORED}


STARTED_NAME = "flight_delay_monitoring_started_timestamp_seconds"


# The monitoring counters: attribute, metric name, labels and documentation. Every label value comes
# from the model (its tag, vocabulary and bins), never from a client.
COUNTERS: dict[str, tuple[str, list[str], str]] = {
    "input_flights": (
        "flight_delay_input_flights",
        ["model", "input", "value"],
        "Predicted flights by model, monitored input and its value (missing: not given)",
    ),
    "bin_flights": (
        "flight_delay_probability_bin_flights",
        ["model", "bin"],
        "Predicted flights by model and probability bin (the model's equal-count training bins)",
    ),
    "bin_probability": (
        "flight_delay_probability_bin_sum",
        ["model", "bin"],
        "Sum of the predicted probabilities by model and probability bin",
    ),
    "squares": (
        "flight_delay_probability_squares",
        ["model"],
        "Sum of the squared predicted probabilities, by model (for the expected Brier score)",
    ),
    "flagged": (
        "flight_delay_flagged_flights",
        ["model"],
        "Flights predicted delayed (probability at or above the threshold), by model",
    ),
    "flagged_probability": (
        "flight_delay_flagged_probability_sum",
        ["model"],
        "Sum of the probabilities of the flights predicted delayed, by model",
    ),
    "outcome_flights": (
        "flight_delay_outcome_flights",
        ["model", "bin"],
        "Flights whose outcome was received, by model and probability bin",
    ),
    "outcome_delayed": (
        "flight_delay_outcome_delayed",
        ["model", "bin"],
        "Of them, the flights that left over 15 minutes late, by model and probability bin",
    ),
    "outcome_probability": (
        "flight_delay_outcome_probability_sum",
        ["model", "bin"],
        "Sum of their probabilities (the running model's), by model and probability bin",
    ),
    "outcome_squared_error": (
        "flight_delay_outcome_squared_error",
        ["model"],
        "Sum of (delayed - probability) squared over the outcomes, by model (for the Brier score)",
    ),
}


# The challenger's counters (serving/challenger.py), by champion and challenger tag; the comparison's
# per-bin ones also by role (champion or challenger) and that model's own probability bin.
PAIR = ["champion", "challenger"]
CHALLENGER_COUNTERS: dict[str, tuple[str, list[str], str]] = {
    "challenger_flights": (
        "flight_delay_challenger_flights",
        PAIR,
        "Flights the champion answered that the challenger scored",
    ),
    "challenger_agreed": (
        "flight_delay_challenger_agreed_flights",
        PAIR,
        "Of them, flights both models gave the same label",
    ),
    "challenger_gap": (
        "flight_delay_challenger_probability_gap_sum",
        PAIR,
        "Sum over them of the absolute difference of the two models' probabilities",
    ),
    "challenger_dropped": (
        "flight_delay_challenger_dropped_flights",
        PAIR,
        "Flights the champion answered that the challenger did not score: it fell behind",
    ),
    "challenger_unknown": (
        "flight_delay_challenger_unknown_flights",
        PAIR,
        "Flights the champion answered that the challenger cannot score: an airline or city it does not know",
    ),
    "comparison_outcomes": (
        "flight_delay_comparison_outcomes",
        PAIR,
        "Flights whose outcome was received, scored by both models",
    ),
    "comparison_squared_error": (
        "flight_delay_comparison_squared_error",
        [*PAIR, "role"],
        "Sum over them of (delayed - probability) squared, by the model's role",
    ),
    "comparison_difference_squares": (
        "flight_delay_comparison_brier_difference_squares",
        PAIR,
        "Sum over them of the squared difference of the two models' squared errors",
    ),
    "comparison_bin_flights": (
        "flight_delay_comparison_bin_flights",
        [*PAIR, "role", "bin"],
        "Of them, flights by the model's role and its own probability bin",
    ),
    "comparison_bin_delayed": (
        "flight_delay_comparison_bin_delayed",
        [*PAIR, "role", "bin"],
        "Of them, flights that left over 15 minutes late, by the model's role and probability bin",
    ),
    "comparison_bin_probability": (
        "flight_delay_comparison_bin_probability_sum",
        [*PAIR, "role", "bin"],
        "Sum of their probabilities, by the model's role and its own probability bin",
    ),
}


@cache
def series() -> SimpleNamespace:
    """The monitoring metrics, made once per process when a worker builds its Monitor (importing this
    module makes none, so tools and tests can read its constants)."""
    counters = {
        attribute: bentoml.metrics.Counter(name=name, documentation=documentation, labelnames=labels)
        for attribute, (name, labels, documentation) in {**COUNTERS, **CHALLENGER_COUNTERS}.items()
    }
    return SimpleNamespace(
        **counters,
        reference_share=bentoml.metrics.Gauge(
            name="flight_delay_reference_share",
            documentation="Share of the model's training flights with each value of each input (missing excluded)",
            labelnames=["model", "input", "value"],
            multiprocess_mode="max",
        ),
        export_errors=bentoml.metrics.Counter(
            name="flight_delay_monitoring_export_errors",
            documentation="Exports of the monitoring counts that failed (logged); the counts of that pass are lost",
        ),
        dropped=bentoml.metrics.Counter(
            name="flight_delay_monitoring_dropped_flights",
            documentation="Predicted flights not counted by monitoring: the export fell behind by MAX_PENDING_FLIGHTS",
        ),
        model_role=bentoml.metrics.Gauge(
            name="flight_delay_model_role",
            documentation="1 for each model the pod runs, by its role: champion (answers) or challenger (scored only)",
            labelnames=["model", "role"],
            multiprocess_mode="max",
        ),
        started=bentoml.metrics.Gauge(
            name=STARTED_NAME,
            documentation="When the workers of the pod started counting, by model",
            labelnames=["model"],
            multiprocess_mode="min",
        ),
    )


class Monitor:
    """One worker's counts of its predictions, exported to Prometheus by a thread of its own."""

    def __init__(self, reference: dict[str, Any], threshold: float, model: str, vocabulary: Vocabulary) -> None:
        self.model = model
        self.edges = np.array(reference["probability_edges"])
        self.threshold = threshold
        self.sizes = vocabulary.monitored()
        names = slot_names(vocabulary)
        bins = len(self.edges) + 1
        self.lock = threading.Lock()
        self.batches: list[tuple[np.ndarray, np.ndarray]] = []  # handed over since the last export, past the buffer
        self.buffered_features = np.empty((BUFFER_FLIGHTS, len(FEATURES)))
        self.buffered_probabilities = np.empty(BUFFER_FLIGHTS)
        self.buffered = 0  # flights in the buffer
        self.pending = 0  # flights in the buffer and `batches`
        self.closed = threading.Event()
        metrics = series()
        self.export_errors, self.dropped = metrics.export_errors, metrics.dropped
        self.input_children = [
            [metrics.input_flights.labels(model=model, input=name, value=value) for value in names[name]]
            for name in MONITORED
        ]
        self.bin_children = [
            (
                metrics.bin_flights.labels(model=model, bin=str(b)),
                metrics.bin_probability.labels(model=model, bin=str(b)),
            )
            for b in range(bins)
        ]
        self.outcome_children = [
            [child.labels(model=model, bin=str(b)) for b in range(bins)]
            for child in (metrics.outcome_flights, metrics.outcome_delayed, metrics.outcome_probability)
        ]
        self.squared_error_child = metrics.outcome_squared_error.labels(model=model)
        self.sum_children = [
            child.labels(model=model) for child in (metrics.squares, metrics.flagged, metrics.flagged_probability)
        ]
        for name, counts in reference["inputs"].items():
            seen = np.array(counts[:-1], dtype=np.float64)
            for value, share in zip(names[name], seen / seen.sum(), strict=False):
                metrics.reference_share.labels(model=model, input=name, value=value).set(share)
        metrics.started.labels(model=model).set(time.time())
        self.exporter = threading.Thread(target=self.export_forever, name="monitoring-export", daemon=True)
        self.exporter.start()

    def count(self, features: np.ndarray, probabilities: np.ndarray) -> None:
        """Hand over one batch, its encoded features and the probabilities the model gave them, to be
        counted by the next export; dropped and counted as dropped when too many already wait."""
        flights = len(probabilities)
        with self.lock:
            if self.pending + flights <= MAX_PENDING_FLIGHTS:
                end = self.buffered + flights
                if end <= BUFFER_FLIGHTS:
                    self.buffered_features[self.buffered : end] = features
                    self.buffered_probabilities[self.buffered : end] = probabilities
                    self.buffered = end
                else:
                    self.batches.append((features, probabilities))
                self.pending += flights
                return
        self.dropped.inc(flights)

    def count_outcomes(self, features: np.ndarray, probabilities: np.ndarray, delayed: np.ndarray) -> None:
        """Count flights whose outcome is known: their features, this model's probabilities, and whether
        each left more than 15 minutes late."""
        bins = probability_bins(self.edges, probabilities)
        size = len(self.bin_children)
        counts = np.stack(
            [
                np.bincount(bins, minlength=size),
                np.bincount(bins, weights=delayed, minlength=size),
                np.bincount(bins, weights=probabilities, minlength=size),
            ]
        )
        squared_error = float(np.sum((delayed - probabilities) ** 2))
        for children, outcome_counts in zip(self.outcome_children, counts, strict=True):
            for b in np.flatnonzero(outcome_counts):
                children[b].inc(float(outcome_counts[b]))
        if squared_error:
            self.squared_error_child.inc(squared_error)

    def export(self) -> None:
        """Count the batches handed over since the last export and add them to the Prometheus counters."""
        with self.lock:
            batches, self.batches = self.batches, []
            if self.buffered:
                buffered = slice(0, self.buffered)
                batches.append((self.buffered_features[buffered].copy(), self.buffered_probabilities[buffered].copy()))
                self.buffered = 0
            self.pending = 0
        if batches:
            features = np.concatenate([batch[0] for batch in batches])
            probabilities = np.concatenate([batch[1] for batch in batches])
            for children, counts in zip(self.input_children, category_counts(features, self.sizes), strict=True):
                for slot in np.flatnonzero(counts):
                    children[slot].inc(int(counts[slot]))
            bins = probability_bins(self.edges, probabilities)
            flights = np.bincount(bins, minlength=len(self.bin_children))
            sums = np.bincount(bins, weights=probabilities, minlength=len(self.bin_children))
            for b in np.flatnonzero(flights):
                self.bin_children[b][0].inc(int(flights[b]))
                self.bin_children[b][1].inc(float(sums[b]))
            flagged = probabilities >= self.threshold
            totals = (float(probabilities @ probabilities), float(flagged.sum()), float(probabilities[flagged].sum()))
            for child, total in zip(self.sum_children, totals, strict=True):
                if total:
                    child.inc(total)

    def export_forever(self) -> None:
        """Export every EXPORT_EVERY_S until closed; a failed export is logged and counted, and the
        next one goes on."""
        while not self.closed.wait(EXPORT_EVERY_S):
            self.export_safely()

    def export_safely(self) -> None:
        try:
            self.export()
        except Exception:
            logger.exception("monitoring: an export failed; its counts are lost")
            self.export_errors.inc()

    def close(self) -> None:
        """Stop the export thread and export what waits (at the worker's shutdown)."""
        self.closed.set()
        self.exporter.join(5)
        self.export_safely()


def pod_samples() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """This pod's samples of every metric, summed over its workers, by name and labels."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in registry.collect():
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def pod_report(card: dict[str, Any], challenger: dict[str, Any] | None = None) -> dict[str, Any]:
    """GET /v1/monitoring: the pod's predictions since its workers started, each input's drift from
    the reference and the quality expected from the probabilities. `card`: the model card; with the
    challenger's card, its own figures, its agreement with the champion, and the paired comparison on
    the outcomes both scored."""
    samples = pod_samples()
    report = model_report(samples, card)
    if challenger is None:
        return report
    own = model_report(samples, challenger)
    pair = {("champion", card["tag"]), ("challenger", challenger["tag"])}

    def total(name: str, **labels: str) -> float:
        wanted = pair | set(labels.items())
        return sum(value for key, value in samples.get(name, {}).items() if wanted <= set(key))

    scored = total("flight_delay_challenger_flights_total")
    report["challenger"] = {
        **{key: own[key] for key in ("model", "predictions", "estimated", "outcomes")},
        "agreement": {
            "flights": int(scored),
            "same_label": round(total("flight_delay_challenger_agreed_flights_total") / scored, 4) if scored else None,
            "mean_probability_gap": (
                round(total("flight_delay_challenger_probability_gap_sum_total") / scored, 4) if scored else None
            ),
        },
        "dropped": int(total("flight_delay_challenger_dropped_flights_total")),
        "unknown": int(total("flight_delay_challenger_unknown_flights_total")),
    }

    def per_bin(role: str, name: str) -> np.ndarray:
        size = len((card if role == "champion" else challenger)["reference"]["probability_edges"]) + 1
        counts = np.zeros(size)
        for key, value in samples.get(f"flight_delay_comparison_bin_{name}_total", {}).items():
            labels = dict(key)
            if pair <= set(key) and labels["role"] == role:
                counts[int(labels["bin"])] += value
        return counts

    errors = {
        role: total("flight_delay_comparison_squared_error_total", role=role) for role in ("champion", "challenger")
    }
    comparison = paired_comparison(
        int(total("flight_delay_comparison_outcomes_total")),
        (errors["champion"], errors["challenger"]),
        total("flight_delay_comparison_brier_difference_squares_total"),
        *(
            [per_bin(role, name) for name in ("flights", "delayed", "probability_sum")]
            for role in ("champion", "challenger")
        ),
    )
    report["comparison"] = {
        key: {k: v if k == "margin" or v is None else round(v, 5) for k, v in value.items()}
        if isinstance(value, dict)
        else value
        for key, value in comparison.items()
    }
    return report


def model_report(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], card: dict[str, Any]) -> dict[str, Any]:
    """One model's part of GET /v1/monitoring, from the pod's samples and its card."""
    model, reference = card["tag"], card["reference"]
    names = slot_names(Vocabulary.from_metadata(card["vocabularies"]))

    def values(name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        wanted = {("model", model), *labels.items()}
        return [(dict(key), value) for key, value in samples.get(name, {}).items() if wanted <= set(key)]

    def total(name: str, **labels: str) -> float:
        return sum(value for _labels, value in values(name, **labels))

    bins = len(reference["probability_edges"]) + 1

    def per_bin(name: str) -> np.ndarray:
        counts = np.zeros(bins)
        for labels, value in values(name):
            counts[int(labels["bin"])] += value
        return counts

    flights, sums = (
        per_bin("flight_delay_probability_bin_flights_total"),
        per_bin("flight_delay_probability_bin_sum_total"),
    )
    totals = [
        total(f"flight_delay_{name}_total")
        for name in ("probability_squares", "flagged_flights", "flagged_probability_sum")
    ]
    started = min((value for _labels, value in values(STARTED_NAME)), default=time.time())
    drift: dict[str, Any] = {}
    for name in MONITORED:
        live = np.zeros(len(names[name]))
        slots = {value: slot for slot, value in enumerate(names[name])}
        for labels, value in values("flight_delay_input_flights_total", input=name):
            live[slots[labels["value"]]] += value
        drift[name] = input_drift(live, np.array(reference["inputs"][name], dtype=np.float64))
    for name in NOT_MONITORED:  # not counted, by design: 0 flights would read as no traffic
        drift[name] = {"score": None, "threshold": DRIFT_THRESHOLD, "drifted": None, "flights": None, "missing": None}
    expected = expected_quality(flights, sums, *totals)
    outcomes = realized_quality(
        per_bin("flight_delay_outcome_flights_total"),
        per_bin("flight_delay_outcome_delayed_total"),
        per_bin("flight_delay_outcome_probability_sum_total"),
        total("flight_delay_outcome_squared_error_total"),
    )
    return {
        "model": model,
        "predictions": {"flights": int(flights.sum()), "since": datetime.fromtimestamp(started, UTC).isoformat()},
        "drift": drift,
        "estimated": {key: None if value is None else round(value, 4) for key, value in expected.items()},
        "outcomes": {
            key: value if value is None or key == "flights" else round(value, 4) for key, value in outcomes.items()
        },
        "reference": reference["held_out"],
        "refused": {  # values the model did not learn, refused with 400: flights drift never sees
            name: int(total("flight_delay_unknown_values_total", input=name)) for name in ("airline", "destination")
        },
    }
