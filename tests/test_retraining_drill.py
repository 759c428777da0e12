"""The retraining drill's pure pieces (loadtest/retraining_drill.py): renaming, counting, the report."""

import pandas as pd
import pytest

from loadtest.retraining_drill import (
    CARRIER,
    NEW_AIRLINE,
    markdown,
    months,
    over_time,
    phase,
    rebrand,
    refused_split,
    saved_tag,
    tally,
    vocabulary_changes,
)

EVENTS = [
    {"t_s": 10.0, "event": "r3 starting (flight-delay-rebrand:new)"},
    {"t_s": 14.0, "event": "r3 ready in 4.0 s and in the balancer"},
    {"t_s": 14.1, "event": "r1 out of the balancer; preStop 5 s"},
    {"t_s": 26.0, "event": "r4 ready in 4.0 s and in the balancer"},
    {"t_s": 26.1, "event": "r2 out of the balancer; preStop 5 s"},
]


def flights(n: int, carrier: str = CARRIER, day: str = "2017-07-02 10:00:00") -> pd.DataFrame:
    """n flights of carrier on day, in the dataset's columns the drill reads."""
    return pd.DataFrame({"Fecha-I": [day] * n, "OPERA": [carrier] * n, "Emp-I": ["SKU"] * n})


def test_rebrand_renames_share_of_carrier_from_date() -> None:
    frame = pd.concat([flights(10, day="2017-06-30 23:00:00"), flights(10), flights(10, "Grupo LATAM")])
    renamed = rebrand(frame.reset_index(drop=True), CARRIER, NEW_AIRLINE, 0.5, "2017-07-01", 42)
    assert (renamed["OPERA"] == NEW_AIRLINE).sum() == 5
    assert set(renamed["OPERA"].iloc[:10]) == {CARRIER}  # before the date: untouched
    assert set(renamed["OPERA"].iloc[20:]) == {"Grupo LATAM"}  # other carriers: untouched
    assert set(renamed["Emp-I"]) == {"SKU"}  # the flight codes stay


def test_rebrand_leaves_input_unchanged_and_is_seeded() -> None:
    frame = flights(20)
    first = rebrand(frame, CARRIER, NEW_AIRLINE, 0.5, "2017-07-01", 7)
    again = rebrand(frame, CARRIER, NEW_AIRLINE, 0.5, "2017-07-01", 7)
    assert set(frame["OPERA"]) == {CARRIER}
    assert first["OPERA"].equals(again["OPERA"])


def test_months_selects_scheduled_month_range() -> None:
    frame = pd.concat([flights(1, day=f"2017-{m:02d}-15 10:00:00") for m in range(1, 13)])
    assert list(months(frame, 9, 12)["Fecha-I"].str[5:7]) == ["09", "10", "11", "12"]


def test_vocabulary_changes_keeps_new_and_gone_lines() -> None:
    printed = (
        "report...\nagainst the store's latest model, flight_delay:abc:\n"
        "  airlines: 24 (23 before); new: ['Sky Rebrand Drill']; gone: none\n"
        "  destinations: 62 (62 before); new: none; gone: none\n"
        "  delay rate by month, this data (that model's data):\nsaved model flight_delay:def\n"
    )
    assert vocabulary_changes(printed) == [
        "airlines: 24 (23 before); new: ['Sky Rebrand Drill']; gone: none",
        "destinations: 62 (62 before); new: none; gone: none",
    ]
    assert saved_tag(printed) == "flight_delay:def"


def test_saved_tag_missing_raises() -> None:
    with pytest.raises(ValueError, match="no saved model"):
        saved_tag("error: data.csv, row 2")


def test_tally_counts_statuses_per_key() -> None:
    records = [{"pod": "r1", "status": "400"}, {"pod": "r3", "status": "200"}, {"pod": "r1", "status": "400"}]
    assert tally(records, "pod") == {"r1": {"400": 2}, "r3": {"200": 1}}


@pytest.mark.parametrize(
    ("t_s", "expected"),
    [(0.0, "1 old pods only"), (13.9, "1 old pods only"), (14.0, "2 old and new pods"), (26.0, "2 old and new pods"),
     (26.1, "3 new pods only"), (40.0, "3 new pods only")],
)  # fmt: skip
def test_phase_of_rollout_time(t_s: float, expected: str) -> None:
    assert phase(t_s, EVENTS) == expected


def test_over_time_buckets_statuses_in_order() -> None:
    records = [{"t_s": 0.5, "status": "400"}, {"t_s": 2.1, "status": "200"}, {"t_s": 1.9, "status": "200"},
               {"t_s": 3.0, "status": "400"}]  # fmt: skip
    assert over_time(records) == [{"t_s": 0.0, "200": 1, "400": 1}, {"t_s": 2.0, "200": 1, "400": 1}]


def test_markdown_reports_verdict_and_counts() -> None:
    setup = {
        "source_commit": "abc1234",
        "data": {"sep-dec": {"flights": 100, CARRIER: 10, NEW_AIRLINE: 10}},
        "old": {"tag": "flight_delay:old", "image": "flight-delay-rebrand:old"},
        "new": {"tag": "flight_delay:new", "image": "flight-delay-rebrand:new", "vocabulary_changes": ["airlines: 24"]},
        "compare": {"command": "compare.py ...", "exit_code": 1, "seconds": 3.2, "stdout": "refuse\n\nROC AUC ..."},
    }
    rollout = {
        "seconds": 40.0,
        "connections": 8,
        "model_after": "flight_delay:new",
        "known_airlines": {"requests": 900, "failed": 0, "outcomes": {"200": 900}, "answers_by_model": {}},
        "new_airline_through_balancer": {
            "requests": 30,
            "statuses": {"200": 20, "400": 10},
            "by_phase": {"1 old pods only": {"400": 10}},
        },
        "new_airline_to_each_pod": {"by_pod": {"r1 (old image)": {"400": 5}, "r3 (new image)": {"200": 5}}},
        "refused_as_counted_by_pods": [
            {
                "instance": "127.0.0.1:3101",
                "model": "flight_delay:old",
                "refused": 15,
                "pod": "r1",
                "direct": 5,
                "through_balancer": 10,
            }
        ],
        "events": EVENTS,
    }
    text = markdown({"command": "cmd", "date": "2026-12-03 13:40", "machine": "2 cores", "setup": setup,
                     "rollout": rollout})  # fmt: skip
    assert "Exit code 1: **refused**" in text
    assert "900 requests, **0 failed**" in text
    assert '| r1 (old image) | {"400": 5} |' in text
    assert "r1, 127.0.0.1:3101 (model flight_delay:old): 15 (5 direct, so 10 through the balancer)" in text
    assert "the new pods: none" in text
    assert "The old pods counted 10 of the 10 400s the trickle got through the balancer" in text
    assert "rolled out here all the same, as a drill of the mechanics" in text


def test_refused_split_subtracts_direct_400s_per_pod() -> None:
    refused = [{"instance": "127.0.0.1:3102", "model": "flight_delay:old", "refused": 176}]
    direct = {"r1 (old image)": {"400": 21}, "r2 (old image)": {"400": 34}, "r3 (new image)": {"200": 29}}
    assert refused_split(refused, direct) == [{**refused[0], "pod": "r2", "direct": 34, "through_balancer": 142}]
