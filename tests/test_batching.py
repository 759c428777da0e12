"""serving/batching.py: BentoML's batching optimizer never holds a request back longer than the cap."""

from bentoml._internal.marshal.dispatcher import Optimizer

from serving.batching import MAX_WAIT_S, cap_learned_wait


def test_cap_learned_wait_bounds_initial_estimates() -> None:
    cap_learned_wait()
    optimizer = Optimizer(max_latency=10.0)  # uncapped: 0.67 s per item and 0.33 s fixed
    assert optimizer.o_a <= MAX_WAIT_S
    assert optimizer.o_b <= MAX_WAIT_S


def test_cap_learned_wait_bounds_wait_learned_under_load() -> None:
    cap_learned_wait()
    optimizer = Optimizer(max_latency=10.0)
    for _ in range(60):  # batches that waited 300 ms, as under a burst
        optimizer.log_outbound(n=50, wait=0.3, duration=0.002)
    optimizer.trigger_refresh()
    assert 0 <= optimizer.wait <= MAX_WAIT_S


def test_cap_learned_wait_is_applied_once() -> None:
    cap_learned_wait()
    refresh = Optimizer.trigger_refresh
    cap_learned_wait()
    assert Optimizer.trigger_refresh is refresh
