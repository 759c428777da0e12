"""Compare a candidate model with the served one (or any two stored models) on the same labelled flights.

    python tools/compare.py [--candidate TAG] (--baseline TAG | --served URL) [--data CSV] [--out DIR]

Both models score the same flights of a dataset-format CSV (models.data.load_flights), every field
given, as the outcome flights of the monitoring report: the flights whose airline and destination
both models know. The rest are counted and listed apart, and the candidate's own figures on the
flights only it knows are reported too (a new airline is why one retrains). The verdict is MLflow's
`mlflow.evaluate(..., baseline_model=...)` with validation thresholds: the candidate must not be
worse than the baseline by more than a stated margin on any judged metric (MARGINS, with their
reasons), judged on a paired bootstrap by calendar day so that noise alone neither fails nor passes
a candidate (docs/model.md).

Exit code 0: accept; 1: refuse (which metric and by how much on stdout and in the report); 2: a
usage or data error, one `error:` line on stderr. report.md and reliability.png go into --out.
"""

import argparse
import json
import shlex
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))  # run as a script from anywhere, like train.py's imports

from models.config import CALIBRATION_BINS, DEFAULT_DATA_PATH, MODEL_NAME, SEED  # noqa: E402
from models.data import DataError, calendar_days, file_sha256, load_flights  # noqa: E402
from models.features import FlightColumns  # noqa: E402
from models.predictor import DelayPredictor, ModelError  # noqa: E402
from models.quality import (  # noqa: E402
    CONFIDENCE,
    LIVE_MARGINS,
    MARGINS,
    MIN_SHARED_FLIGHTS,
    labelled_quality,
    verdict,
)

# The candidate's own calibration error must stay under FlightDelayCalibrationDegraded's bound
# (deploy/k8s/alerts/flight-delay.rules.yml): a model that would page on day one is not rolled out.
MAX_CALIBRATION_ERROR = 0.05
# Below MIN_SHARED_FLIGHTS (models/quality.py) or these days, refuse to judge (exit 1): a bootstrap
# by day needs enough days to draw from, and a month of them gives the resamples a spread worth reading.
MIN_SHARED_DAYS = 30
RESAMPLES = 400  # the 5% tail rests on 20 resamples: its bound moves by about a tenth of the spread
SHOWN = ("delay_rate", "mean_probability", "roc_auc", "brier", "calibration_error", "precision", "recall", "f1")
LABELS = {
    "delay_rate": "delay rate (observed)",
    "mean_probability": "mean probability",
    "roc_auc": "ROC AUC",
    "brier": "Brier",
    "calibration_error": "calibration error",
    "precision": "precision (delayed)",
    "recall": "recall (delayed)",
    "f1": "F1 (delayed)",
}


class CompareError(Exception):
    """The comparison cannot be made; the message says why in one line."""


def progress(message: str) -> None:
    """One timestamped line on stderr, so the bootstrap shows where it is."""
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Model:
    """A stored model as the service evaluates it (ONNX Runtime), with where it came from."""

    role: str  # baseline or candidate
    tag: str
    predictor: DelayPredictor
    metadata: dict[str, Any]
    created: str
    chosen: str  # how it was named: --candidate, the store's latest, --baseline or a served URL


def load_model(role: str, tag: str, chosen: str) -> Model:
    """The served predictor of a stored model, or CompareError naming what is wrong."""
    import bentoml

    try:
        model = bentoml.models.get(tag)
        metadata: dict[str, Any] = dict(model.info.metadata)
        predictor = DelayPredictor.load(model.path, metadata)
    except bentoml.exceptions.NotFound:
        raise CompareError(
            f"{role} {tag} ({chosen}) is not in the BentoML store (BENTOML_HOME); train, pull or import it first"
        ) from None
    except bentoml.exceptions.BentoMLException as exc:  # "Invalid Tag ..." of a tag it cannot read
        raise CompareError(f"{role} {tag!r} ({chosen}) is not a model tag: {exc}") from None
    except (ValueError, ModelError) as exc:
        raise CompareError(f"{role} {tag} ({chosen}) cannot be used: {exc}") from None
    created = f"{model.info.creation_time:%Y-%m-%d %H:%M} UTC"
    return Model(role, str(model.tag), predictor, metadata, created, chosen)


def latest_tag() -> str:
    """The store's latest flight_delay model: the default candidate."""
    import bentoml

    try:
        return str(bentoml.models.get(f"{MODEL_NAME}:latest").tag)
    except bentoml.exceptions.NotFound:
        raise CompareError(f"no {MODEL_NAME} model in the BentoML store to be the candidate; train one first") from None


def served_tag(url: str) -> str:
    """The tag of the model a running service serves, read from its GET /v1/model."""
    address = f"{url.rstrip('/')}/v1/model"
    try:
        with urllib.request.urlopen(address, timeout=10) as response:
            card = json.load(response)
    except (OSError, ValueError) as exc:  # URLError, HTTPError and timeouts are OSErrors; bad JSON a ValueError
        raise CompareError(f"cannot read the served model from {address}: {exc}") from None
    tag = card.get("tag") if isinstance(card, dict) else None
    if not isinstance(tag, str) or not tag:
        raise CompareError(f"{address} names no model tag (no `tag` in its answer)")
    return tag


def judged(delayed: np.ndarray, probability: np.ndarray, threshold: float, weights: np.ndarray) -> dict[str, float]:
    """The MARGINS metrics of flights counted `weights` times each (a bootstrap resample of the rows;
    ones: the rows themselves), from models.quality.labelled_quality as train.py's held-out ones. NaN
    where a figure has no meaning, for the bound's nanquantile to leave out."""
    own = labelled_quality(delayed, probability, threshold, weights)
    return {m.metric: float("nan") if own[m.metric] is None else own[m.metric] for m in MARGINS}


@dataclass
class Judgement:
    """One metric's verdict: the point difference (candidate minus baseline), its one-sided bound
    and whether that bound stays within the margin."""

    metric: str
    label: str
    point: float  # the difference on the flights themselves (the candidate's own value: `own`)
    bound: float
    limit: float  # the bound's worst allowed value
    accepted: bool
    reason: str
    side: str  # of the bound: "lower" where higher is better, else "upper"
    own: bool = False  # judged on the candidate's own value, not on the difference

    def refusal(self) -> str:
        """The line saying which metric failed and by how much."""
        what = "value" if self.own else "difference"
        return (
            f"{self.label}: the {self.side} {CONFIDENCE:.0%} bound of the {what}, {self.bound:+.4f}, is beyond "
            f"{self.limit:+.4f} by {abs(self.bound - self.limit):.4f} (on the flights themselves {self.point:+.4f})"
        )


def bootstrap(
    delayed: np.ndarray, days: np.ndarray, models: list[tuple[np.ndarray, float]], resamples: int = RESAMPLES
) -> list[dict[str, np.ndarray]]:
    """Each model's judged figures on the same `resamples` resamples of the flights, drawn by calendar
    day (flights of a day share its weather and its delays), seeded."""
    rng = np.random.default_rng(SEED)
    unique, day = np.unique(days, return_inverse=True)
    results: list[dict[str, list[float]]] = [{m.metric: [] for m in MARGINS} for _ in models]
    for number in range(resamples):
        if number % 100 == 0:
            progress(f"bootstrap resample {number + 1}/{resamples}")
        weights = np.bincount(rng.integers(0, len(unique), len(unique)), minlength=len(unique))[day].astype(float)
        for result, (probability, threshold) in zip(results, models, strict=True):
            for key, value in judged(delayed, probability, threshold, weights).items():
                result[key].append(value)
    return [{key: np.array(values) for key, values in result.items()} for result in results]


def judge(
    baseline: dict[str, Any], candidate: dict[str, Any], resampled: list[dict[str, np.ndarray]]
) -> list[Judgement]:
    """Each MARGINS metric, then the candidate's own calibration error against MAX_CALIBRATION_ERROR."""
    judgements = []
    for m in MARGINS:
        differences = resampled[1][m.metric] - resampled[0][m.metric]
        difference = candidate[m.metric] - baseline[m.metric]
        if m.higher_is_better:
            bound, limit = float(np.nanquantile(differences, 1 - CONFIDENCE)), -m.margin
            judgement = Judgement(m.metric, m.label, difference, bound, limit, bound >= limit, m.reason, "lower")
        else:
            bound, limit = float(np.nanquantile(differences, CONFIDENCE)), m.margin
            judgement = Judgement(m.metric, m.label, difference, bound, limit, bound <= limit, m.reason, "upper")
        judgements.append(judgement)
    own = float(np.quantile(resampled[1]["calibration_error"], CONFIDENCE))
    judgements.append(
        Judgement(
            "own_calibration_error",
            "calibration error, the candidate's own",
            candidate["calibration_error"],
            own,
            MAX_CALIBRATION_ERROR,
            own <= MAX_CALIBRATION_ERROR,
            "FlightDelayCalibrationDegraded's bound: a model that would page on its first day is not rolled out",
            "upper",
            own=True,
        )
    )
    return judgements


@dataclass
class Apart:
    """Flights not in the comparison: by which model knows them, and the values behind them."""

    candidate_only: int = 0
    baseline_only: int = 0
    neither: int = 0
    values: list[dict[str, Any]] = field(default_factory=list)  # column, value, flights, lacked by
    candidate_figures: dict[str, Any] | None = None  # the candidate on the flights only it knows
    baseline_figures: dict[str, Any] | None = None  # the baseline on the flights only it knows


def apart(frame: pd.DataFrame, baseline: Model, candidate: Model) -> tuple[np.ndarray, Apart]:
    """Which flights both models know, and what is left apart."""
    known_b, known_c = baseline.predictor.vocabulary.known(frame), candidate.predictor.vocabulary.known(frame)
    result = Apart(
        candidate_only=int(np.sum(known_c & ~known_b)),
        baseline_only=int(np.sum(known_b & ~known_c)),
        neither=int(np.sum(~known_b & ~known_c)),
    )
    for column, attribute in (("OPERA", "airline_code"), ("SIGLADES", "destination_code")):
        counts = frame[column].value_counts()
        for value, flights in sorted(counts.items()):
            lacking = [
                model.role
                for model in (baseline, candidate)
                if value not in getattr(model.predictor.vocabulary, attribute)
            ]
            if lacking:
                lacked = "both" if len(lacking) == 2 else lacking[0]
                result.values.append({"column": column, "value": value, "flights": int(flights), "lacked_by": lacked})
    for model, rows, name in ((candidate, known_c & ~known_b, "candidate"), (baseline, known_b & ~known_c, "baseline")):
        if rows.any():
            scored = frame.loc[rows]
            probability = model.predictor.probabilities(FlightColumns.from_frame(scored, model.predictor.vocabulary))
            own = labelled_quality(scored["delayed"].to_numpy(), probability, model.predictor.threshold)
            setattr(result, f"{name}_figures", own)
    return known_b & known_c, result


@dataclass
class Comparison:
    """Every figure of one comparison, gathered before anything is written."""

    baseline: Model
    candidate: Model
    data: Path
    flights: int
    shared: int
    shared_days: int
    apart: Apart
    figures: list[dict[str, Any]]  # baseline, candidate on the shared flights; empty when too few
    judgements: list[Judgement]
    refusals: list[str]
    notes: list[str]
    # models.quality.verdict on Brier and calibration error, as GET /v1/monitoring judges a challenger
    live_verdict: str = "undecided"

    @property
    def accepted(self) -> bool:
        """The verdict: no metric refused and enough flights to judge."""
        return not self.refusals


def gather(baseline: Model, candidate: Model, data: Path, resamples: int = RESAMPLES) -> Comparison:
    """Read the flights, score them with both models and judge the candidate."""
    try:
        progress(f"reading {data}")
        frame = load_flights(data)
    except DataError as exc:
        raise CompareError(str(exc)) from None
    shared_rows, left_apart = apart(frame, baseline, candidate)
    shared = frame.loc[shared_rows]
    days = calendar_days(shared)
    n_days = len(np.unique(days))
    digest = file_sha256(data)
    notes = [
        f"{model.tag} ({role}) was trained on this very file: its figures include its own training flights "
        "and flatter it; compare on flights neither model was trained on"
        for model, role in ((baseline, "baseline"), (candidate, "candidate"))
        if model.metadata["training_data"].get("sha256") == digest
    ]
    if baseline.tag == candidate.tag:  # a sanity check on purpose, or a candidate never trained
        notes.append(f"the candidate is the baseline ({baseline.tag}): the two agree by construction")
    if left_apart.baseline_only:  # reported, not judged: dropping a rare value can be the point of a retraining
        notes.append(
            f"the candidate does not know the airline or destination of {left_apart.baseline_only:,} flights the "
            "baseline answers: once it serves, they are refused (400)"
        )
    if len(shared) < MIN_SHARED_FLIGHTS or n_days < MIN_SHARED_DAYS:
        refusal = (
            f"too few flights to judge: {len(shared):,} flights over {n_days} days that both models know, "
            f"at least {MIN_SHARED_FLIGHTS:,} over {MIN_SHARED_DAYS} days needed"
        )
        return Comparison(
            baseline, candidate, data, len(frame), len(shared), n_days, left_apart, [], [], [refusal], notes
        )
    delayed = shared["delayed"].to_numpy()
    scored = []
    for model in (baseline, candidate):
        progress(f"scoring {len(shared):,} flights with {model.tag}")
        probability = model.predictor.probabilities(FlightColumns.from_frame(shared, model.predictor.vocabulary))
        scored.append((probability, model.predictor.threshold))
    own = [labelled_quality(delayed, probability, threshold) for probability, threshold in scored]
    resampled = bootstrap(delayed, days, scored, resamples)
    judgements = judge(own[0], own[1], resampled)
    refusals = [judgement.refusal() for judgement in judgements if not judgement.accepted]
    bounds = {}
    for metric in LIVE_MARGINS:
        differences = resampled[1][metric] - resampled[0][metric]
        bounds[metric] = (
            float(np.nanquantile(differences, 1 - CONFIDENCE)),
            float(np.nanquantile(differences, CONFIDENCE)),
        )
    return Comparison(
        baseline,
        candidate,
        data,
        len(frame),
        len(shared),
        n_days,
        left_apart,
        own,
        judgements,
        refusals,
        notes,
        verdict(len(shared), bounds),
    )


def fmt(value: float | None, signed: bool = False) -> str:
    """A figure for the tables, to 4 places; an em dash where there is none."""
    if value is None:
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def model_row(role: str, model: Model) -> str:
    """One model's line of the header table."""
    training = model.metadata["training_data"]
    return (
        f"| {role} | `{model.tag}` ({model.chosen}), created {model.created}, trained on {training['source']} "
        f"({training['rows']:,} rows), threshold {model.predictor.threshold:.4f} |"
    )


def apart_section(comparison: Comparison) -> list[str]:
    """The flights left out of the comparison, the values behind them, and each model's figures on the
    flights only it knows."""
    left = comparison.apart
    lines = [
        "## Flights left apart",
        "",
        "Flights whose airline or destination one of the models does not know: that model's service refuses "
        "them (400), so they cannot be compared.",
        "",
        "| flights | known by |",
        "|---|---:|",
        f"| only the candidate | {left.candidate_only:,} |",
        f"| only the baseline (the candidate's service would refuse them) | {left.baseline_only:,} |",
        f"| neither | {left.neither:,} |",
    ]
    if left.values:
        lines += ["", "| column | value | flights | not known by |", "|---|---|---:|---|"]
        lines += [f"| {v['column']} | {v['value']} | {v['flights']:,} | {v['lacked_by']} |" for v in left.values]
    for role, own in (("candidate", left.candidate_figures), ("baseline", left.baseline_figures)):
        if own is not None:
            lines += [
                "",
                f"The {role} on the {own['flights']:,} flights only it knows (not judged: no other model to "
                "compare with):",
                "",
                "| " + " | ".join(LABELS[key] for key in SHOWN) + " |",
                "|" + "---:|" * len(SHOWN),
                "| " + " | ".join(fmt(own[key]) for key in SHOWN) + " |",
            ]
    return lines


def markdown(comparison: Comparison, command: str) -> str:
    """report.md: verdict, models and data, the judged figures, margins, the flights apart, diagrams."""
    c = comparison
    decision = "**accept** (exit code 0)" if c.accepted else "**refuse** (exit code 1)"
    lines = [
        f"# Candidate {c.candidate.tag} against {c.baseline.tag}",
        "",
        f"Made {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}`.",
        "",
        f"Verdict: {decision}. On Brier and calibration error alone, as GET /v1/monitoring judges a challenger: "
        f"**{c.live_verdict}**.",
        *[f"- refused on {refusal}" for refusal in c.refusals],
        *[f"- note: {note}" for note in c.notes],
        "",
        "| | |",
        "|---|---|",
        model_row("baseline", c.baseline),
        model_row("candidate", c.candidate),
        f"| flights | {c.data}: {c.flights:,}; {c.shared:,} known by both models, over {c.shared_days} days, "
        f"compared; {c.flights - c.shared:,} left apart |",
    ]
    if c.figures:
        baseline, candidate = c.figures
        judgements = {j.metric: j for j in c.judgements}
        lines += [
            "",
            "## On the flights both models know",
            "",
            f"Every field given (as train.py's `all_fields` view). Difference: candidate minus baseline; bound: "
            f"the one-sided {CONFIDENCE:.0%} bound of the difference on the side where the candidate is worse, "
            f"from {RESAMPLES} paired bootstrap resamples of the calendar days of Fecha-I (seed {SEED}); "
            "refused when the bound is beyond the margin. Calibration error: train.py's, over "
            f"{CALIBRATION_BINS} equal-count bins. Precision, recall and F1: of delayed flights, at each "
            "model's own threshold.",
            "",
            "| metric | baseline | candidate | difference | bound | margin | verdict |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for key in SHOWN:
            judgement = judgements.get(key)
            difference = candidate[key] - baseline[key] if None not in (candidate[key], baseline[key]) else None
            judged_cells = (
                f"{fmt(judgement.bound, True)} | {fmt(judgement.limit, True)} | "
                + ("accept" if judgement.accepted else "**refuse**")
                if judgement
                else "| | not judged"
            )
            lines.append(
                f"| {LABELS[key]} | {fmt(baseline[key])} | {fmt(candidate[key])} | {fmt(difference, True)} "
                f"| {judged_cells} |"
            )
        own = judgements["own_calibration_error"]
        lines.append(
            f"| {own.label} | | {fmt(own.point)} | | {fmt(own.bound)} "
            f"| {own.limit:.2f} | {'accept' if own.accepted else '**refuse**'} |"
        )
        lines += [
            "",
            "## Margins and why",
            "",
            "| metric | margin | reason |",
            "|---|---:|---|",
            *[f"| {j.label} | {abs(j.limit):.3f} | {j.reason} |" for j in c.judgements],
        ]
    lines += ["", *apart_section(c)]
    if c.figures:
        lines += [
            "",
            "## Reliability diagrams",
            "",
            "![reliability: baseline left, candidate right](reliability.png)",
            "",
            f"Baseline left, candidate right: mean probability against observed delay rate in {CALIBRATION_BINS} "
            "equal-count bins of each model's probabilities on the flights both know.",
        ]
    return "\n".join(lines) + "\n"


def plot_reliability(comparison: Comparison, path: Path) -> None:
    """Both models' reliability diagrams side by side, baseline left, on the same axes."""
    import matplotlib  # training-only (requirements-train.txt), like train.py's plot

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, panels = plt.subplots(1, 2, figsize=(10, 4.8), sharex=True, sharey=True)
    bins = [own["reliability"] for own in comparison.figures]
    top = max(max(b["predicted"], b["observed"]) for model_bins in bins for b in model_bins)
    for axes, role, model, own in zip(
        panels, ("baseline", "candidate"), (comparison.baseline, comparison.candidate), comparison.figures, strict=True
    ):
        axes.plot([0, top], [0, top], color="grey", linestyle=":", label="perfect calibration")
        axes.plot(
            [b["predicted"] for b in own["reliability"]],
            [b["observed"] for b in own["reliability"]],
            marker="o",
            label=f"calibration error {own['calibration_error']:.4f}",
        )
        axes.set(title=f"{role}: {model.tag}", xlabel="mean predicted probability of delay (bin)")
        axes.legend(loc="upper left", fontsize="small")
        axes.grid(alpha=0.3)
    panels[0].set_ylabel("observed share of delayed flights (bin)")
    figure.suptitle(f"{comparison.shared:,} flights both models know, {CALIBRATION_BINS} equal-count bins each")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write(comparison: Comparison, out: Path, command: str) -> Path:
    """reliability.png (when there are figures) and report.md into `out`; the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    if comparison.figures:
        plot_reliability(comparison, out / "reliability.png")
    path = out / "report.md"
    path.write_text(markdown(comparison, command))
    return path


def main(argv: list[str] | None = None) -> int:
    """Compare, write the report and answer with the verdict's exit code; a bad model, service or data
    file ends with one `error:` line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidate", help=f"the candidate's tag (default: the store's latest {MODEL_NAME})")
    baseline = parser.add_mutually_exclusive_group(required=True)
    baseline.add_argument("--baseline", help="the baseline's tag in the store")
    baseline.add_argument("--served", help="a running service's URL: its GET /v1/model names the baseline's tag")
    parser.add_argument(
        "--data",
        type=Path,
        help=f"labelled flights, a CSV in the dataset's format (default: {DEFAULT_DATA_PATH} if present)",
    )
    parser.add_argument(
        "--out", type=Path, help="where report.md and reliability.png go (default: reports/compare-<UTC date>/)"
    )
    args = parser.parse_args(argv)
    out = args.out or PROJECT_DIR / "reports" / f"compare-{datetime.now(UTC):%Y-%m-%d}"
    command = shlex.join(["python", "tools/compare.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        if out.exists() and not out.is_dir():  # found before the scoring, not after it
            raise CompareError(f"--out {out} is a file: name a directory for report.md and reliability.png")
        data = args.data or (DEFAULT_DATA_PATH if DEFAULT_DATA_PATH.is_file() else None)
        if data is None:
            raise CompareError(f"no labelled flights: pass --data CSV (there is no {DEFAULT_DATA_PATH})")
        if args.served:
            chosen, tag = f"served at {args.served}", served_tag(args.served)
        else:
            chosen, tag = "--baseline", args.baseline
        base = load_model("baseline", tag, chosen)
        candidate = (
            load_model("candidate", args.candidate, "--candidate")
            if args.candidate
            else load_model("candidate", latest_tag(), "the store's latest")
        )
        comparison = gather(base, candidate, data)
        path = write(comparison, out, command)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the report cannot be written: an error, not a verdict
        print(f"error: cannot write the report into {out}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    for note in comparison.notes:
        print(f"note: {note}")
    print(f"live verdict (Brier and calibration error, as GET /v1/monitoring judges): {comparison.live_verdict}")
    if comparison.accepted:
        print(f"accept: {candidate.tag} is not worse than {base.tag} beyond any margin")
        return 0
    for refusal in comparison.refusals:
        print(f"refuse: {refusal}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
