"""Greedy adaptive batching: cap how long BentoML holds a request back waiting for others.

BentoML 1.4.40's CorkDispatcher holds each request until its queue looks worth a batch, using a
wait it learns from the waits it saw. Under load those waits include the time spent behind the
running batch, so the learned wait grows with load and then decays very slowly (figures below);
its initial estimates also scale with max_latency_ms (0.67 s per item at 10 s). For this model, whose cost per batch
is almost flat, the best policy is greedy: run a batch as soon as the model is free, with all
requests queued meanwhile. Capping the learned wait at MAX_WAIT_S gives exactly that, and under
load batches still form while the previous one runs.

This reaches into BentoML internals (pinned in requirements.txt); tests/test_batching.py checks the
caps on BentoML's own optimizer, so an upgrade that moves them fails loudly. Measured with
`python loadtest/reliability.py after-burst` (and FLIGHT_DELAY_GREEDY_BATCHING=false): lone requests
in the 12 s after a 10-s burst took a median of 90.9 ms without the cap and 9.0 ms with it.
"""

from typing import Any

from bentoml._internal.marshal import dispatcher

MAX_WAIT_S = 0.001  # one tick of the dispatcher's polling loop


def cap_learned_wait(max_wait_s: float = MAX_WAIT_S) -> None:
    """Patch BentoML's batching optimizer so that its learned and initial waits stay under max_wait_s."""
    optimizer = dispatcher.Optimizer
    if getattr(optimizer, "_flight_delay_capped", False):
        return
    original_init, original_refresh = optimizer.__init__, optimizer.trigger_refresh

    def init(self: Any, max_latency: float) -> None:
        original_init(self, max_latency)
        # initial per-item and fixed costs are fractions of max_latency: 0.67 s and 0.33 s at 10 s
        self.o_a, self.o_b = min(self.o_a, max_wait_s), min(self.o_b, max_wait_s)

    def refresh(self: Any) -> None:
        original_refresh(self)
        self.wait = min(self.wait, max_wait_s)

    optimizer.__init__ = init  # type: ignore[method-assign]  # the patch itself
    optimizer.trigger_refresh = refresh  # type: ignore[method-assign]  # the patch itself
    optimizer._flight_delay_capped = True  # type: ignore[attr-defined]  # applied once per process
