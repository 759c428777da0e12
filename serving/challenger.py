"""The challenger: a second model of the store scoring the flights the champion answers, off the
request path, and judged against it on their outcomes (FLIGHT_DELAY_CHALLENGER, docs/model.md).

The batch path hands each answered batch over (`offer`: a list append under a lock, as it hands its
counts to monitoring) and a thread of the worker scores everything handed over since its last pass
in one call of the challenger's model, every SCORE_EVERY_S: the answers, their latency and the
champion's throughput do not wait for it (docs/performance.md measures the cost). Its answers are
never returned. What it counts:

- its own predictions, drift and expected quality, through a Monitor of its own (the champion's
  series with model="<challenger tag>");
- agreement with the champion on the same flights: flights, same label, summed probability gaps;
- flights it cannot score (an airline or city its vocabulary lacks), counted apart as `unknown`;
- past MAX_PENDING_FLIGHTS waiting, a batch is dropped and counted, never queued without bound;
- outcomes (POST /v1/outcomes), scored by both models: each model's realized quality, and on the
  flights both scored the paired counts models.quality.paired_comparison judges.
"""

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.features import FlightColumns, encode
from models.predictor import DelayPredictor
from models.quality import probability_bins
from models.schema import Flight
from serving.monitoring import Monitor, series

logger = logging.getLogger("bentoml.flight_delay")
SCORE_EVERY_S = 1.0
# Flights handed over and not yet scored, past which a batch is dropped (and counted): 12 s of the
# reference load's 4,000 flights a second per worker, about 7 MB of features.
MAX_PENDING_FLIGHTS = 50_000


class Challenger:
    """One worker's challenger: `offer()` on the batch path, `count_outcomes()` on the outcomes route,
    a scoring thread between them."""

    def __init__(
        self, predictor: DelayPredictor, monitor: Monitor, champion: DelayPredictor, champion_monitor: Monitor
    ) -> None:
        self.predictor, self.monitor = predictor, monitor
        self.champion, self.champion_monitor = champion, champion_monitor
        # The champion's encoded features serve as they are when both models know the same values.
        self.same_vocabulary = predictor.vocabulary == champion.vocabulary
        labels = {"champion": champion_monitor.model, "challenger": monitor.model}
        metrics = series()
        self.scored, self.agreed, self.gap, self.dropped, self.unknown = (
            getattr(metrics, name).labels(**labels)
            for name in (
                "challenger_flights",
                "challenger_agreed",
                "challenger_gap",
                "challenger_dropped",
                "challenger_unknown",
            )
        )
        self.outcomes = metrics.comparison_outcomes.labels(**labels)
        self.difference_squares = metrics.comparison_difference_squares.labels(**labels)
        self.squared_errors = {
            role: metrics.comparison_squared_error.labels(**labels, role=role) for role in ("champion", "challenger")
        }
        self.bin_children = {
            role: [
                [child.labels(**labels, role=role, bin=str(b)) for b in range(len(edges) + 1)]
                for child in (
                    metrics.comparison_bin_flights,
                    metrics.comparison_bin_delayed,
                    metrics.comparison_bin_probability,
                )
            ]
            for role, edges in (("champion", champion_monitor.edges), ("challenger", monitor.edges))
        }
        metrics.model_role.labels(model=champion_monitor.model, role="champion").set(1)
        metrics.model_role.labels(model=monitor.model, role="challenger").set(1)
        self.lock = threading.Lock()
        self.batches: list[tuple[Sequence[Flight], np.ndarray, np.ndarray]] = []
        self.pending = 0
        self.closed = threading.Event()
        self.scorer = threading.Thread(target=self.score_forever, name="challenger", daemon=True)
        self.scorer.start()

    def offer(self, flights: Sequence[Flight], features: np.ndarray, probabilities: np.ndarray) -> None:
        """Hand over a batch the champion answered: its flights, their features and the champion's
        probabilities; dropped and counted when too many flights already wait."""
        with self.lock:
            if self.pending + len(probabilities) <= MAX_PENDING_FLIGHTS:
                self.batches.append((flights, features, probabilities))
                self.pending += len(probabilities)
                return
        self.dropped.inc(len(probabilities))

    def known(self, flights: Sequence[Flight]) -> np.ndarray:
        """Which flights the challenger's vocabulary knows (every one when it is the champion's)."""
        if self.same_vocabulary:
            return np.ones(len(flights), dtype=bool)
        airlines, destinations = self.predictor.vocabulary.airline_code, self.predictor.vocabulary.destination_code
        return np.array(
            [f.OPERA in airlines and (f.SIGLADES is None or f.SIGLADES in destinations) for f in flights], dtype=bool
        )

    def features(self, flights: Sequence[Flight], champion_features: np.ndarray, known: np.ndarray) -> np.ndarray:
        """The challenger's features of the known flights."""
        if self.same_vocabulary:
            return champion_features
        return encode(
            FlightColumns.from_flights([f for f, k in zip(flights, known, strict=True) if k], self.predictor.vocabulary)
        )

    def score(self) -> None:
        """Score every batch handed over since the last pass, in one call of the model, and count."""
        with self.lock:
            batches, self.batches = self.batches, []
            self.pending = 0
        if not batches:
            return
        known = [self.known(flights) for flights, _features, _probabilities in batches]
        features = np.concatenate([self.features(*batch[:2], k) for batch, k in zip(batches, known, strict=True)])
        champion = np.concatenate([batch[2][k] for batch, k in zip(batches, known, strict=True)])
        unknown = sum(int(len(k) - k.sum()) for k in known)
        if unknown:
            self.unknown.inc(unknown)
        if not len(features):
            return
        probabilities = self.predictor.scores(features)
        agreed = self.predictor.labels(probabilities) == self.champion.labels(champion)
        self.scored.inc(len(probabilities))
        self.agreed.inc(int(agreed.sum()))
        self.gap.inc(float(np.abs(probabilities - champion).sum()))
        self.monitor.count(features, probabilities)

    def score_forever(self) -> None:
        """Score every SCORE_EVERY_S until closed; a failed pass is logged, its flights lost, and the
        next one goes on (a challenger never stops the champion)."""
        while not self.closed.wait(SCORE_EVERY_S):
            self.score_safely()

    def score_safely(self) -> None:
        try:
            self.score()
        except Exception:
            logger.exception("challenger: a pass failed; its flights are not scored")

    def close(self) -> None:
        """Stop the thread and score what waits (at the worker's shutdown), before the monitors close."""
        self.closed.set()
        self.scorer.join(5)
        self.score_safely()

    def count_outcomes(
        self, flights: Sequence[Flight], features: np.ndarray, champion: np.ndarray, delayed: np.ndarray
    ) -> int:
        """Score flights whose outcome is known (those the champion counted, its features and
        probabilities) and count them for the challenger and for the paired comparison; the flights the
        challenger scored."""
        known = self.known(flights)
        if not known.any():
            return 0
        own = self.features(flights, features, known)
        probabilities = self.predictor.scores(own)
        champion, delayed = champion[known], delayed[known]
        self.monitor.count_outcomes(own, probabilities, delayed)
        # Counters only grow: the Brier difference's sum is the difference of the two squared errors'.
        errors = {"champion": (delayed - champion) ** 2, "challenger": (delayed - probabilities) ** 2}
        self.outcomes.inc(len(probabilities))
        self.difference_squares.inc(float(np.sum((errors["challenger"] - errors["champion"]) ** 2)))
        for role, error in errors.items():
            self.squared_errors[role].inc(float(error.sum()))
        for role, monitor, scores in (
            ("champion", self.champion_monitor, champion),
            ("challenger", self.monitor, probabilities),
        ):
            bins = probability_bins(monitor.edges, scores)
            size = len(monitor.edges) + 1
            counts = (
                np.bincount(bins, minlength=size),
                np.bincount(bins, weights=delayed, minlength=size),
                np.bincount(bins, weights=scores, minlength=size),
            )
            for children, per_bin in zip(self.bin_children[role], counts, strict=True):
                for b in np.flatnonzero(per_bin):
                    children[b].inc(float(per_bin[b]))
        return len(probabilities)

    def probabilities_of(self, flights: list[dict[str, Any]]) -> list[float | None]:
        """The challenger's probability of each flight as a client sent it (the prediction log's
        column), None for a flight it does not know."""
        parsed = [Flight.model_validate(flight) for flight in flights]
        known = self.known(parsed)
        probabilities = iter(
            self.predictor.probabilities(
                FlightColumns.from_flights(
                    [f for f, k in zip(parsed, known, strict=True) if k], self.predictor.vocabulary
                )
            ).tolist()
            if known.any()
            else []
        )
        return [next(probabilities) if k else None for k in known]
