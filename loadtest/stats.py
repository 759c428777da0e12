"""The drills' one percentile rule (an HDR histogram), and the CPU and memory of a process tree (psutil)."""

from collections.abc import Iterable

import psutil
from hdrh.histogram import HdrHistogram

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99_9": 99.9}
HIGHEST_US = 3_600_000_000  # an hour: any latency a run can see


def histogram() -> HdrHistogram:
    """Microseconds from 1 to an hour, 3 significant digits: exact percentiles without keeping every sample."""
    return HdrHistogram(1, HIGHEST_US, 3)


def percentiles(h: HdrHistogram) -> dict[str, float]:
    """p50 to p99.9 and max of a histogram of microseconds, in milliseconds."""
    values = {name: h.get_value_at_percentile(p) / 1000 for name, p in PERCENTILES.items()}
    return {**values, "max": h.get_max_value() / 1000, "mean": round(h.get_mean_value() / 1000, 3)}


def percentile(milliseconds: Iterable[float], share: float, digits: int = 1) -> float | None:
    """The value at `share` (0.5 the median) of millisecond values, by the histogram's rule; None for none."""
    h = histogram()
    for value in milliseconds:
        h.record_value(max(1, round(value * 1000)))
    return round(h.get_value_at_percentile(share * 100) / 1000, digits) if h.get_total_count() else None


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user and system) a process and all its descendants alive now have used so far."""
    total = 0.0
    try:
        processes = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return total
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:  # ended meanwhile
            continue
        total += times.user + times.system
    return total


def tree_memory_mib(root: int) -> float:
    """The proportional set size (PSS: each shared page split among its sharers) of a process and all
    its descendants alive now, MiB: what they hold together, shared pages counted once."""
    total = 0
    try:
        processes = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for process in processes:
        try:
            total += process.memory_full_info().pss
        except psutil.NoSuchProcess:  # ended meanwhile
            continue
    return round(total / 2**20, 1)
