"""Champion and challenger on live traffic, on the real data (issue 28): what the live comparison says
against `make compare` on the same flights.

    .venv/bin/python -m loadtest.challenger_drill [--name challenger-drill-YYYY-MM-DD]

train.py fits the champion on January to June and the challenger on January to September, in a
store of the drill's own. Two replicas (`bentoml serve`, one worker each, slots 127.0.0.1:3101 and
3102) run both, FLIGHT_DELAY_MODEL and FLIGHT_DELAY_CHALLENGER, behind HAProxy
(deploy/local/haproxy.cfg), with Prometheus evaluating the project's rules (deploy/local/prometheus.yml).
October to December go through the balancer as predictions, then as outcomes. Read at one moment:
Prometheus's recorded comparison, each pod's GET /v1/monitoring, and tools/compare.py on the same
flights. Writes loadtest/results/challenger/NAME.json and .md (counts and scores, never the data).
Needs data/dataset_SCL.csv, haproxy and prometheus.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from loadtest.cluster import LB_URL, SLOTS, Balancer, Prometheus, port, wait_until
from loadtest.monitoring_drills import TOKEN, send
from loadtest.results import RESULTS as ALL_RESULTS
from loadtest.results import dated, machine, say, unused, write_json
from loadtest.servers import PROJECT_DIR, server, train
from models.config import DEFAULT_DATA_PATH
from models.data import load_flights
from models.features import Vocabulary

RESULTS = ALL_RESULTS / "challenger"
DRILL_SLOTS = (1, 2)
TRAINING = {"champion": (1, 6), "challenger": (1, 9)}  # months of 2017 each model is fitted on
TRAFFIC = (10, 12)
# The recorded series (deploy/k8s/alerts/flight-delay.rules.yml) the drill reads, by what they are.
RECORDED = {
    "verdict": "champion_challenger:flight_delay_comparison_verdict:6h",
    "outcomes": "champion_challenger:flight_delay_comparison_outcomes:increase6h",
    "brier difference": "champion_challenger:flight_delay_comparison_brier_difference:mean6h",
    "brier upper": "champion_challenger:flight_delay_comparison_brier_difference:upper6h",
    "brier lower": "champion_challenger:flight_delay_comparison_brier_difference:lower6h",
    "calibration difference": "champion_challenger:flight_delay_comparison_calibration_error_difference:ratio6h",
    "calibration upper": "champion_challenger:flight_delay_comparison_calibration_error_difference:upper6h",
    "calibration lower": "champion_challenger:flight_delay_comparison_calibration_error_difference:lower6h",
    "agreement": "champion_challenger:flight_delay_challenger_agreement:ratio6h",
}
VERDICT_CODES = {2: "better", 1: "non-inferior", 0: "undecided", -1: "worse"}


def months_csv(raw: Any, first: int, last: int, path: Path) -> Path:
    """The rows scheduled (Fecha-I, 2017-MM-...) in months first to last, as a dataset CSV."""
    month = raw["Fecha-I"].str[5:7].astype(int)
    raw[(month >= first) & (month <= last)].to_csv(path, index=False)
    return path


def stored_tag(home: Path) -> str:
    """The store's latest flight_delay model: the one train.py just saved."""
    return f"flight_delay:{(home / 'models' / 'flight_delay' / 'latest').read_text().strip()}"


def offline(home: Path, champion: str, challenger: str, data: Path, out: Path) -> dict[str, Any]:
    """`make compare` on the traffic's flights: its exit code, verdicts and report's figures."""
    command = [sys.executable, "tools/compare.py", "--baseline", champion, "--candidate", challenger,
               "--data", str(data), "--out", str(out)]  # fmt: skip
    result = subprocess.run(
        command, cwd=PROJECT_DIR, env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if result.returncode not in (0, 1):
        sys.exit(f"tools/compare.py failed: {result.stderr[-2000:]}")
    lines = result.stdout.splitlines()
    return {
        "exit_code": result.returncode,
        "decision": "accept" if result.returncode == 0 else "refuse",
        "live_verdict": next(line.split(": ")[-1] for line in lines if line.startswith("live verdict")),
        "refusals": [line.removeprefix("refuse: ") for line in lines if line.startswith("refuse: ")],
        "report": (out / "report.md").read_text(),
    }


def live(home: Path, champion: str, challenger: str, traffic: Any, directory: Path) -> dict[str, Any]:
    """October to December through the balancer to two replicas running both models; Prometheus's
    recorded comparison and each pod's GET /v1/monitoring."""
    env = {
        "FLIGHT_DELAY_MODEL": champion,
        "FLIGHT_DELAY_CHALLENGER": challenger,
        "FLIGHT_DELAY_WORKERS": "1",
        "FLIGHT_DELAY_OUTCOMES_TOKEN": TOKEN,
        "FLIGHT_DELAY_LOG_SAMPLE": "0",
    }
    with ExitStack() as stack:
        for slot in DRILL_SLOTS:
            # A home of its own per replica, as a pod has: BentoML keeps the workers' metric files under
            # it and clears them at start. Both hold the drill's store of models.
            replica = directory / f"r{slot}"
            replica.mkdir()
            (replica / "models").symlink_to(home / "models")
            log = directory / f"r{slot}.log"
            stack.enter_context(server("service", {**env, "BENTOML_HOME": str(replica)}, log, port=port(slot)))
        balancer = Balancer(directory)
        stack.callback(balancer.stop)
        for slot in set(SLOTS) - set(DRILL_SLOTS):
            balancer.remove(slot)
        wait_until(lambda: all(balancer.states()[f"r{s}"] == "UP" for s in DRILL_SLOTS), 15, "replicas in the balancer")
        prometheus = Prometheus(directory)
        stack.callback(prometheus.stop)
        up = 'up{job="flight-delay"} == 1'
        wait_until(lambda: len(prometheus.query(up, time.time())) == len(DRILL_SLOTS), 30, "both pods scraped", 0.2)
        http = stack.enter_context(httpx.Client(base_url=LB_URL, timeout=60))
        known = Vocabulary.from_metadata(http.get("/v1/model").json()["vocabularies"]).known(traffic)
        sent = traffic[known]  # the champion refuses (400) airlines and cities it never saw: not sent
        send(http, sent, outcomes=False, parallel=2)
        send(http, sent, outcomes=True, parallel=2)
        pods = [f"http://127.0.0.1:{port(slot)}" for slot in DRILL_SLOTS]
        time.sleep(2.5)  # each worker's challenger scores and exports once a second
        reports = {url: httpx.get(f"{url}/v1/monitoring", timeout=10).json() for url in pods}
        shared = sum(report["comparison"]["flights"] for report in reports.values())
        total = 'sum(flight_delay_comparison_outcomes_total{job="flight-delay"})'
        counted = lambda: next((v for _, v in prometheus.query(total, time.time())), 0) == shared  # noqa: E731
        wait_until(counted, 30, "every paired outcome in Prometheus", step=0.5)
        time.sleep(3)  # three rule evaluations after the last scrape
        at = time.time()
        recorded = {name: next((v for _, v in prometheus.query(series, at)), None) for name, series in RECORDED.items()}
        alerts = [labels for labels, _ in prometheus.query("ALERTS", at)]  # firing, or pending their for:
    return {
        "flights": {"traffic": len(traffic), "sent": len(sent), "unknown_to_the_champion": int((~known).sum())},
        "recorded": recorded,
        "recorded_verdict": VERDICT_CODES.get(int(recorded["verdict"])) if recorded["verdict"] is not None else None,
        "alerts": alerts,
        "pods": {url: {"challenger": r["challenger"], "comparison": r["comparison"]} for url, r in reports.items()},
    }


def markdown(outcome: dict[str, Any]) -> str:
    """The drill's page: the two judgements side by side, then each source."""
    run, rec = outcome["live"], outcome["live"]["recorded"]
    pods = list(run["pods"].values())
    lines = [
        f"# Champion and challenger on live traffic, {outcome['date']}",
        "",
        f"`{outcome['command']}` on {outcome['machine']}.",
        "",
        f"- champion `{outcome['champion']}`: train.py on January to June 2017; challenger `{outcome['challenger']}`: "
        "on January to September.",
        f"- October to December: {run['flights']['traffic']:,} flights; {run['flights']['sent']:,} the champion knows "
        "were sent through HAProxy to two replicas as predictions, then as outcomes.",
        "",
        "| judge | verdict | Brier difference (lower, upper) | calibration-error difference (lower, upper) |",
        "|---|---|---|---|",
        f"| Prometheus, recorded over both pods | **{run['recorded_verdict']}** | {fmt(rec['brier difference'])} "
        f"({fmt(rec['brier lower'])}, {fmt(rec['brier upper'])}) | {fmt(rec['calibration difference'])} "
        f"({fmt(rec['calibration lower'])}, {fmt(rec['calibration upper'])}) |",
        *(
            f"| pod {n}, GET /v1/monitoring ({pod['comparison']['flights']:,} flights) | "
            f"**{pod['comparison']['verdict']}** | {fmt(pod['comparison']['brier']['difference'])} "
            f"({fmt(pod['comparison']['brier']['lower'])}, {fmt(pod['comparison']['brier']['upper'])}) | "
            f"{fmt(pod['comparison']['calibration_error']['difference'])} "
            f"({fmt(pod['comparison']['calibration_error']['lower'])}, "
            f"{fmt(pod['comparison']['calibration_error']['upper'])}) |"
            for n, pod in enumerate(pods, 1)
        ),
        "| `make compare` on the same flights, Brier and calibration error alone | "
        f"**{outcome['offline']['live_verdict']}** | see its report below | |",
        "",
        f"`make compare` with every margin: **{outcome['offline']['decision']}** (exit code "
        f"{outcome['offline']['exit_code']}).",
        *[f"- refused on {refusal}" for refusal in outcome["offline"]["refusals"]],
        "",
        f"Agreement (same label): {rec['agreement']:.4f}; paired outcomes as Prometheus's increase() over its "
        f"window extrapolates them: {rec['outcomes']:,.0f}. Alerts at the read (state): "
        f"{', '.join(sorted({'{alertname} ({alertstate})'.format(**a) for a in run['alerts']})) or 'none'}.",
        "",
        "## `make compare`'s report",
        "",
        re.sub(r"^(#+) ", r"##\1 ", outcome["offline"]["report"], flags=re.MULTILINE),
    ]
    return "\n".join(lines) + "\n"


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", default=dated("challenger-drill"), help="results file name (default ...-TODAY)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    paths = [RESULTS / f"{args.name}.{suffix}" for suffix in ("json", "md")]
    unused(*paths, overwrite=args.overwrite)
    RESULTS.mkdir(parents=True, exist_ok=True)
    import pandas as pd

    raw = pd.read_csv(DEFAULT_DATA_PATH, dtype=str, keep_default_na=False)
    with tempfile.TemporaryDirectory(prefix="flight-delay-challenger-") as work:
        home, directory = Path(work), Path(work)
        tags = {}
        for role, (first, last) in TRAINING.items():
            say(f"training the {role} on months {first} to {last}")
            train(months_csv(raw, first, last, home / f"{role}.csv"), home)
            tags[role] = stored_tag(home)
        data = months_csv(raw, *TRAFFIC, home / "traffic.csv")
        traffic = load_flights(data)
        say("the live comparison")
        run = live(home, tags["champion"], tags["challenger"], traffic, directory)
        say("make compare on the same flights")
        judged = offline(home, tags["champion"], tags["challenger"], data, home / "compare")
    outcome = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "command": f".venv/bin/python -m loadtest.challenger_drill --name {args.name}",
        **tags,
        "live": run,
        "offline": judged,
    }
    write_json(paths[0], outcome)
    paths[1].write_text(markdown(outcome))
    print(json.dumps({"recorded": run["recorded_verdict"], "offline": judged["live_verdict"]}, indent=2))


if __name__ == "__main__":
    main()
