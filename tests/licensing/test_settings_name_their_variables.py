"""A server setting out of range names the environment variable that set it: the error said
only "licence_requests_per_minute must be a positive integer, but got 0" (or "environment must
be one of local, production"), a name the user never typed."""

from __future__ import annotations

import pytest

from sklicense.settings import Settings, SettingsError

LIMITS = [
    "SKLICENSE_LICENCE_REQUESTS_PER_MINUTE",
    "SKLICENSE_ADMIN_AUTH_FAILURES_PER_MINUTE",
    "SKLICENSE_NEW_DEVICE_REQUESTS_PER_MINUTE",
    "SKLICENSE_USAGE_REPORTS_PER_MINUTE",
]


@pytest.mark.parametrize("variable", LIMITS)
def test_a_rate_limit_below_one_names_its_variable(variable: str) -> None:
    field = variable.removeprefix("SKLICENSE_").lower()
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({variable: "0"})
    assert str(raised.value) == (
        f"{field} must be a positive integer (set {variable} to 1 or more), but got 0"
    )


def test_an_unknown_environment_names_its_variable() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"SKLICENSE_ENVIRONMENT": "prod"})
    assert str(raised.value) == (
        "environment must be one of local, production (set SKLICENSE_ENVIRONMENT to one of "
        "them), but got 'prod'"
    )
