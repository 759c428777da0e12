"""Retraining drills on the real data: a carrier's rebrand, from new data to the rolled-out model (issue 20).

    .venv/bin/python -m loadtest.retraining_drill rebrand [--work /tmp/flight-delay-rebrand] [--overwrite]

`rebrand` renames half of Sky Airline's flights from 1 July on to NEW_AIRLINE (a made-up name, so no
real carrier's figures are implied), in a copy of data/dataset_SCL.csv under --work, never in the
repository. It trains the served model on January to June and the candidate on January to August
with train.py, both into one model store of its own under --work (so train.py prints the candidate's
airlines new and gone against the served model), and compares them with tools/compare.py on
September to December. It then builds an image of each model as container/build.sh does (LOCAL_BASE,
from a clean `git archive HEAD`, tags flight-delay-rebrand:old and :new) and runs loadtest.cluster's
model rollout, old image replaced by the new one, under load of known airlines plus a trickle naming
the new one: every status through the balancer over time, and the same request sent to each pod
directly, whose image is known. Steps already done in --work are reused (a re-run after a failure;
delete --work to start over, as after a new commit). Writes loadtest/results/retraining/rebrand.json,
.md and .png, and compare.py's report and picture in compare/ beside them. Needs
data/dataset_SCL.csv, a Docker engine (DOCKER_HOST) with the local base image, haproxy, prometheus.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadtest.cluster import DOCKER, LB_URL, Replicas, port, rollout
from loadtest.probes import post, ready
from loadtest.results import RESULTS as ALL_RESULTS
from loadtest.results import figure, machine, say, unused, write_json
from loadtest.servers import PROJECT_DIR
from models.config import DEFAULT_DATA_PATH, SEED

RESULTS = ALL_RESULTS / "retraining"
CARRIER = "Sky Airline"
# Made up on purpose: "Sky Airline Peru" is a real airline, and a real name would lend this drill's
# figures to it. This one says what it is wherever it shows up (reports, the /v1/model card, 400s).
NEW_AIRLINE = "Sky Rebrand Drill"
SHARE = 0.5  # half: the renamed flights are many (about 600 a month) and the old name stays in use
SINCE = "2017-07-01"
IMAGES = {"old": "flight-delay-rebrand:old", "new": "flight-delay-rebrand:new"}
# One flight of the new airline, as a client of the rebranded carrier would send it.
NEW_AIRLINE_REQUEST: dict[str, Any] = {
    "flights": [{"OPERA": NEW_AIRLINE, "TIPOVUELO": "I", "MES": 9, "Fecha-I": "2017-09-21 19:40", "SIGLADES": "Lima"}]
}
TRICKLE_S = 0.1  # a request naming the new airline through the balancer every 0.1 s
PROBE_S = 1.0  # and one to each running pod directly every second


def rebrand(frame: pd.DataFrame, carrier: str, new_name: str, share: float, since: str, seed: int) -> pd.DataFrame:
    """A copy of the dataset's rows where `share` of `carrier`'s flights scheduled on or after `since`
    (a random choice, seeded) fly as `new_name`; its flight codes (Emp-I, Emp-O) are kept, as a rebrand
    keeps the operator's codes at first."""
    renamed = frame.copy()
    eligible = np.flatnonzero(((frame["OPERA"] == carrier) & (frame["Fecha-I"] >= since)).to_numpy())
    chosen = np.random.default_rng(seed).choice(eligible, size=round(len(eligible) * share), replace=False)
    renamed.iloc[chosen, renamed.columns.get_loc("OPERA")] = new_name
    return renamed


def months(frame: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    """The rows whose scheduled departure (Fecha-I, 2017-MM-...) falls in months first to last."""
    month = frame["Fecha-I"].str[5:7].astype(int)
    return frame[(month >= first) & (month <= last)]


def flight_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Flights of the carrier and of the new name in a dataset-format frame: counts only, for the report."""
    return {CARRIER: int((frame["OPERA"] == CARRIER).sum()), NEW_AIRLINE: int((frame["OPERA"] == NEW_AIRLINE).sum())}


def vocabulary_changes(printed: str) -> list[str]:
    """train.py's lines saying which airlines and destinations are new and gone against the store's latest."""
    return [line.strip() for line in printed.splitlines() if re.match(r"\s*(airlines|destinations): \d+ \(", line)]


def saved_tag(printed: str) -> str:
    """The tag train.py prints last ("saved model flight_delay:...")."""
    found = re.findall(r"saved model (\S+)", printed)
    if not found:
        raise ValueError("train.py printed no saved model")
    return found[-1]


def tally(records: Iterable[dict[str, Any]], key: str) -> dict[str, dict[str, int]]:
    """Statuses counted per value of `key` (a pod, a model, a phase): {value: {status: n}}."""
    counts: dict[str, Counter[str]] = {}
    for record in records:
        counts.setdefault(str(record[key]), Counter())[str(record["status"])] += 1
    return {value: dict(sorted(statuses.items())) for value, statuses in sorted(counts.items())}


def phase(t_s: float, events: list[dict[str, Any]]) -> str:
    """Which part of the rollout time t_s falls in: before the first new pod is in the balancer, while
    old and new pods both are, or after the last old pod is out."""
    first_new = next((e["t_s"] for e in events if "in the balancer" in e["event"]), None)
    outs = [e["t_s"] for e in events if "out of the balancer" in e["event"]]
    if first_new is None or t_s < first_new:
        return "1 old pods only"
    if len(outs) < 2 or t_s < outs[-1]:
        return "2 old and new pods"
    return "3 new pods only"


def over_time(records: list[dict[str, Any]], bucket_s: float = 2.0) -> list[dict[str, Any]]:
    """Statuses of the trickle through the balancer per time bucket: [{t_s, status: n...}], in order."""
    buckets: dict[float, Counter[str]] = {}
    for record in records:
        start = float(np.floor(record["t_s"] / bucket_s) * bucket_s)
        buckets.setdefault(start, Counter())[str(record["status"])] += 1
    return [{"t_s": start, **dict(sorted(counts.items()))} for start, counts in sorted(buckets.items())]


def train(data: Path, home: Path, log: Path) -> dict[str, Any]:
    """train.py on data into store `home`; the tag and its vocabulary changes, its output kept in log."""
    done = subprocess.run(
        [sys.executable, "train.py", "--data", str(data)],
        cwd=PROJECT_DIR,
        env={**os.environ, "BENTOML_HOME": str(home)},
        check=True,
        capture_output=True,
        text=True,
    )
    log.write_text(done.stdout)
    return {"tag": saved_tag(done.stdout), "vocabulary_changes": vocabulary_changes(done.stdout)}


def build_image(home: Path, source: Path, image: str) -> str:
    """container/build.sh's LOCAL_BASE steps on a clean export of HEAD, model from store `home`, tagged image.

    The script itself would also tag flight-delay:latest; these images get names of their own."""
    base = "flight-delay-base:bookworm-slim"
    env = {**os.environ, "BENTOML_HOME": str(home), "DOCKER_BUILDKIT": "0", "PATH": f"/usr/bin:{os.environ['PATH']}"}
    bentofile = source / "build" / "bentofile.local-base.yaml"
    bentofile.parent.mkdir(exist_ok=True)
    text = (source / "bentofile.yaml").read_text().replace("docker:", f'docker:\n  base_image: "{base}"', 1)
    bentofile.write_text("".join(line for line in text.splitlines(True) if "python_version" not in line))
    built = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", str(bentofile), "--output", "tag", "."],
        cwd=source, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    subprocess.run(
        [sys.executable, "-m", "bentoml", "containerize", tag, "--opt", "network=host", "-t", image],
        cwd=source, env=env, check=True, capture_output=True,
    )  # fmt: skip
    return tag


def image_exists(image: str) -> bool:
    """Whether the Docker engine has the image (a reused --work may outlive it)."""
    return subprocess.run([*DOCKER, "image", "inspect", image], capture_output=True).returncode == 0


def prepare(work: Path) -> dict[str, Any]:
    """Renamed data, both models, the comparison and both images, each reused from `work` if there."""
    state_path = work / "state.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}

    def keep() -> None:
        state_path.write_text(json.dumps(state, indent=2) + "\n")

    data, home = work / "data", work / "bentoml"
    if "data" not in state:
        say(f"renaming {SHARE:.0%} of {CARRIER}'s flights from {SINCE} to {NEW_AIRLINE!r}")
        raw = pd.read_csv(DEFAULT_DATA_PATH, low_memory=False)
        renamed = rebrand(raw, CARRIER, NEW_AIRLINE, SHARE, SINCE, SEED)
        data.mkdir(parents=True, exist_ok=True)
        parts = {"jan-jun": months(renamed, 1, 6), "jan-aug": months(renamed, 1, 8), "sep-dec": months(renamed, 9, 12)}
        for name, part in parts.items():
            part.to_csv(data / f"{name}.csv", index=False)
        state["data"] = {name: {"flights": len(part), **flight_counts(part)} for name, part in parts.items()}
        keep()
    source = work / "source"
    if not source.exists():
        source.mkdir()
        archive = subprocess.run(["git", "-C", str(PROJECT_DIR), "archive", "HEAD"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
        state["source_commit"] = subprocess.run(
            ["git", "-C", str(PROJECT_DIR), "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()
        keep()
    # Old model, its image, then the candidate: `bentoml build` packs the store's latest model.
    for role, part in (("old", "jan-jun"), ("new", "jan-aug")):
        if role not in state:
            say(f"training the {role} model on {part}")
            state[role] = train(data / f"{part}.csv", home, work / f"train-{role}.txt")
            keep()
        if "bento" not in state[role] or not image_exists(IMAGES[role]):
            say(f"building {IMAGES[role]} (model {state[role]['tag']})")
            state[role]["bento"] = build_image(home, source, IMAGES[role])
            state[role]["image"] = IMAGES[role]
            keep()
    if "compare" not in state:
        say("tools/compare.py, baseline the old model, candidate the new, on sep-dec")
        out = work / "compare"
        old, new = state["old"]["tag"], state["new"]["tag"]
        command = [sys.executable, "tools/compare.py", "--baseline", old, "--candidate", new,
                   "--data", str(data / "sep-dec.csv"), "--out", str(out)]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(
            command, cwd=PROJECT_DIR, env={**os.environ, "BENTOML_HOME": str(home)}, capture_output=True, text=True
        )
        state["compare"] = {
            "command": " ".join(["BENTOML_HOME=" + str(home), ".venv/bin/python", *command[1:]]),
            "exit_code": done.returncode,
            "seconds": round(time.monotonic() - started, 1),
            "stdout": done.stdout,
            "stderr_tail": done.stderr.strip().splitlines()[-3:],
            "out": str(out),
        }
        keep()
    return state


def new_airline_rollout(connections: int) -> dict[str, Any]:
    """loadtest.cluster's model rollout, old image to new, under known-airline load plus the new-airline trickle."""
    trickle: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []

    def alongside(replicas: Replicas, start: float) -> Callable[[], None]:
        """The trickle through the balancer and the probes to each pod, in threads until the returned stop."""
        stop = threading.Event()

        def through_balancer() -> None:
            while not stop.is_set():
                status, _ = post(LB_URL, NEW_AIRLINE_REQUEST)
                trickle.append({"t_s": round(time.monotonic() - start, 2), "status": status})
                stop.wait(TRICKLE_S)

        def to_each_pod() -> None:
            while not stop.is_set():
                for slot in sorted(replicas.running):
                    url = f"http://127.0.0.1:{port(slot)}"
                    if not ready(url):  # starting or shutting down: the balancer sends it nothing either
                        continue
                    status, _ = post(url, NEW_AIRLINE_REQUEST)
                    model = "old" if slot in (1, 2) else "new"  # r1, r2 run the old image; r3, r4 the new
                    probes.append({"t_s": round(time.monotonic() - start, 2), "pod": f"r{slot} ({model} image)",
                                   "model": model, "status": status})  # fmt: skip
                stop.wait(PROBE_S)

        threads = [threading.Thread(target=f, daemon=True) for f in (through_balancer, to_each_pod)]
        for thread in threads:
            thread.start()

        def stopped() -> None:
            stop.set()
            for thread in threads:
                thread.join()

        return stopped

    result = rollout(IMAGES["old"], IMAGES["new"], connections, alongside)
    for record in trickle:
        record["phase"] = phase(record["t_s"], result["events"])
    # 400s of an unknown airline counted by each pod (flight_delay_unknown_values_total{model, input}):
    # the trickle's through the balancer plus the direct probes.
    refused = [{"instance": labels.get("instance"), "model": labels.get("model"), "refused": int(value)}
               for labels, value in result["refused"]]  # fmt: skip
    return {
        "connections": connections,
        "seconds": result["seconds"],
        "known_airlines": {key: result[key] for key in ("requests", "outcomes", "failed", "answers_by_model")},
        "new_airline_through_balancer": {
            "requests": len(trickle),
            "statuses": dict(Counter(r["status"] for r in trickle)),
            "by_phase": tally(trickle, "phase"),
            "over_time": over_time(trickle),
        },
        "new_airline_to_each_pod": {
            "requests": len(probes),
            "by_pod": tally(probes, "pod"),
            "by_model": tally(probes, "model"),
        },
        "refused_as_counted_by_pods": refused_split(refused, tally(probes, "pod")),
        "model_after": result["model_after"],
        "events": result["events"],
        "trickle": trickle,
    }


def refused_split(refused: list[dict[str, Any]], direct: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Each pod's count of refused unknown airlines, split into the direct requests' 400s (from `direct`,
    keyed "rN (...)") and the rest, which came through the balancer."""
    split = []
    for pod in refused:
        slot = int(str(pod["instance"]).rsplit(":", 1)[1]) - 3100
        sent = sum(c.get("400", 0) for name, c in direct.items() if name.split()[0] == f"r{slot}")
        split.append({**pod, "pod": f"r{slot}", "direct": sent, "through_balancer": pod["refused"] - sent})
    return split


def compare_figures(stdout: str) -> list[str]:
    """compare.py's stdout lines, blank ones dropped: its verdict and figures as it prints them."""
    return [line.rstrip() for line in stdout.splitlines() if line.strip()]


def markdown(outcome: dict[str, Any]) -> str:
    """The drill's report: the data, the models, the comparison's verdict and the rollout's counts."""
    s, r = outcome["setup"], outcome["rollout"]
    verdict = {0: "accepted", 1: "refused", 2: "could not judge (bad input)"}.get(s["compare"]["exit_code"], "?")
    lines = [
        "# Retraining drill: a carrier's rebrand, from new data to the rolled-out model",
        "",
        f"`{outcome['command']}`, {outcome['date']}, {outcome['machine']}; source commit {s['source_commit']}.",
        "",
        f"{SHARE:.0%} of {CARRIER}'s flights scheduled from {SINCE} were renamed {NEW_AIRLINE!r} (a made-up name)"
        " in a copy of data/dataset_SCL.csv outside the repository (random choice, numpy seed"
        f" {SEED}; flight codes kept).",
        "",
        "| data | flights | " + f"{CARRIER} | {NEW_AIRLINE} |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {d['flights']:,} | {d[CARRIER]:,} | {d[NEW_AIRLINE]:,} |" for name, d in s["data"].items()]
    lines += [
        "",
        "## Models",
        "",
        f"- served (old): `{s['old']['tag']}`, train.py on jan-jun; image `{s['old']['image']}`",
        f"- candidate (new): `{s['new']['tag']}`, train.py on jan-aug; image `{s['new']['image']}`",
        "- what train.py printed for the candidate against the store's latest (the old model):",
        "",
        "```",
        *s["new"]["vocabulary_changes"],
        "```",
        "",
        "## Compare on sep-dec",
        "",
        f"`{s['compare']['command']}`",
        "",
        f"Exit code {s['compare']['exit_code']}: **{verdict}**, in {s['compare']['seconds']} s. "
        "Full report: [compare/report.md](compare/report.md).",
        "",
        "```",
        *compare_figures(s["compare"]["stdout"]),
        "```",
        "",
        "## Rollout: old image replaced by the new one under load",
        "",
        *(
            [
                "compare refused the candidate: in operation the served model stays. It is rolled out here all the"
                " same, as a drill of the mechanics (what clients of the new airline and of the others see).",
                "",
            ]
            if s["compare"]["exit_code"] != 0
            else []
        ),
        f"loadtest.cluster's model rollout (2 replicas, maxSurge 1, maxUnavailable 0) in {r['seconds']} s, with"
        f" {r['connections']} connections posting EXAMPLE_REQUEST (Grupo LATAM and {CARRIER}, known to both models),"
        f" a request naming {NEW_AIRLINE!r} through the balancer every {TRICKLE_S} s, and the same request to each"
        f" ready pod directly every {PROBE_S:.0f} s (a pod not answering /readyz is skipped, as the balancer"
        f" skips it). Model after: `{r['model_after']}`.",
        "",
        f"- known airlines: {r['known_airlines']['requests']:,} requests, **{r['known_airlines']['failed']} failed**;"
        f" outcomes {json.dumps(r['known_airlines']['outcomes'])}; answers by model"
        f" {json.dumps(r['known_airlines']['answers_by_model'])}",
        f"- new airline through the balancer: {r['new_airline_through_balancer']['requests']:,} requests,"
        f" statuses {json.dumps(r['new_airline_through_balancer']['statuses'])}",
        "",
        "| new airline, through the balancer | statuses |",
        "|---|---|",
    ]
    lines += [f"| {name} | {json.dumps(c)} |" for name, c in r["new_airline_through_balancer"]["by_phase"].items()]
    lines += ["", "| new airline, to each pod directly | statuses |", "|---|---|"]
    lines += [f"| {name} | {json.dumps(c)} |" for name, c in r["new_airline_to_each_pod"]["by_pod"].items()]
    lines += [
        "",
        "Refused as an unknown airline, as each pod counted it (flight_delay_unknown_values_total, the last",
        "value Prometheus scraped):",
        "",
    ]
    lines += [
        f"- {p['pod']}, {p['instance']} (model {p['model']}): {p['refused']} ({p['direct']} direct, so"
        f" {p['through_balancer']} through the balancer)"
        for p in r["refused_as_counted_by_pods"]
    ]
    if not any(p["model"] == r["model_after"] for p in r["refused_as_counted_by_pods"]):
        lines += ["- the new pods: none (no series: their model knows the airline)"]
    counted = sum(p["through_balancer"] for p in r["refused_as_counted_by_pods"])
    sent = r["new_airline_through_balancer"]["statuses"].get("400", 0)
    lines += [
        "",
        f"The old pods counted {counted} of the {sent} 400s the trickle got through the balancer (Prometheus"
        " scrapes each second, so a pod's last requests before it exits can miss its last scrape).",
    ]
    lines += ["", "| t (s) | event |", "|---:|---|"] + [f"| {e['t_s']} | {e['event']} |" for e in r["events"]]
    lines += ["", "![statuses over time](rebrand.png)"]
    return "\n".join(lines) + "\n"


def plot(rollout_result: dict[str, Any], path: Path) -> None:
    """The new airline's statuses through the balancer per 2 s, with the rollout's events."""
    buckets = rollout_result["new_airline_through_balancer"]["over_time"]
    statuses = sorted({k for b in buckets for k in b if k != "t_s"})
    bottom = np.zeros(len(buckets))
    colours = {"200": "tab:green", "400": "tab:red"}
    with figure(path) as (_, axes):
        for status in statuses:
            heights = np.array([b.get(status, 0) for b in buckets], dtype=float)
            axes.bar([b["t_s"] for b in buckets], heights, width=2, align="edge", bottom=bottom, label=status,
                     color=colours.get(status, "tab:grey"))  # fmt: skip
            bottom += heights
        marks: dict[float, list[str]] = {}  # the balancer's changes, those at one moment on one line
        for event in rollout_result["events"]:
            pod, text = event["event"].split()[0], event["event"]
            if "out of the balancer" in text or "in the balancer" in text:
                marks.setdefault(event["t_s"], []).append(f"{pod} {'out' if 'out of' in text else 'in'}")
        for t_s, labels in marks.items():
            axes.axvline(t_s, color="black", linestyle=":", linewidth=0.8)
            axes.annotate(", ".join(labels), (t_s + 0.3, bottom.max() * 1.02), fontsize="small")
        title = f"{NEW_AIRLINE!r} through the balancer during the rollout: 400 old pod, 200 new pod"
        axes.set(xlabel="seconds", ylabel="requests per 2 s", title=title)
        axes.legend(title="status", fontsize="small")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("drill", choices=["rebrand"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/flight-delay-rebrand"), help="data, store, images")
    parser.add_argument("--connections", type=int, default=32, help="clients of the known-airline load")
    parser.add_argument("--overwrite", action="store_true", help="replace the drill's results if they exist")
    args = parser.parse_args()
    paths = [RESULTS / f"{args.drill}.{suffix}" for suffix in ("json", "md", "png")]
    unused(*paths, overwrite=args.overwrite)
    RESULTS.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    setup = prepare(args.work)
    out = Path(setup["compare"]["out"])
    (RESULTS / "compare").mkdir(exist_ok=True)
    for name in ("report.md", "reliability.png"):  # as compare.py wrote them: the report links the picture
        if (out / name).exists():
            shutil.copy(out / name, RESULTS / "compare" / name)
    say(f"compare exit code {setup['compare']['exit_code']}; rolling out {IMAGES['old']} -> {IMAGES['new']}")
    result = new_airline_rollout(args.connections)
    outcome = {"drill": args.drill, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
               "command": f".venv/bin/python -m loadtest.retraining_drill {args.drill}", "setup": setup,
               "rollout": result}  # fmt: skip
    write_json(paths[0], outcome)
    paths[1].write_text(markdown(outcome))
    plot(result, paths[2])
    print(paths[1].read_text())


if __name__ == "__main__":
    main()
