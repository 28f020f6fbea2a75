"""A pool timeout past what PostgreSQL's lock_timeout and Python's lock waits take is refused
with the setting's bounds, instead of failing every request of the server."""

from __future__ import annotations

import pytest

from sklicense.settings import Settings, SettingsError


@pytest.mark.parametrize("seconds", [1e7, 1e12, float("inf")])
def test_a_pool_timeout_too_long_is_refused(seconds: float) -> None:
    with pytest.raises(SettingsError, match=r"at most 3600"):
        Settings(database_pool_timeout_s=seconds)


def test_an_hour_is_accepted() -> None:
    assert Settings(database_pool_timeout_s=3600).database_pool_timeout_s == 3600
