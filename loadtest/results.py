"""Where the drills' results go and how they are written: progress lines, names, guarded files, figures."""

import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def say(message: str) -> None:
    """A progress line."""
    print(f"[loadtest {time.strftime('%H:%M:%S')}] {message}", flush=True)


def dated(prefix: str) -> str:
    """prefix-YYYY-MM-DD with today's date: the default name of a results folder or file."""
    return f"{prefix}-{time.strftime('%Y-%m-%d')}"


def unused(*paths: Path, overwrite: bool = False) -> None:
    """Exit with one line if any of paths exists, unless overwrite: a rerun never replaces a cited result."""
    taken = [path.relative_to(RESULTS.parent.parent).as_posix() for path in paths if path.exists()]
    if taken and not overwrite:
        sys.exit(f"already there: {', '.join(taken)}; choose another --name, or --overwrite to replace")


def machine() -> str:
    """Cores, processor and system of this machine, for the report."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    system = platform.freedesktop_os_release().get("PRETTY_NAME", platform.system())
    return f"{os.cpu_count()} cores, {cpu}, {system}, shared"


def write_json(path: Path, outcome: Any) -> None:
    """The outcome as indented JSON, as every drill commits it."""
    path.write_text(json.dumps(outcome, indent=2) + "\n")


@contextmanager
def figure(path: Path, columns: int = 1, size: tuple[float, float] = (9, 4), dpi: int = 100) -> Iterator[Any]:
    """A matplotlib figure of `columns` axes side by side, drawn off screen and saved as the PNG `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn, axes = plt.subplots(1, columns, figsize=size)
    try:
        yield drawn, axes
        drawn.tight_layout()
        drawn.savefig(path, dpi=dpi)
    finally:
        plt.close(drawn)
