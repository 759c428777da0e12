"""models/config.py: the settings read from the environment, and the one line that refuses a bad one."""

import pytest

from serving.settings import MIN_TOKEN_CHARACTERS, BadSettingError, Settings

TOKEN = "0123456789abcdef0123456789abcdef"
VARIABLE = "FLIGHT_DELAY_OUTCOMES_TOKEN"


@pytest.mark.parametrize("sent", [TOKEN, f"{TOKEN}\n", f"  {TOKEN}\t\r\n"])
def test_outcomes_token_is_stripped_of_surrounding_white_space(monkeypatch: pytest.MonkeyPatch, sent: str) -> None:
    monkeypatch.setenv(VARIABLE, sent)
    token = Settings.from_environment().outcomes_token
    assert token is not None and token.get_secret_value() == TOKEN


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "it is empty"),
        ("   \n", "it is empty"),
        ("a" * (MIN_TOKEN_CHARACTERS - 1), f"it has {MIN_TOKEN_CHARACTERS - 1}"),
        (f"{TOKEN}\x07", "it holds others"),
        (f"{TOKEN[:16]} {TOKEN[16:]}", "it holds others"),
        (f"{TOKEN}é", "it holds others"),
    ],
)
def test_unusable_outcomes_token_refuses_the_start_in_one_line_without_its_value(
    monkeypatch: pytest.MonkeyPatch, value: str, reason: str
) -> None:
    monkeypatch.setenv(VARIABLE, value)
    with pytest.raises(BadSettingError) as refused:
        Settings.from_environment()
    line = str(refused.value)
    assert "\n" not in line
    assert line.startswith(f"{VARIABLE}=<{len(value)} characters, not shown> is not accepted: ")
    assert reason in line
    assert value.strip() == "" or value.strip() not in line


def test_unset_outcomes_token_leaves_the_route_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)
    assert Settings.from_environment().outcomes_token is None


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("FLIGHT_DELAY_METRICS_PAGE_S", "inf", "finite number"),
        ("FLIGHT_DELAY_METRICS_PAGE_S", "61", "less than or equal to 60"),
        ("FLIGHT_DELAY_REQUEST_TIMEOUT_S", "inf", "finite number"),
        ("FLIGHT_DELAY_SEND_TIMEOUT_S", "Infinity", "finite number"),
        ("FLIGHT_DELAY_IDLE_TIMEOUT_S", "inf", "finite number"),
        ("FLIGHT_DELAY_LOG_DIR", "", "a directory: it is empty"),
        ("FLIGHT_DELAY_LOG_DIR", "  ", "a directory: it is empty"),
        ("flight_delay_workers", "abc", "input should be a valid integer"),
        ("FLIGHT_DELAY_WORKERS", "999999", "less than or equal to 256"),
    ],
)
def test_setting_that_would_turn_a_bound_off_or_log_anywhere_is_refused_with_its_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, accepted: str
) -> None:
    # inf passed every positive bound: a page made once and kept (monitoring frozen) or a time-out never
    # reached; an empty log directory logged into the working directory
    monkeypatch.setenv(variable, value)
    with pytest.raises(BadSettingError) as refused:
        Settings.from_environment()
    assert str(refused.value).startswith(f"{variable.upper()}={value!r} is not accepted: ")
    assert accepted in str(refused.value)
