"""Loading and checking the SCL flights dataset, the synthetic sample that stands in for it, and the
split of its calendar days into training and held-out days.

The sample is generated from aggregate statistics of the real data (`sample_stats.json`: counts and
delay rates by route, month, weekday and hour; no rows), so a machine without the dataset still
trains a model with the same schema and the same broad behaviour.
"""

import argparse
import calendar
import hashlib
import io
import json
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.config import DELAY_MINUTES, PROJECT_DIR, SEED, TEST_SIZE
from models.features import FLIGHT_TYPES
from models.schema import OUTCOME_WINDOW_MINUTES

STATS_PATH = PROJECT_DIR / "models" / "sample_stats.json"
DATASET_COLUMNS = (
    "Fecha-I", "Vlo-I", "Ori-I", "Des-I", "Emp-I", "Fecha-O", "Vlo-O", "Ori-O", "Des-O", "Emp-O",
    "DIA", "MES", "AÑO", "DIANOM", "TIPOVUELO", "OPERA", "SIGLAORI", "SIGLADES",
)  # fmt: skip
USED_COLUMNS = ("Fecha-I", "Fecha-O", "TIPOVUELO", "OPERA", "SIGLADES")
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
WEEKDAY_NAMES = ("Lunes", "Martes", "Miercoles", "Jueves", "Viernes", "Sabado", "Domingo")
SAMPLE_YEAR = 2017


class DataError(Exception):
    """The dataset cannot be used; the message tells the user why, in one line."""


def load_flights(path: Path) -> pd.DataFrame:
    """Read a dataset CSV and return its checked rows (see `check_flights`)."""
    if not path.is_file():
        raise DataError(f"no dataset file at {path}")
    check_text(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path} is not a readable CSV file: {exc}") from exc
    # Blank lines are read, then left out, so that each row keeps its line's number in the index
    # (`refuse` names rows by it); skipped by pandas, every row after one was named a line too early.
    return check_flights(frame.loc[frame.ne("").any(axis=1)], source=str(path))


def check_text(path: Path) -> None:
    """DataError for a file that is not comma-separated UTF-8 text, saying where and how to fix it.

    A spreadsheet saving the dataset in a Spanish or French locale writes `;` between columns and
    Windows-1252 text ("Ñ" as byte 0xd1); pandas' own messages for these name neither."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        row = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}, row {row}: byte 0x{data[exc.start]:02x} is not UTF-8 text; save the file as UTF-8 CSV"
        ) from None
    header = data.split(b"\n", 1)[0]
    for separator, name in ((b";", "semicolons"), (b"\t", "tabs")):
        if b"," not in header and separator in header:
            raise DataError(
                f"{path}, row 1 (the header): the columns are separated by {name}, not commas; "
                "save the file as comma-separated CSV"
            )


def check_flights(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The columns training uses, with parsed dates and the `delayed` target, indexed 0, 1, ... The first
    bad value is a DataError naming the file, the row (as an editor numbers it: the header is row 1,
    the index of `frame` row 2) and the column."""
    missing = [column for column in USED_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(f"{source}, row 1 (the header): no column {', '.join(missing)}")
    if frame.empty:
        raise DataError(f"{source}: no rows after the header")
    copies = frame.duplicated().to_numpy()
    if copies.any():  # a flight twice is trained on twice, and counted twice in every held-out figure
        others = int(copies.sum()) - 1
        more = f" ({others} more row{'s' if others != 1 else ''} like it)" if others else ""
        raise DataError(
            f"{source}, row {frame.index[int(copies.argmax())] + 2}: the same as an earlier row in every column{more}; "
            "remove the copies"
        )
    flights = frame.loc[:, list(USED_COLUMNS)].copy()
    for column in ("Fecha-I", "Fecha-O"):
        parsed = pd.to_datetime(flights[column], format=DATE_FORMAT, errors="coerce")
        refuse(source, flights, column, parsed.isna().to_numpy(), "is not a date like 2017-01-01 23:30:00")
        flights[column] = parsed
    refuse(source, flights, "TIPOVUELO", ~flights["TIPOVUELO"].isin(FLIGHT_TYPES).to_numpy(), "is not I or N")
    for column in ("OPERA", "SIGLADES"):
        refuse(source, flights, column, (flights[column].str.strip() == "").to_numpy(), "is empty")
        flights[column] = flights[column].str.strip()  # "Sky Airline " is "Sky Airline"
        refuse_spellings(source, flights, column)
    minutes = ((flights["Fecha-O"] - flights["Fecha-I"]).dt.total_seconds() / 60).to_numpy()
    early, late = OUTCOME_WINDOW_MINUTES
    refuse(
        source,
        flights,
        "Fecha-O",
        (minutes < early) | (minutes > late),
        f"is not a departure: not within {-early} minutes before to {late} minutes after its Fecha-I",
    )
    flights["delayed"] = (minutes > DELAY_MINUTES).astype(np.int64)
    return flights.reset_index(drop=True)


def refuse_spellings(source: str, flights: pd.DataFrame, column: str) -> None:
    """DataError where two spellings of a name are the same name once case and Unicode composition are
    set aside ("Sky Airline" and "sky airline"): the model would learn them as two airlines or cities.
    Names the first row of each spelling."""
    names = pd.Series(flights[column].unique())
    keys = names.map(lambda name: unicodedata.normalize("NFC", name).casefold())
    clashes = names[keys.duplicated(keep=False)]
    if clashes.empty:
        return
    first_key = keys[clashes.index[0]]
    spellings = names[keys == first_key]
    rows = ", ".join(
        f"{name!r} in row {flights.index[int(np.argmax(flights[column].to_numpy() == name))] + 2}" for name in spellings
    )
    others = keys[clashes.index].nunique() - 1
    more = f" ({others} more name{'s' if others != 1 else ''} like it)" if others else ""
    raise DataError(
        f"{source}, column {column}: one name spelled {len(spellings)} ways: {rows}; write it one way{more}"
    )


def refuse(source: str, flights: pd.DataFrame, column: str, bad: np.ndarray, problem: str) -> None:
    """DataError on the first row where `bad` holds: file, row, column, value and what is wrong."""
    if not bad.any():
        return
    first = int(bad.argmax())
    others = int(bad.sum()) - 1
    more = f" ({others} more row{'s' if others != 1 else ''} like it)" if others else ""
    value = str(flights[column].iloc[first])  # a date as parsed: its text is gone once parsed
    raise DataError(f"{source}, row {flights.index[first] + 2}, column {column}: {value!r} {problem}{more}")


def calendar_days(flights: pd.DataFrame) -> np.ndarray:
    """The calendar day of each flight's Fecha-I, as text: what splits and resamples group flights by,
    since the flights of a day share its weather and its delays."""
    return flights["Fecha-I"].dt.strftime("%Y-%m-%d").to_numpy()


def held_out_split(flights: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the training days and of the held-out days (TEST_SIZE of the calendar days, drawn with
    SEED): whole days on each side, so the held-out figures are of days the model never saw."""
    from sklearn.model_selection import GroupShuffleSplit  # seconds to import: not for the tools that only read

    splitter = GroupShuffleSplit(n_splits=1, test_size=TEST_SIZE, random_state=SEED)
    training, held_out = next(splitter.split(flights, groups=calendar_days(flights)))
    return training, held_out


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, recorded with the model so its training data can be identified."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compute_stats(flights: pd.DataFrame) -> dict[str, Any]:
    """Counts and delayed counts by route, month, weekday and hour: the facts the sample is drawn from."""
    scheduled = flights["Fecha-I"].dt

    def tally(keys: list[Any]) -> list[list[Any]]:
        grouped = flights.groupby(keys)["delayed"].agg(["count", "sum"]).reset_index()
        return [[*(k.item() if hasattr(k, "item") else k for k in row[:-2]), int(row[-2]), int(row[-1])]
                for row in grouped.itertuples(index=False)]  # fmt: skip

    return {
        "rows": len(flights),
        "delayed": int(flights["delayed"].sum()),
        "route": tally(["OPERA", "SIGLADES", "TIPOVUELO"]),
        "month": tally([scheduled.month.rename("month")]),
        "weekday": tally([scheduled.day_of_week.rename("weekday")]),
        "hour": tally([scheduled.hour.rename("hour")]),
    }


def _log_odds(table: list[list[Any]], prior: float, smoothing: float = 10.0) -> dict[Any, float]:
    """Smoothed delay log-odds of each key of a stats table, relative to the overall rate."""
    base = np.log(prior / (1 - prior))
    odds = {}
    for *key, count, delayed in table:
        rate = (delayed + smoothing * prior) / (count + smoothing)
        odds[tuple(key) if len(key) > 1 else key[0]] = float(np.log(rate / (1 - rate)) - base)
    return odds


def synthetic_frame(stats: dict[str, Any], rows: int, seed: int = SEED) -> pd.DataFrame:
    """Deterministic synthetic rows with the dataset's 18 columns, drawn from `compute_stats` output.

    Routes (each at least once, given as many rows), months and hours follow their real frequencies;
    each flight's delay odds add up the real log-odds of its route, month, weekday and hour. Flight
    numbers and airport codes are placeholders.
    """
    rng = np.random.default_rng(seed)
    prior = stats["delayed"] / stats["rows"]

    def draw(table: list[list[Any]]) -> np.ndarray:
        counts = np.array([row[-2] for row in table], dtype=np.float64)
        return rng.choice(len(table), size=rows, p=counts / counts.sum())

    routes = [tuple(row[:3]) for row in stats["route"]]
    route = draw(stats["route"])
    if rows >= len(routes):  # each route once at least: a model of the sample knows every airline and city
        route[: len(routes)] = np.arange(len(routes))
    month = np.array([stats["month"][i][0] for i in draw(stats["month"])])
    hour = np.array([stats["hour"][i][0] for i in draw(stats["hour"])])
    days_in_month = np.array([calendar.monthrange(SAMPLE_YEAR, m)[1] for m in month])
    day = (rng.random(rows) * days_in_month).astype(np.int64) + 1
    minute = rng.integers(0, 12, rows) * 5
    scheduled = pd.to_datetime({"year": SAMPLE_YEAR, "month": month, "day": day, "hour": hour, "minute": minute})
    weekday = scheduled.dt.day_of_week.to_numpy()

    route_odds, month_odds = _log_odds(stats["route"], prior), _log_odds(stats["month"], prior)
    weekday_odds, hour_odds = _log_odds(stats["weekday"], prior), _log_odds(stats["hour"], prior)
    logit = np.log(prior / (1 - prior)) + np.array(
        [route_odds[routes[r]] + month_odds[m] + weekday_odds[w] + hour_odds[h]
         for r, m, w, h in zip(route, month, weekday, hour, strict=True)]
    )  # fmt: skip
    delayed = rng.random(rows) < 1 / (1 + np.exp(-logit))
    late = np.where(delayed, rng.integers(DELAY_MINUTES + 1, 91, rows), rng.integers(-5, DELAY_MINUTES + 1, rows))
    operated = scheduled + pd.to_timedelta(late, unit="min")

    airline = np.array([routes[r][0] for r in route])
    flight_number = rng.integers(1, 9999, rows).astype(str)
    frame = pd.DataFrame(
        {
            "Fecha-I": scheduled.dt.strftime(DATE_FORMAT),
            "Vlo-I": flight_number,
            "Ori-I": "SCEL",
            "Des-I": "XXXX",
            "Emp-I": "XXX",
            "Fecha-O": operated.dt.strftime(DATE_FORMAT),
            "Vlo-O": flight_number,
            "Ori-O": "SCEL",
            "Des-O": "XXXX",
            "Emp-O": "XXX",
            "DIA": scheduled.dt.day.astype(str),
            "MES": scheduled.dt.month.astype(str),
            "AÑO": scheduled.dt.year.astype(str),
            "DIANOM": [WEEKDAY_NAMES[w] for w in weekday],
            "TIPOVUELO": [routes[r][2] for r in route],
            "OPERA": airline,
            "SIGLAORI": "Santiago",
            "SIGLADES": [routes[r][1] for r in route],
        }
    )
    return frame.loc[:, list(DATASET_COLUMNS)]


def embedded_sample(rows: int | None = None) -> tuple[pd.DataFrame, str]:
    """The checked synthetic sample and the SHA-256 of its CSV text (its identity in model metadata)."""
    stats = json.loads(STATS_PATH.read_text())
    frame = synthetic_frame(stats, rows or stats["rows"])
    digest = hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()
    return check_flights(frame, source="embedded sample"), digest


def main() -> None:
    """`python -m models.data --data PATH`: recompute sample_stats.json from the real dataset."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data", type=Path, required=True, help="path to dataset_SCL.csv")
    args = parser.parse_args()
    stats = compute_stats(load_flights(args.data))
    buffer = io.StringIO()
    json.dump(stats, buffer, ensure_ascii=False, separators=(",", ":"))
    STATS_PATH.write_text(buffer.getvalue() + "\n")
    print(f"wrote {STATS_PATH} from {stats['rows']} rows")


if __name__ == "__main__":
    main()
