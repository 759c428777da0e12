"""The monitoring report: the prediction log (and optionally an outcomes file) as Markdown with PNG plots.

    python tools/monitoring_report.py --log LOG_DIR [--outcomes CSV] [--out DIR] [--model TAG]

GET /v1/monitoring answers for one pod since it started; this reads what the pods logged over any
period (serving/prediction_log.py, BentoML's `bentoml.monitor` format, in FLIGHT_DELAY_LOG_DIR:
monitoring/ by default) and scores it with the same functions and minimum counts (models.quality),
so both agree on the same flights. It shows each monitored input live against the training reference
with its drift, a reliability diagram of the outcome flights against the held-out one stored with the
model, and the delay rate estimated from the probabilities against the realized one, per day
(docs/monitoring.md).
"""

import argparse
import json
import re
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))  # run as a script from anywhere, like train.py's imports

from models.config import MODEL_NAME  # noqa: E402
from models.data import DataError, load_flights  # noqa: E402
from models.features import MONITORED, FlightColumns, Vocabulary, category_counts, encode  # noqa: E402
from models.predictor import DelayPredictor, ModelError  # noqa: E402
from models.quality import (  # noqa: E402
    DRIFT_THRESHOLD,
    calibration_groups,
    expected_quality,
    input_drift,
    probability_bins,
    realized_quality,
    reliability,
)
from models.schema import Flight  # noqa: E402
from serving.monitoring import slot_names  # noqa: E402
from serving.settings import OUTCOMES_ROUTE  # noqa: E402

LOG_FILE = re.compile(r"data\.[^.]+\.log(\.[0-9]+)?")  # data.<worker>.log and its rotated copies .1, .2, ...
FIELDS = ("OPERA", "TIPOVUELO", "MES", "Fecha-I", "SIGLADES")  # the flight as the client sent it
CHUNK = 50_000  # records validated before they are encoded together, as the service encodes a batch
PROGRESS_EVERY = 100_000  # lines: about every 5 s
TRAINING_VIEW = "all_fields"  # outcome flights have every field, as train.py's held-out view of that name
QUALITY = ("delay_rate", "brier", "roc_auc", "calibration_error")


class ReportError(Exception):
    """The report cannot be made; the message says why in one line."""


def progress(message: str) -> None:
    """One timestamped line on stderr: reading millions of lines takes a while."""
    print(f"[report {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class ModelRecords:
    """The logged flights of one model, encoded chunk by chunk (numpy arrays, not per-record objects)."""

    features: list[np.ndarray] = field(default_factory=list)  # models.features.encode rows
    scheduled: list[np.ndarray] = field(default_factory=list)  # Fecha-I, datetime64[m], NaT if not given
    probabilities: list[np.ndarray] = field(default_factory=list)  # as logged; NaN on /predict records
    answered: list[np.ndarray] = field(default_factory=list)  # UTC epoch seconds
    routes: Counter[str] = field(default_factory=Counter)

    def add(
        self, flights: list[Flight], probabilities: list[float], answered: list[float], vocabulary: Vocabulary
    ) -> None:
        """Encode one chunk of validated flights as the service encodes a batch, with its model's vocabulary
        (a log the model wrote holds no other value)."""
        columns = FlightColumns.from_flights(flights, vocabulary)
        self.features.append(encode(columns))
        self.scheduled.append(columns.scheduled)
        self.probabilities.append(np.array(probabilities, dtype=np.float64))
        self.answered.append(np.array(answered, dtype=np.float64))


@dataclass
class Log:
    """What the prediction log holds: records by model, and the lines that were not records."""

    folder: Path
    files: list[Path]
    lines: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # by reason
    first_skipped: str | None = None  # file and line of the first, to look at
    models: dict[str, ModelRecords] = field(default_factory=dict)

    def counts(self) -> Counter[str]:
        """Records per model tag."""
        return Counter({tag: sum(records.routes.values()) for tag, records in self.models.items()})


def log_files(log: Path) -> tuple[Path, list[Path]]:
    """The folder holding the log's data files and those files: the log dir itself, its data/ or
    flight_delay/data/ (serving/prediction_log.py writes under <log dir>/MODEL_NAME/data/)."""
    if not log.is_dir():
        raise ReportError(f"no log directory at {log}")
    for folder in (log, log / "data", log / MODEL_NAME / "data"):
        files = sorted(path for path in folder.glob("data.*") if LOG_FILE.fullmatch(path.name))
        if files:
            return folder, files
    raise ReportError(f"no prediction log files (data.<worker>.log) in {log}, {log}/data or {log}/{MODEL_NAME}/data")


def parse_record(record: Any) -> tuple[str, Flight, float, float, str] | None:
    """Model tag, flight, logged probability (NaN when none), answered time and route of one logged
    record; None when it is not a prediction record."""
    if not isinstance(record, dict):
        return None
    tag, stamp, probability = record.get("model"), record.get("timestamp"), record.get("probability")
    if not isinstance(tag, str) or not isinstance(stamp, str):
        return None
    if probability is not None and (not isinstance(probability, int | float) or not 0 <= probability <= 1):
        return None
    try:
        flight = Flight.model_validate({name: record[name] for name in FIELDS if record.get(name) is not None})
        answered = datetime.fromisoformat(stamp)
    except (ValidationError, ValueError):
        return None
    seconds = (answered if answered.tzinfo else answered.replace(tzinfo=UTC)).timestamp()
    return tag, flight, np.nan if probability is None else float(probability), seconds, str(record.get("route"))


def read_log(log: Path, vocabulary_of: Callable[[str], Vocabulary | None]) -> Log:
    """Every record of every data file, encoded by model with that model's vocabulary (`vocabulary_of`
    its tag; None: a model not in the store, whose records are only counted). A line that is not a
    record is counted, not fatal (the last line of a worker that was killed is cut)."""
    folder, files = log_files(log)
    result = Log(folder, files)
    pending: dict[str, tuple[list[Flight], list[float], list[float], list[str]]] = {}

    def flush() -> None:
        for tag, (flights, probabilities, answered, routes) in pending.items():
            vocabulary = vocabulary_of(tag)
            records = result.models.setdefault(tag, ModelRecords())
            known = [i for i, flight in enumerate(flights) if vocabulary is None or vocabulary.knows(flight)]
            if len(known) < len(flights):  # records its model would have refused: written by hand, or edited
                result.skipped["a value its model does not know"] += len(flights) - len(known)
            records.routes.update(routes[i] for i in known)
            if vocabulary is not None and known:
                records.add(
                    [flights[i] for i in known], [probabilities[i] for i in known], [answered[i] for i in known],
                    vocabulary,
                )  # fmt: skip
        pending.clear()

    waiting = 0
    for path in files:
        progress(f"reading {path}")
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                result.lines += 1
                if result.lines % PROGRESS_EVERY == 0:
                    progress(f"{result.lines:,} lines read")
                reason: str | None = None
                try:
                    record = json.loads(line)
                    if isinstance(record, dict) and record.get("route") == OUTCOMES_ROUTE:
                        parsed, reason = None, "an outcome record"  # realized quality comes from --outcomes
                    else:
                        parsed = parse_record(record)
                        reason = "not a prediction record" if parsed is None else None
                except json.JSONDecodeError:
                    parsed, reason = None, "not JSON (a cut line)"
                if parsed is None:
                    result.skipped[str(reason)] += 1
                    result.first_skipped = result.first_skipped or f"{path.name} line {number}"
                    continue
                tag, flight, probability, answered, route = parsed
                flights, probabilities, times, routes = pending.setdefault(tag, ([], [], [], []))
                flights.append(flight)
                probabilities.append(probability)
                times.append(answered)
                routes.append(route)
                waiting += 1
                if waiting >= CHUNK:
                    flush()
                    waiting = 0
    flush()
    result.models = {tag: records for tag, records in result.models.items() if records.routes}
    if not result.models:
        raise ReportError(
            f"no prediction records in {len(files)} log file(s) under {folder} ({result.lines} lines, none a record)"
        )
    return result


def choose_model(log: Log, tag: str | None) -> str:
    """The tag asked for, or the one most records carry."""
    counts = log.counts()
    if tag is None:
        return max(counts, key=lambda name: (counts[name], name))
    if tag not in counts:
        held = ", ".join(f"{name} ({count})" for name, count in counts.most_common())
        raise ReportError(f"no records of model {tag} in the log; it holds {held}")
    return tag


def load_model(tag: str) -> tuple[DelayPredictor, dict[str, Any], str]:
    """The served predictor of a stored model, its metadata and its creation time."""
    import bentoml

    try:
        model = bentoml.models.get(tag)
        created = f"{model.info.creation_time:%Y-%m-%d %H:%M} UTC"
        return DelayPredictor.load(model.path, model.info.metadata), model.info.metadata, created
    except bentoml.exceptions.NotFound:
        raise ReportError(f"model {tag} is not in the BentoML store (BENTOML_HOME); train or import it first") from None
    except (ValueError, ModelError) as exc:
        raise ReportError(f"model {tag} cannot be used: {exc}") from None


@dataclass
class Live:
    """The chosen model's logged flights as whole arrays."""

    features: np.ndarray
    scheduled: np.ndarray
    logged: np.ndarray  # the logged probability, NaN on /predict records
    scores: np.ndarray  # the model's own probability of every record
    answered: np.ndarray

    @classmethod
    def of(cls, records: ModelRecords, predictor: DelayPredictor) -> "Live":
        """The records joined up and scored with the model."""
        features = np.vstack(records.features)
        return cls(
            features,
            np.concatenate(records.scheduled),
            np.concatenate(records.probabilities),
            predictor.scores(features),
            np.concatenate(records.answered),
        )

    @property
    def probabilities(self) -> np.ndarray:
        """The logged probabilities; on /predict records, logged without one, the model's own: the one
        the service computed and counted for them (the same model on the same encoded flights)."""
        return np.where(np.isnan(self.logged), self.scores, self.logged)

    def gap(self) -> float | None:
        """The largest difference between a logged probability and the model's: near 0 unless the
        records were not made by this model (or the log rounds them)."""
        logged = ~np.isnan(self.logged)
        return float(np.abs(self.logged[logged] - self.scores[logged]).max()) if logged.any() else None


@dataclass
class Outcomes:
    """Flights that have left: their encoded features, the model's probabilities and whether each was delayed."""

    source: Path
    scheduled: np.ndarray  # datetime64[m]
    probabilities: np.ndarray
    delayed: np.ndarray
    unknown: int  # flights of an airline or city the model does not know: left out, as the service refuses them

    @classmethod
    def read(cls, path: Path, predictor: DelayPredictor) -> "Outcomes":
        """Rows of a dataset-format CSV (models.data.load_flights: delayed when Fecha-O - Fecha-I is over
        15 minutes), scored with the model as POST /v1/outcomes scores them."""
        try:
            frame = load_flights(path)
        except DataError as exc:
            raise ReportError(f"outcomes: {exc}") from None
        known = predictor.vocabulary.known(frame)
        if not known.any():
            raise ReportError(
                f"outcomes: none of the {len(frame):,} flights in {path} is of an airline and city the model knows"
            )
        frame = frame.loc[known]
        columns = FlightColumns.from_frame(frame, predictor.vocabulary)
        scores = predictor.scores(encode(columns))
        return cls(path, columns.scheduled, scores, frame["delayed"].to_numpy(np.float64), int((~known).sum()))


def drift(features: np.ndarray, reference: dict[str, Any], vocabulary: Vocabulary) -> dict[str, dict[str, Any]]:
    """Each monitored input's live and reference counts with its drift as GET /v1/monitoring reports it
    (serving.monitoring.pod_report): the same distance, threshold and minimum count, missing left out."""
    result = {}
    for name, live in zip(MONITORED, category_counts(features, vocabulary.monitored()), strict=True):
        expected = np.array(reference["inputs"][name], dtype=np.float64)
        result[name] = {**input_drift(live, expected), "live": live[:-1].astype(np.float64), "reference": expected[:-1]}
    return result


def binned(edges: np.ndarray, probabilities: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Flights (or the sum of weights) in each of the reference's probability bins."""
    return np.bincount(probability_bins(edges, probabilities), weights=weights, minlength=len(edges) + 1)


def estimated(probabilities: np.ndarray, edges: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Quality expected from the probabilities alone (models.quality.expected_quality, as the service)."""
    p, flagged = probabilities, probabilities >= threshold
    sums = (float(p @ p), float(flagged.sum()), float(p[flagged].sum()))
    return expected_quality(binned(edges, p), binned(edges, p, p), *sums)


def realized(outcomes: Outcomes, edges: np.ndarray) -> dict[str, Any]:
    """Quality of the outcome flights (models.quality.realized_quality, as the service's `outcomes`)."""
    p, delayed = outcomes.probabilities, outcomes.delayed
    return realized_quality(
        binned(edges, p), binned(edges, p, delayed), binned(edges, p, p), float(np.sum((delayed - p) ** 2))
    )


def live_reliability(outcomes: Outcomes, edges: np.ndarray) -> list[dict[str, float]]:
    """Mean probability and delay rate of the outcome flights in the reference's bins taken ten by ten
    (models.quality.calibration_groups): the bins of the service's calibration error."""
    p = outcomes.probabilities
    return reliability(*calibration_groups(*(binned(edges, p, weights) for weights in (None, p, outcomes.delayed))))


def by_day(scheduled: np.ndarray, values: np.ndarray) -> dict[np.datetime64, tuple[int, float]]:
    """Flights and mean value per day of Fecha-I, flights without one left out."""
    days = scheduled.astype("datetime64[D]")
    known = ~np.isnat(days)
    unique, index = np.unique(days[known], return_inverse=True)
    counts = np.bincount(index, minlength=len(unique))
    sums = np.bincount(index, weights=values[known], minlength=len(unique))
    return {day: (int(n), float(s / n)) for day, n, s in zip(unique, counts, sums, strict=True)}


def fmt(value: float | None) -> str:
    """A figure for the tables, to 4 places as GET /v1/monitoring; an em dash where there is none."""
    return "—" if value is None else f"{value:.4f}"


def plot_input(name: str, entry: dict[str, Any], values: list[str], path: Path) -> None:
    """Live against reference share of each value of one input (values seen on neither side left out)."""
    from matplotlib import pyplot as plt

    shown = np.flatnonzero((entry["live"] > 0) | (entry["reference"] > 0))
    labels = [values[slot] for slot in shown]
    live = entry["live"] / max(entry["live"].sum(), 1)
    reference = entry["reference"] / entry["reference"].sum()
    figure, axes = plt.subplots(figsize=(max(5.0, 0.22 * len(shown) + 2), 4))
    x = np.arange(len(shown))
    axes.bar(x - 0.2, reference[shown], 0.4, label="reference (training)", color="tab:grey")
    axes.bar(x + 0.2, live[shown], 0.4, label="live (log)", color="tab:blue")
    axes.set_xticks(x, labels, rotation=90 if len(shown) > 12 else 0, fontsize="small")
    verdict = "not judged" if entry["score"] is None else ("drifted" if entry["drifted"] else "no drift")
    axes.set(
        ylabel="share of flights",
        title=f"{name}: drift {fmt(entry['score'])} ({verdict}), {entry['flights']:,} flights",
    )
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_reliability(training: list[dict[str, float]], live: list[dict[str, float]], path: Path) -> None:
    """The reliability diagram: outcome flights against the held-out flights of training."""
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 5))
    top = max(max(b["predicted"], b["observed"]) for b in training + live)
    axes.plot([0, top], [0, top], color="grey", linestyle=":", label="perfect calibration")
    axes.plot(
        [b["predicted"] for b in training],
        [b["observed"] for b in training],
        marker="s",
        label="training (held-out days)",
    )
    if live:
        axes.plot(
            [b["predicted"] for b in live], [b["observed"] for b in live], marker="o", label="live (outcome flights)"
        )
    axes.set(xlabel="mean predicted probability of delay (bin)", ylabel="observed share of delayed flights (bin)")
    axes.legend(loc="upper left", fontsize="small")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_days(days: list[dict[str, Any]], path: Path) -> None:
    """Estimated and realized delay rate per day of Fecha-I, with the flights behind each."""
    from matplotlib import pyplot as plt

    figure, (rates, counts) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[2, 1])
    x = [day["day"].astype(datetime) for day in days]
    for key, label, style in (
        ("estimated", "estimated (mean logged probability)", "-o"),
        ("expected", "expected on the outcome flights (model)", ":"),
        ("realized", "realized (outcomes)", "-s"),
    ):
        rates.plot(x, [np.nan if day[key] is None else day[key] for day in days], style, markersize=3, label=label)
    rates.set(ylabel="delay rate")
    rates.legend(fontsize="small")
    rates.grid(alpha=0.3)
    counts.bar(x, [day["logged"] for day in days], width=0.4, align="edge", label="logged flights")
    counts.bar(x, [day["outcomes"] for day in days], width=-0.4, align="edge", label="outcome flights")
    counts.set(ylabel="flights", xlabel="day of Fecha-I (scheduled departure)")
    counts.legend(fontsize="small")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def daily(live: Live, outcomes: Outcomes | None) -> list[dict[str, Any]]:
    """One row per day of Fecha-I seen in the log or the outcomes."""
    logged = by_day(live.scheduled, live.probabilities)
    expected = by_day(outcomes.scheduled, outcomes.probabilities) if outcomes else {}
    realized_days = by_day(outcomes.scheduled, outcomes.delayed) if outcomes else {}
    return [
        {
            "day": day,
            "logged": logged.get(day, (0, 0.0))[0],
            "estimated": logged[day][1] if day in logged else None,
            "outcomes": realized_days.get(day, (0, 0.0))[0],
            "expected": expected[day][1] if day in expected else None,
            "realized": realized_days[day][1] if day in realized_days else None,
        }
        for day in sorted(set(logged) | set(realized_days))
    ]


def span(seconds: np.ndarray) -> str:
    """First and last answer, in UTC."""
    first, last = (
        datetime.fromtimestamp(float(s), UTC).strftime("%Y-%m-%d %H:%M:%S") for s in (seconds.min(), seconds.max())
    )
    return f"{first} to {last} UTC"


@dataclass
class Report:
    """Every figure of one report, gathered before anything is written."""

    log: Log
    tag: str
    metadata: dict[str, Any]
    created: str
    live: Live
    outcomes: Outcomes | None
    drift: dict[str, dict[str, Any]]
    estimated: dict[str, float | None]  # from the log's probabilities
    outcome_expected: dict[str, float | None]  # from the outcome flights' probabilities
    realized: dict[str, Any]  # on the outcome flights
    held_out: dict[str, Any]  # at training
    training_reliability: list[dict[str, float]]
    live_reliability: list[dict[str, float]]
    days: list[dict[str, Any]]


@cache
def vocabulary_of(tag: str) -> Vocabulary | None:
    """The vocabulary of a model in the store, None when the store lacks it."""
    import bentoml

    try:
        metadata: dict[str, Any] = dict(bentoml.models.get(tag).info.metadata)
        return Vocabulary.from_metadata(metadata["vocabularies"])
    except (bentoml.exceptions.NotFound, ValueError, KeyError):
        return None


def gather(log_dir: Path, outcomes_path: Path | None, tag: str | None) -> Report:
    """Read the log and the outcomes and compute every figure of the report."""
    log = read_log(log_dir, vocabulary_of)
    tag = choose_model(log, tag)
    predictor, metadata, created = load_model(tag)
    progress(f"scoring {log.counts()[tag]:,} records of {tag}")
    live = Live.of(log.models[tag], predictor)
    edges = np.array(metadata["reference"]["probability_edges"])
    outcomes = Outcomes.read(outcomes_path, predictor) if outcomes_path else None
    none: dict[str, Any] = {"flights": 0, **dict.fromkeys(QUALITY)}
    training = metadata["metrics"][TRAINING_VIEW]
    return Report(
        log=log,
        tag=tag,
        metadata=metadata,
        created=created,
        live=live,
        outcomes=outcomes,
        drift=drift(live.features, metadata["reference"], predictor.vocabulary),
        estimated=estimated(live.probabilities, edges, predictor.threshold),
        outcome_expected=estimated(outcomes.probabilities, edges, predictor.threshold) if outcomes else none,
        realized=realized(outcomes, edges) if outcomes else none,
        held_out={
            **metadata["reference"]["held_out"],
            "calibration_error": training["calibration_error"],
            "flights": sum(b["flights"] for b in training["reliability"]),
        },
        training_reliability=training["reliability"],
        live_reliability=live_reliability(outcomes, edges) if outcomes else [],
        days=daily(live, outcomes),
    )


def header(report: Report, command: str) -> list[str]:
    """The report's title and the table of what it was made from."""
    log, live, outcomes = report.log, report.live, report.outcomes
    others = ", ".join(f"{tag} ({n:,})" for tag, n in log.counts().most_common() if tag != report.tag) or "none"
    routes = ", ".join(f"`{route}` {n:,}" for route, n in log.models[report.tag].routes.most_common())
    skipped = ", ".join(f"{n:,} {reason}" for reason, n in log.skipped.items()) or "none"
    if log.first_skipped:
        skipped += f" (first: {log.first_skipped})"
    unlogged = int(np.isnan(live.logged).sum())
    gap = "—" if live.gap() is None else f"{live.gap():.1e}"
    source = report.metadata["training_data"]["source"]
    outcome_line = (
        f"{outcomes.source}: {len(outcomes.delayed):,} flights, {span_days(outcomes.scheduled)}; "
        f"{outcomes.unknown:,} of an airline or city the model does not know, left out"
        if outcomes
        else "no outcomes given"
    )
    return [
        f"# Monitoring report: {report.tag}",
        "",
        f"Made {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}`.",
        "",
        "| | |",
        "|---|---|",
        f"| model | `{report.tag}`, created {report.created}, trained on {source} |",
        f"| log | {log.folder}: {len(log.files)} file(s), {log.lines:,} lines |",
        f"| records of this model | {len(live.logged):,} ({routes}) |",
        f"| records of other models (left out) | {others} |",
        f"| skipped lines | {skipped} |",
        f"| answered | {span(live.answered)} |",
        f"| flights without Fecha-I | {int(np.isnat(live.scheduled).sum()):,} (in the drift and the estimate, "
        "not in the figures per day) |",
        f"| probabilities not logged | {unlogged:,} (`/predict` answers labels only): the model's own, as the "
        f"service computed and counted them; the logged ones are within {gap} of the model's |",
        f"| outcomes | {outcome_line} |",
    ]


def markdown(report: Report, command: str) -> str:
    """report.md: the header, then drift, quality, reliability and the figures per day."""
    lines = [
        *header(report, command),
        "",
        "## Drift of each input",
        "",
        "Jensen-Shannon distance (base 2) between the live shares of each input's values and the training "
        f"shares, flights without the input left out; drifted above {DRIFT_THRESHOLD}; no verdict below the "
        "minimum count (100 flights per value, never fewer than 1,000). The same functions and minimum as "
        "`GET /v1/monitoring` (docs/monitoring.md); `hour`, `weekday`, `day_of_month` and `month` drift by "
        "construction over windows shorter than their cycle.",
        "",
        "| input | flights | missing | min flights | score | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, entry in report.drift.items():
        verdict = "not judged" if entry["score"] is None else ("**drifted**" if entry["drifted"] else "no drift")
        lines.append(
            f"| [{name}](#{name}) | {entry['flights']:,} | {entry['missing']:,} | {entry['min_flights']:,} "
            f"| {fmt(entry['score'])} | {verdict} |"
        )
    for name in report.drift:
        lines += ["", f"### {name}", "", f"![{name}: live against reference](input-{name}.png)"]
    lines += [
        "",
        "## Quality over the whole period",
        "",
        "Estimated: from the probabilities alone (NannyML's CBPE, as `GET /v1/monitoring`'s `estimated`). "
        "Expected and realized on the outcome flights: the same flights scored with the model, and what "
        "happened to them (as its `outcomes`). Held-out: the model's test days at training, all fields given.",
        "",
        "| figure | estimated (log) | expected (outcome flights) | realized (outcome flights) | held-out (training) |",
        "|---|---:|---:|---:|---:|",
    ]
    columns = (report.estimated, report.outcome_expected, report.realized, report.held_out)
    for key in QUALITY:
        lines.append(f"| {key.replace('_', ' ')} | " + " | ".join(fmt(column.get(key)) for column in columns) + " |")
    flights = (
        len(report.live.logged),
        report.realized["flights"],
        report.realized["flights"],
        report.held_out["flights"],
    )
    lines.append("| flights | " + " | ".join(f"{n:,}" for n in flights) + " |")
    lines += [
        "",
        "## Reliability diagram",
        "",
        "![reliability: live against training](reliability.png)",
        "",
        f"Training: the held-out days' ten equal-count bins stored with the model (`metrics.{TRAINING_VIEW}."
        "reliability`). Live: "
        + (
            "the outcome flights scored with this model (as `POST /v1/outcomes` scores them) in the training "
            "probabilities' ten equal-count bins, the bins of the service's calibration error. Not the logged "
            "probabilities joined to outcomes: the log has no flight number, so flights of one airline, "
            "destination and minute, predictions repeated or without Fecha-I, and `/predict` records (no "
            "probability) could not be matched to their outcome without guessing."
            if report.outcomes
            else "no outcomes given."
        ),
        "",
        "## Delay rate per day",
        "",
        "![estimated and realized delay rate per day](quality-by-day.png)",
        "",
        "By day of Fecha-I, the flight's scheduled departure (local time), on both sides: the day outcomes "
        "are known by, where the prediction's own time (`timestamp`, UTC) may be hours or days before it. "
        "Estimated: the mean probability of the logged flights of that day; expected: the model's mean "
        "probability of that day's outcome flights; realized: their delay rate."
        + ("" if report.outcomes else " No outcomes given: estimated only."),
        "",
        "| day | logged flights | estimated | outcome flights | expected | realized |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for day in report.days:
        lines.append(
            f"| {day['day']} | {day['logged']:,} | {fmt(day['estimated'])} | {day['outcomes']:,} "
            f"| {fmt(day['expected'])} | {fmt(day['realized'])} |"
        )
    return "\n".join(lines) + "\n"


def write(report: Report, out: Path, command: str) -> Path:
    """The plots and report.md into `out`; the report's path."""
    import matplotlib  # training-only (requirements-train.txt), like train.py's plot

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    progress(f"plotting into {out}")
    names = slot_names(Vocabulary.from_metadata(dict(report.metadata["vocabularies"])))
    for name, entry in report.drift.items():
        plot_input(name, entry, names[name], out / f"input-{name}.png")
    plot_reliability(report.training_reliability, report.live_reliability, out / "reliability.png")
    plot_days(report.days, out / "quality-by-day.png")
    path = out / "report.md"
    path.write_text(markdown(report, command))
    return path


def span_days(scheduled: np.ndarray) -> str:
    """First and last day of Fecha-I."""
    days = scheduled.astype("datetime64[D]")
    return f"scheduled {days.min()} to {days.max()}"


def main(argv: list[str] | None = None) -> int:
    """Make the report; a missing log, no records, an unknown model or a bad outcomes file end with one
    line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", type=Path, required=True, help="the service's log dir, or its flight_delay/data dir")
    parser.add_argument("--outcomes", type=Path, help="flights that have left, a CSV in the dataset's format")
    parser.add_argument(
        "--out", type=Path, help="where report.md and its PNGs go (default: reports/monitoring-<UTC date>/)"
    )
    parser.add_argument("--model", help="the model tag to report on (default: the one most records carry)")
    args = parser.parse_args(argv)
    out = args.out or PROJECT_DIR / "reports" / f"monitoring-{datetime.now(UTC):%Y-%m-%d}"
    command = shlex.join(["python", "tools/monitoring_report.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        path = write(gather(args.log, args.outcomes, args.model), out, command)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
