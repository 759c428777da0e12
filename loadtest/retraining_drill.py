"""Retraining drill on the real data: a carrier's rebrand, from new data to the rolled-out model (issue 20).

    .venv/bin/python -m loadtest.retraining_drill rebrand [--work /tmp/flight-delay-rebrand] [--overwrite]

In a copy of data/dataset_SCL.csv under --work, half of Sky Airline's flights from 1 July fly as NEW_AIRLINE.
train.py fits the served model on January to June and the candidate on January to August in one store (so it
prints the candidate's new airlines); tools/compare.py judges them on September to December; each gets an image
as container/build.sh builds one. loadtest.cluster's rollout then replaces the old image by the new under load,
with a request naming the new airline through the balancer and to each pod. Steps done in --work are reused
(delete it to start over). Writes results/retraining/rebrand.json, .md, .png and compare.py's report in compare/.
Needs the data, a Docker engine (DOCKER_HOST) with the local base image, haproxy and prometheus.
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
from loadtest.servers import PROJECT_DIR, train
from models.config import DEFAULT_DATA_PATH, SEED

RESULTS = ALL_RESULTS / "retraining"
CARRIER = "Sky Airline"
# Made up on purpose: "Sky Airline Peru" is a real airline, and a real name would lend this drill's
# figures to it. This one says what it is wherever it shows up (reports, the /v1/model card, 400s).
NEW_AIRLINE = "Sky Rebrand Drill"
SHARE = 0.5  # half: the renamed flights are many (about 600 a month) and the old name stays in use
SINCE = "2017-07-01"
PARTS = {"jan-jun": (1, 6), "jan-aug": (1, 8), "sep-dec": (9, 12)}
IMAGES = {"old": "flight-delay-rebrand:old", "new": "flight-delay-rebrand:new"}
# One flight of the new airline, as a client of the rebranded carrier would send it.
NEW_AIRLINE_REQUEST: dict[str, Any] = {
    "flights": [{"OPERA": NEW_AIRLINE, "TIPOVUELO": "I", "MES": 9, "Fecha-I": "2017-09-21 19:40", "SIGLADES": "Lima"}]
}
TRICKLE_S = 0.1  # a request naming the new airline through the balancer every 0.1 s
PROBE_S = 1.0  # and one to each running pod directly every second
VERDICTS = {0: "accepted", 1: "refused", 2: "could not judge (bad input)"}  # compare.py's exit codes


def rebrand(frame: pd.DataFrame, carrier: str, new_name: str, share: float, since: str, seed: int) -> pd.DataFrame:
    """A copy where a seeded random `share` of `carrier`'s flights from `since` fly as `new_name`, flight
    codes (Emp-I, Emp-O) kept, as a rebrand keeps the operator's codes at first."""
    renamed = frame.copy()
    eligible = np.flatnonzero(((frame["OPERA"] == carrier) & (frame["Fecha-I"] >= since)).to_numpy())
    chosen = np.random.default_rng(seed).choice(eligible, size=round(len(eligible) * share), replace=False)
    renamed.iloc[chosen, renamed.columns.get_loc("OPERA")] = new_name
    return renamed


def months(frame: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    """The rows scheduled (Fecha-I, 2017-MM-...) in months first to last."""
    month = frame["Fecha-I"].str[5:7].astype(int)
    return frame[(month >= first) & (month <= last)]


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
    """The part of the rollout t_s falls in: before the first new pod is in the balancer, while old and
    new pods both are, or after the last old pod is out."""
    first_new = next((e["t_s"] for e in events if "in the balancer" in e["event"]), None)
    outs = [e["t_s"] for e in events if "out of the balancer" in e["event"]]
    if first_new is None or t_s < first_new:
        return "1 old pods only"
    return "2 old and new pods" if len(outs) < 2 or t_s < outs[-1] else "3 new pods only"


def over_time(records: list[dict[str, Any]], bucket_s: float = 2.0) -> list[dict[str, Any]]:
    """Statuses per time bucket, in order: [{t_s, status: n...}]."""
    buckets: dict[float, Counter[str]] = {}
    for record in records:
        buckets.setdefault(float(np.floor(record["t_s"] / bucket_s) * bucket_s), Counter())[str(record["status"])] += 1
    return [{"t_s": start, **dict(sorted(counts.items()))} for start, counts in sorted(buckets.items())]


def build_image(home: Path, source: Path, image: str) -> str:
    """container/build.sh's LOCAL_BASE steps on the clean `source`, model from store `home`, tagged `image`
    (the script would also tag flight-delay:latest); the bento's tag."""
    env = {**os.environ, "BENTOML_HOME": str(home), "DOCKER_BUILDKIT": "0", "PATH": f"/usr/bin:{os.environ['PATH']}"}
    bentofile = source / "build" / "bentofile.local-base.yaml"
    bentofile.parent.mkdir(exist_ok=True)
    base = 'docker:\n  base_image: "flight-delay-base:bookworm-slim"'
    text = (source / "bentofile.yaml").read_text().replace("docker:", base, 1)
    bentofile.write_text("".join(line for line in text.splitlines(True) if "python_version" not in line))
    bentoml = [sys.executable, "-m", "bentoml"]
    built = subprocess.run([*bentoml, "build", "-f", str(bentofile), "--output", "tag", "."],
                           cwd=source, env=env, check=True, capture_output=True, text=True)  # fmt: skip
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    subprocess.run([*bentoml, "containerize", tag, "--opt", "network=host", "-t", image],
                   cwd=source, env=env, check=True, capture_output=True)  # fmt: skip
    return tag


def image_missing(image: str) -> bool:
    """Whether the Docker engine lacks the image (a reused --work may outlive it)."""
    return subprocess.run([*DOCKER, "image", "inspect", image], capture_output=True).returncode != 0


def prepare(work: Path) -> dict[str, Any]:
    """Renamed data, both models, their images and the comparison, each step reused from `work` if done."""
    saved, data, home, source = work / "state.json", work / "data", work / "bentoml", work / "source"
    state: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    if "data" not in state:
        say(f"renaming {SHARE:.0%} of {CARRIER}'s flights from {SINCE} to {NEW_AIRLINE!r}")
        renamed = rebrand(pd.read_csv(DEFAULT_DATA_PATH, low_memory=False), CARRIER, NEW_AIRLINE, SHARE, SINCE, SEED)
        data.mkdir(parents=True, exist_ok=True)
        state["data"] = {}
        for name, (first, last) in PARTS.items():
            part = months(renamed, first, last)
            part.to_csv(data / f"{name}.csv", index=False)
            airlines = {airline: int((part["OPERA"] == airline).sum()) for airline in (CARRIER, NEW_AIRLINE)}
            state["data"][name] = {"flights": len(part), **airlines}
        write_json(saved, state)
    if not source.exists():
        source.mkdir()
        git = ["git", "-C", str(PROJECT_DIR)]
        archive = subprocess.run([*git, "archive", "HEAD"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True)
        state["source_commit"] = commit.stdout.strip()
        write_json(saved, state)
    # Old model, its image, then the candidate: `bentoml build` packs the store's latest model.
    for role, part in (("old", "jan-jun"), ("new", "jan-aug")):
        if role not in state:
            say(f"training the {role} model on {part}")
            printed = train(data / f"{part}.csv", home)
            (work / f"train-{role}.txt").write_text(printed)
            state[role] = {"tag": saved_tag(printed), "vocabulary_changes": vocabulary_changes(printed)}
            write_json(saved, state)
        if "bento" not in state[role] or image_missing(IMAGES[role]):
            say(f"building {IMAGES[role]} (model {state[role]['tag']})")
            state[role] |= {"bento": build_image(home, source, IMAGES[role]), "image": IMAGES[role]}
            write_json(saved, state)
    if "compare" not in state:
        say("tools/compare.py, baseline the old model, candidate the new, on sep-dec")
        command = ["tools/compare.py", "--baseline", state["old"]["tag"], "--candidate", state["new"]["tag"],
                   "--data", str(data / "sep-dec.csv"), "--out", str(work / "compare")]  # fmt: skip
        started = time.monotonic()
        env = {**os.environ, "BENTOML_HOME": str(home)}
        done = subprocess.run([sys.executable, *command], cwd=PROJECT_DIR, env=env, capture_output=True, text=True)
        state["compare"] = {
            "command": " ".join([f"BENTOML_HOME={home}", ".venv/bin/python", *command]),
            "exit_code": done.returncode,
            "seconds": round(time.monotonic() - started, 1),
            "stdout": done.stdout,
            "stderr_tail": done.stderr.strip().splitlines()[-3:],
            "out": str(work / "compare"),
        }
        write_json(saved, state)
    return state


def repeat(every_s: float, action: Callable[[], None], stop: threading.Event) -> threading.Thread:
    """A started daemon thread calling action every `every_s` seconds until stop is set."""

    def loop() -> None:
        while not stop.is_set():
            action()
            stop.wait(every_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def new_airline_rollout(connections: int) -> dict[str, Any]:
    """loadtest.cluster's rollout, old image to new, under known-airline load, with the new airline's
    request through the balancer and to each ready pod directly, whose image is known."""
    trickle: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []

    def alongside(replicas: Replicas, start: float) -> Callable[[], None]:
        stop = threading.Event()

        def through_balancer() -> None:
            status, _ = post(LB_URL, NEW_AIRLINE_REQUEST)
            trickle.append({"t_s": round(time.monotonic() - start, 2), "status": status})

        def to_each_pod() -> None:
            for slot in sorted(replicas.running):
                url = f"http://127.0.0.1:{port(slot)}"
                if ready(url):  # not starting or shutting down, or the balancer would skip it too
                    status, _ = post(url, NEW_AIRLINE_REQUEST)
                    model = "old" if slot in (1, 2) else "new"  # r1, r2 run the old image; r3, r4 the new
                    probes.append({"t_s": round(time.monotonic() - start, 2), "pod": f"r{slot} ({model} image)",
                                   "model": model, "status": status})  # fmt: skip

        threads = [repeat(TRICKLE_S, through_balancer, stop), repeat(PROBE_S, to_each_pod, stop)]

        def stopped() -> None:
            stop.set()
            for thread in threads:
                thread.join()

        return stopped

    result = rollout(IMAGES["old"], IMAGES["new"], connections, alongside)
    for record in trickle:
        record["phase"] = phase(record["t_s"], result["events"])
    # each pod's flight_delay_unknown_values_total{model, input}: the trickle's 400s plus the direct ones
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
    """Each pod's count of refused unknown airlines split into the direct requests' 400s (`direct`, keyed
    "rN (...)") and the rest, which came through the balancer."""
    split = []
    for pod in refused:
        slot = int(str(pod["instance"]).rsplit(":", 1)[1]) - 3100
        sent = sum(c.get("400", 0) for name, c in direct.items() if name.split()[0] == f"r{slot}")
        split.append({**pod, "pod": f"r{slot}", "direct": sent, "through_balancer": pod["refused"] - sent})
    return split


def markdown(outcome: dict[str, Any]) -> str:
    """The drill's report: the data, the models, the comparison's verdict and the rollout's counts."""
    s, r = outcome["setup"], outcome["rollout"]
    known, trickle, pods = r["known_airlines"], r["new_airline_through_balancer"], r["refused_as_counted_by_pods"]
    c, data = s["compare"], "\n".join(f"| {k} | {d['flights']:,} | {d[CARRIER]:,} | {d[NEW_AIRLINE]:,} |"
                                      for k, d in s["data"].items())  # fmt: skip
    by_phase, by_pod = ("\n".join(f"| {k} | {json.dumps(c)} |" for k, c in counts.items())
                        for counts in (trickle["by_phase"], r["new_airline_to_each_pod"]["by_pod"]))  # fmt: skip
    refused = "\n".join(f"- {p['pod']}, {p['instance']} (model {p['model']}): {p['refused']} ({p['direct']} direct, so "
                        f"{p['through_balancer']} through the balancer)" for p in pods)  # fmt: skip
    if not any(p["model"] == r["model_after"] for p in pods):
        refused += "\n- the new pods: none (no series: their model knows the airline)"
    refusal = ("compare refused the candidate: in operation the served model stays. It is rolled out here all the "
               "same, as a drill of the mechanics (what clients of the new airline and of the others see).\n\n"
               if c["exit_code"] else "")  # fmt: skip
    printed = "\n".join(line.rstrip() for line in s["compare"]["stdout"].splitlines() if line.strip())
    counted, got = sum(p["through_balancer"] for p in pods), trickle["statuses"].get("400", 0)
    changes = "\n".join(s["new"]["vocabulary_changes"])
    events = "\n".join(f"| {e['t_s']} | {e['event']} |" for e in r["events"])
    return f"""# Retraining drill: a carrier's rebrand, from new data to the rolled-out model

`{outcome["command"]}`, {outcome["date"]}, {outcome["machine"]}; source commit {s["source_commit"]}.

{SHARE:.0%} of {CARRIER}'s flights scheduled from {SINCE} were renamed {NEW_AIRLINE!r} (a made-up name) in a copy of
data/dataset_SCL.csv outside the repository (random choice, numpy seed {SEED}; flight codes kept).

| data | flights | {CARRIER} | {NEW_AIRLINE} |
|---|---:|---:|---:|
{data}

## Models

- served (old): `{s["old"]["tag"]}`, train.py on jan-jun; image `{s["old"]["image"]}`
- candidate (new): `{s["new"]["tag"]}`, train.py on jan-aug; image `{s["new"]["image"]}`
- what train.py printed for the candidate against the store's latest (the old model):

```
{changes}
```

## Compare on sep-dec

`{c["command"]}`

Exit code {c["exit_code"]}: **{VERDICTS.get(c["exit_code"], "?")}**, in {c["seconds"]} s.
Full report: [compare/report.md](compare/report.md).

```
{printed}
```

## Rollout: old image replaced by the new one under load

{refusal}loadtest.cluster's model rollout (2 replicas, maxSurge 1, maxUnavailable 0) in {r["seconds"]} s, with
{r["connections"]} connections posting EXAMPLE_REQUEST (Grupo LATAM and {CARRIER}, known to both models), a request
naming {NEW_AIRLINE!r} through the balancer every {TRICKLE_S} s and to each ready pod directly every {PROBE_S:.0f} s
(a pod not answering /readyz is skipped, as the balancer skips it). Model after: `{r["model_after"]}`.

- known airlines: {known["requests"]:,} requests, **{known["failed"]} failed**;
  outcomes {json.dumps(known["outcomes"])}; answers by model {json.dumps(known["answers_by_model"])}
- new airline through the balancer: {trickle["requests"]:,} requests, statuses {json.dumps(trickle["statuses"])}

| new airline, through the balancer | statuses |
|---|---|
{by_phase}

| new airline, to each pod directly | statuses |
|---|---|
{by_pod}

Refused as an unknown airline, as each pod counted it (flight_delay_unknown_values_total, the last value
Prometheus scraped):

{refused}

The old pods counted {counted} of the {got} 400s the trickle got through the balancer (Prometheus scrapes
each second, so a pod's last requests before it exits can miss its last scrape).

| t (s) | event |
|---:|---|
{events}

![statuses over time](rebrand.png)
"""


def plot(rollout_result: dict[str, Any], path: Path) -> None:
    """The new airline's statuses through the balancer per 2 s, with the balancer's changes."""
    buckets = rollout_result["new_airline_through_balancer"]["over_time"]
    bottom = np.zeros(len(buckets))
    with figure(path) as (_, axes):
        for status in sorted({k for b in buckets for k in b if k != "t_s"}):
            heights = np.array([b.get(status, 0) for b in buckets], dtype=float)
            colour = {"200": "tab:green", "400": "tab:red"}.get(status, "tab:grey")
            axes.bar([b["t_s"] for b in buckets], heights, 2, bottom, align="edge", label=status, color=colour)
            bottom += heights
        marks: dict[float, list[str]] = {}  # those at one moment on one line
        for event in rollout_result["events"]:
            if "in the balancer" in event["event"] or "out of the balancer" in event["event"]:
                change = "out" if "out of" in event["event"] else "in"
                marks.setdefault(event["t_s"], []).append(f"{event['event'].split()[0]} {change}")
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
    (RESULTS / "compare").mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    setup = prepare(args.work)
    for name in ("report.md", "reliability.png"):  # as compare.py wrote them: the report links the picture
        if (Path(setup["compare"]["out"]) / name).exists():
            shutil.copy(Path(setup["compare"]["out"]) / name, RESULTS / "compare" / name)
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
