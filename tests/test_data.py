"""Dataset loading and checks, and the synthetic sample that stands in for the real data."""

import json
import unicodedata
from pathlib import Path

import pandas as pd
import pytest
from helpers import VOCABULARY

from models.data import (
    DATASET_COLUMNS,
    STATS_PATH,
    DataError,
    compute_stats,
    embedded_sample,
    load_flights,
    synthetic_frame,
)
from models.features import Vocabulary


@pytest.fixture(scope="module")
def stats() -> dict:
    """The committed aggregate statistics of the real dataset."""
    return json.loads(STATS_PATH.read_text())


@pytest.fixture
def sample_rows(stats: dict) -> pd.DataFrame:
    """A small synthetic frame in the dataset's raw form (all strings)."""
    return synthetic_frame(stats, rows=500)


def write(frame: pd.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / "flights.csv"
    frame.to_csv(path, index=False)
    return path


def test_load_flights_computes_delay_over_15_minutes(sample_rows: pd.DataFrame, tmp_path: Path) -> None:
    rows = sample_rows.head(3).copy()
    rows["Fecha-I"] = ["2017-01-01 10:00:00"] * 3
    rows["Fecha-O"] = ["2017-01-01 10:15:00", "2017-01-01 10:16:00", "2017-01-01 09:50:00"]
    assert load_flights(write(rows, tmp_path))["delayed"].tolist() == [0, 1, 0]


def test_load_flights_missing_file_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no dataset file"):
        load_flights(tmp_path / "absent.csv")


def test_load_flights_missing_columns_named_with_the_header_row(sample_rows: pd.DataFrame, tmp_path: Path) -> None:
    path = write(sample_rows.drop(columns=["Fecha-O", "OPERA"]), tmp_path)
    with pytest.raises(DataError) as error:
        load_flights(path)
    assert str(error.value) == f"{path}, row 1 (the header): no column Fecha-O, OPERA"


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("Fecha-I", "yesterday", "'yesterday' is not a date like 2017-01-01 23:30:00"),
        ("Fecha-O", "2017-13-01 10:00:00", "'2017-13-01 10:00:00' is not a date like 2017-01-01 23:30:00"),
        ("TIPOVUELO", "X", "'X' is not I or N"),
        ("OPERA", "  ", "'  ' is empty"),
        ("SIGLADES", "", "'' is empty"),
        ("Fecha-O", "2017-12-31 23:00:00", "not within 60 minutes before to 1440 minutes after its Fecha-I"),
    ],
)
def test_load_flights_bad_value_named_with_file_row_and_column(
    sample_rows: pd.DataFrame, tmp_path: Path, column: str, value: str, message: str
) -> None:
    rows = sample_rows.copy()
    rows.loc[7, column] = value
    rows.loc[9, column] = value
    path = write(rows, tmp_path)
    with pytest.raises(DataError) as error:
        load_flights(path)
    assert str(error.value).startswith(f"{path}, row 9, column {column}: ")  # row 1 is the header
    assert message in str(error.value)
    assert str(error.value).endswith("(1 more row like it)")


def with_blank_lines(rows: pd.DataFrame, tmp_path: Path) -> Path:
    """`rows` as a dataset file with two blank lines after its fourth row (lines 6 and 7)."""
    lines = write(rows, tmp_path).read_text().splitlines()
    path = tmp_path / "blank.csv"
    path.write_text("\n".join([*lines[:5], "", "", *lines[5:], ""]))
    return path


def test_load_flights_names_the_line_of_a_bad_value_after_blank_lines(
    sample_rows: pd.DataFrame, tmp_path: Path
) -> None:
    # pandas skipped blank lines, and each row after them was named a line too early
    rows = sample_rows.copy()
    rows.loc[7, "TIPOVUELO"] = "X"
    path = with_blank_lines(rows, tmp_path)
    assert path.read_text().splitlines()[10].startswith(rows.loc[7, "Fecha-I"])  # line 11, as an editor numbers it
    with pytest.raises(DataError) as error:
        load_flights(path)
    assert str(error.value).startswith(f"{path}, row 11, column TIPOVUELO: 'X'")
    assert len(load_flights(with_blank_lines(sample_rows, tmp_path))) == len(sample_rows)  # blank lines left out


def test_load_flights_names_both_spellings_lines_after_blank_lines(sample_rows: pd.DataFrame, tmp_path: Path) -> None:
    rows = sample_rows.copy()
    rows.loc[0, "OPERA"], rows.loc[9, "OPERA"] = "Aerolinea Prueba", "aerolinea prueba"
    with pytest.raises(DataError, match="'Aerolinea Prueba' in row 2, 'aerolinea prueba' in row 13"):
        load_flights(with_blank_lines(rows, tmp_path))


def test_load_flights_refuses_a_row_repeated_in_every_column(sample_rows: pd.DataFrame, tmp_path: Path) -> None:
    # a file concatenated with itself trained on every flight twice and counted each held-out one twice
    rows = pd.concat([sample_rows, sample_rows.iloc[[3, 5]]], ignore_index=True)
    path = write(rows, tmp_path)
    with pytest.raises(DataError) as error:
        load_flights(path)
    assert str(error.value) == (
        f"{path}, row {len(sample_rows) + 2}: the same as an earlier row in every column (1 more row like it); "
        "remove the copies"
    )


def test_load_flights_accepts_an_airline_and_city_of_any_name(sample_rows: pd.DataFrame, tmp_path: Path) -> None:
    rows = sample_rows.copy()
    rows.loc[0, ["OPERA", "SIGLADES"]] = ["Arajet", "Santo Domingo"]
    assert load_flights(write(rows, tmp_path)).loc[0, "OPERA"] == "Arajet"  # the model learns it


def test_load_flights_strips_white_space_around_names(sample_rows: pd.DataFrame, tmp_path: Path) -> None:
    rows = sample_rows.copy()
    rows.loc[0, ["OPERA", "SIGLADES"]] = [f" {rows.loc[1, 'OPERA']} ", f"{rows.loc[1, 'SIGLADES']}\t"]
    loaded = load_flights(write(rows, tmp_path))
    assert tuple(loaded.loc[0, ["OPERA", "SIGLADES"]]) == tuple(rows.loc[1, ["OPERA", "SIGLADES"]])


@pytest.mark.parametrize("column", ["OPERA", "SIGLADES"])
@pytest.mark.parametrize(
    ("written", "respelled"),
    [
        ("Aerolinea Prueba", "aerolinea prueba"),
        ("Aerolinea Prueba", "AEROLINEA PRUEBA"),
        ("Concepción Sur", unicodedata.normalize("NFD", "Concepción Sur")),  # composed vs decomposed ó
    ],
)
def test_load_flights_refuses_one_name_spelled_two_ways_naming_both_rows(
    sample_rows: pd.DataFrame, tmp_path: Path, column: str, written: str, respelled: str
) -> None:
    rows = sample_rows.copy()
    rows.loc[0, column] = written
    rows.loc[3, column] = respelled
    with pytest.raises(DataError) as refused:
        load_flights(write(rows, tmp_path))
    message = str(refused.value)
    assert f"column {column}: one name spelled 2 ways: {written!r} in row 2, {respelled!r} in row 5" in message


def test_embedded_sample_holds_every_airline_and_city_of_the_2017_data(stats: dict) -> None:
    flights, _digest = embedded_sample()
    assert Vocabulary.learn(flights, 1) == VOCABULARY
    assert (len(VOCABULARY.airlines), len(VOCABULARY.destinations)) == (23, 62)


def test_load_flights_names_a_spreadsheets_windows_text_and_its_row(sample_rows: pd.DataFrame, tmp_path: Path) -> None:
    rows = sample_rows.head(5).copy()
    rows.loc[3, "SIGLADES"] = "Concepción"
    path = tmp_path / "flights.csv"
    rows.to_csv(path, index=False, encoding="cp1252")  # "AÑO" in the header is UTF-8's too: only the city differs
    path.write_bytes(path.read_bytes().replace("AÑO".encode("cp1252"), "AÑO".encode()))
    with pytest.raises(DataError) as error:
        load_flights(path)
    assert str(error.value) == f"{path}, row 5: byte 0xf3 is not UTF-8 text; save the file as UTF-8 CSV"


@pytest.mark.parametrize(("separator", "name"), [(";", "semicolons"), ("\t", "tabs")])
def test_load_flights_names_columns_not_separated_by_commas(
    sample_rows: pd.DataFrame, tmp_path: Path, separator: str, name: str
) -> None:
    path = tmp_path / "flights.csv"
    sample_rows.to_csv(path, index=False, sep=separator)
    with pytest.raises(DataError) as error:
        load_flights(path)
    assert str(error.value) == (
        f"{path}, row 1 (the header): the columns are separated by {name}, not commas; "
        "save the file as comma-separated CSV"
    )


def test_load_flights_empty_file_is_data_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="not a readable CSV"):
        load_flights(path)


def test_synthetic_frame_is_deterministic_with_real_schema(stats: dict) -> None:
    first, second = synthetic_frame(stats, rows=300), synthetic_frame(stats, rows=300)
    pd.testing.assert_frame_equal(first, second)
    assert tuple(first.columns) == DATASET_COLUMNS
    assert set(first["OPERA"]) <= set(VOCABULARY.airlines)
    assert set(first["SIGLADES"]) <= set(VOCABULARY.destinations)


def test_embedded_sample_keeps_real_delay_rate_and_size(stats: dict) -> None:
    flights, digest = embedded_sample()
    assert len(flights) == stats["rows"]
    assert abs(flights["delayed"].mean() - stats["delayed"] / stats["rows"]) < 0.01
    assert len(digest) == 64


def test_embedded_sample_keeps_airline_delay_order(stats: dict) -> None:
    flights, _ = embedded_sample()
    real = pd.DataFrame(stats["route"], columns=["OPERA", "SIGLADES", "TIPOVUELO", "count", "delayed"])
    real_rate = real.groupby("OPERA")[["delayed", "count"]].sum().pipe(lambda t: t["delayed"] / t["count"])
    big = real.groupby("OPERA")["count"].sum() >= 300  # small airlines are noisy by nature
    sample_rate = flights.groupby("OPERA")["delayed"].mean()
    assert real_rate[big].corr(sample_rate[real_rate[big].index], method="spearman") >= 0.9


def test_compute_stats_round_trips_sample_counts(sample_rows: pd.DataFrame, tmp_path: Path) -> None:
    flights = load_flights(write(sample_rows, tmp_path))
    stats = compute_stats(flights)
    assert stats["rows"] == len(flights)
    assert sum(row[-2] for row in stats["route"]) == len(flights)
    assert sum(row[-1] for row in stats["month"]) == stats["delayed"] == flights["delayed"].sum()
