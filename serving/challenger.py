"""The challenger: a second model of the store scoring the flights the champion answers, off the
request path, and judged against it on their outcomes (FLIGHT_DELAY_CHALLENGER, docs/model.md).

The batch path hands each answered batch over (`offer`: a list append under a lock, as it hands its
counts to monitoring) and a thread of the worker scores everything handed over since its last pass
in one call of the challenger's model, every SCORE_EVERY_S: the answers, their latency and the
champion's throughput do not wait for it (docs/performance.md measures the cost). Its answers are
never returned. The challenger's features are the champion's with the airline and destination codes
translated to its own vocabulary by two lookup arrays, for the whole pass at once: encoding each batch
anew, as first built, held the GIL 77 ms a pass for 2,400 one-flight batches and stalled the answers
that long. What it counts:

- its own predictions, drift and expected quality, through a Monitor of its own (the champion's
  series with model="<challenger tag>");
- agreement with the champion on the same flights: flights, same label, summed probability gaps;
- flights it cannot score (an airline or city its vocabulary lacks), counted apart as `unknown`;
- past MAX_PENDING_FLIGHTS waiting, a batch is dropped and counted, never queued without bound;
- outcomes (POST /v1/outcomes), scored by both models: each model's realized quality, and on the
  flights both scored the paired counts models.quality.paired_comparison judges.
"""

import contextlib
import logging
import os
import threading
from typing import Any

import numpy as np

from models.features import FEATURES, FlightColumns, encode
from models.predictor import DelayPredictor
from models.quality import probability_bins
from models.schema import Flight
from serving.monitoring import Monitor, series

logger = logging.getLogger("bentoml.flight_delay")
SCORE_EVERY_S = 1.0
LOWEST_PRIORITY = 19  # nice
# Flights handed over and not yet scored, past which a batch is dropped (and counted): about 16 MB of
# features and probabilities, 2.5 s of the most a worker answered (75,000 flights a second, 100 per
# request); at 50,000, that load dropped 43% of its flights.
MAX_PENDING_FLIGHTS = 200_000


AIRLINE, DESTINATION = FEATURES.index("airline"), FEATURES.index("destination")


class Challenger:
    """One worker's challenger: `offer()` on the batch path, `count_outcomes()` on the outcomes route,
    a scoring thread between them."""

    def __init__(
        self, predictor: DelayPredictor, monitor: Monitor, champion: DelayPredictor, champion_monitor: Monitor
    ) -> None:
        self.predictor, self.monitor = predictor, monitor
        self.champion, self.champion_monitor = champion, champion_monitor
        # The challenger's code of each of the champion's airlines and destinations; -1: it does not know it.
        self.same_vocabulary = predictor.vocabulary == champion.vocabulary
        own = predictor.vocabulary
        self.airline_codes = np.array([own.airline_code.get(a, -1) for a in champion.vocabulary.airlines], float)
        self.destination_codes = np.array(
            [own.destination_code.get(d, -1) for d in champion.vocabulary.destinations], float
        )
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
        self.batches: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending = 0
        self.unsent_drops = 0  # flights dropped since the last pass
        self.closed = threading.Event()
        self.scorer = threading.Thread(target=self.score_forever, name="challenger", daemon=True)
        self.scorer.start()

    def offer(self, features: np.ndarray, probabilities: np.ndarray) -> None:
        """Hand over a batch the champion answered: its features and the champion's probabilities;
        dropped and counted when too many flights already wait."""
        with self.lock:
            if self.pending + len(probabilities) <= MAX_PENDING_FLIGHTS:
                self.batches.append((features, probabilities))
                self.pending += len(probabilities)
            else:  # counted in Prometheus by the next pass: a counter's write costs more than this call
                self.unsent_drops += len(probabilities)

    def translated(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The challenger's features of the flights it knows, from the champion's, and which those are."""
        if self.same_vocabulary:
            return features, np.ones(len(features), dtype=bool)
        airlines = self.airline_codes[features[:, AIRLINE].astype(np.int64)]
        given = ~np.isnan(features[:, DESTINATION])
        destinations = np.full(len(features), np.nan)
        destinations[given] = self.destination_codes[features[given, DESTINATION].astype(np.int64)]
        known = (airlines >= 0) & ~(destinations < 0)  # NaN (not given) compares false
        own = features[known]
        own[:, AIRLINE], own[:, DESTINATION] = airlines[known], destinations[known]
        return own, known

    def score(self) -> None:
        """Score every batch handed over since the last pass, in one call of the model, and count."""
        with self.lock:
            batches, self.batches = self.batches, []
            dropped, self.unsent_drops = self.unsent_drops, 0
            self.pending = 0
        if dropped:
            self.dropped.inc(dropped)
        if not batches:
            return
        features, known = self.translated(np.concatenate([batch[0] for batch in batches]))
        champion = np.concatenate([batch[1] for batch in batches])[known]
        if unknown := int(len(known) - known.sum()):
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
        next one goes on (a challenger never stops the champion).

        The thread runs at the lowest CPU priority (Linux sets a nice value per thread): scoring every
        flight again costs about what the champion's own scoring does (1.3 us a flight), and on cores
        the champion keeps busy the challenger gets only what is left, falls behind, and drops and
        counts rather than slow the answers (docs/performance.md).
        """
        with contextlib.suppress(AttributeError, OSError):  # not Linux: the scheduler's default
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
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

    def count_outcomes(self, features: np.ndarray, champion: np.ndarray, delayed: np.ndarray) -> int:
        """Score flights whose outcome is known (those the champion counted: its features and
        probabilities) and count them for the challenger and for the paired comparison; the flights the
        challenger scored."""
        own, known = self.translated(features)
        if not known.any():
            return 0
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
        """The challenger's probability of each flight as a client sent it and the champion answered it
        (the prediction log's column), None for a flight it does not know."""
        parsed = [Flight.model_validate(flight) for flight in flights]
        own, known = self.translated(encode(FlightColumns.from_flights(parsed, self.champion.vocabulary)))
        probabilities = iter(self.predictor.scores(own).tolist() if len(own) else [])
        return [next(probabilities) if k else None for k in known.tolist()]
