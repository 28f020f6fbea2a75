"""What a device's user reads when licensing refuses: each message says what is wrong, then
what to do (docs/runtime.md, "Errors"), found by following docs/licensing.md's quick start."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from tests.licensing.test_client import Clock, FakeServer, make_client

from skruntime.errors import DENIAL_ADVICE, LicenceDeniedError, LicenceError, QuotaExhaustedError
from skruntime.licensing import protocol


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.mark.parametrize("reason", protocol.DENY_REASONS)
def test_every_denial_says_what_to_do(reason: str) -> None:
    """A denial named only its code and the server's detail ("too_many_devices (customer 8
    already has 1 registered devices (maximum 1))"): the user could not tell what to do."""
    message = str(LicenceDeniedError(reason, "the server's detail"))
    assert message.startswith(f"The licence server denied the licence: {reason} (the server's")
    assert message.endswith(DENIAL_ADVICE[reason])
    assert DENIAL_ADVICE[reason].endswith(".")


def test_an_explicit_message_is_kept() -> None:
    assert str(LicenceDeniedError("device_revoked", "x", message="custom")) == "custom"


@pytest.mark.parametrize(
    ("key", "got"),
    [
        ("Ej72QsdQTFpPAra1yR+6TtJYf/6qRGeqbpEGFVGQZsA=", "str of length 44"),
        (b"Ej72QsdQTFpPAra1yR+6TtJYf/6qRGeqbpEGFVGQZsA=", "bytes of length 44"),
        (None, "NoneType"),
    ],
)
def test_a_base64_server_key_is_refused_with_how_to_decode_it(state, clock, key, got) -> None:
    """The quick start prints the server key in base64; passing that text as
    ``server_public_key=`` said only that a raw key was needed, not what was wrong."""
    with pytest.raises(LicenceError) as info:
        make_client(FakeServer(), state, clock, server_public_key=key)
    assert f"but got {got}: decode the base64 text" in str(info.value)
    assert "base64.b64decode(text)" in str(info.value)


def test_the_decoded_key_is_accepted(state, clock) -> None:
    server = FakeServer()
    text = base64.b64encode(server.public_key).decode()
    client = make_client(server, state, clock, server_public_key=base64.b64decode(text))
    client.consume()
    client.close()


def test_quota_used_up_names_one_inference_in_the_singular(state, clock) -> None:
    """Quota 5 in licences of 2: the last licence holds 1, and its message read "The 1
    inferences of licence ... are used up"."""
    server = FakeServer(quota=5)
    client = make_client(server, state, clock, requested_inferences=2)
    for _ in range(5):
        client.consume()
    with pytest.raises(QuotaExhaustedError) as info:
        client.consume()
    message = str(info.value)
    assert "(1 inference) is used up" in message
    assert message.endswith(DENIAL_ADVICE["quota_exhausted"])
    client.close()


def test_allowance_used_up_then_contract_ended_does_not_advise_a_quota(state, clock) -> None:
    """A renewal for more allowance denied ``contract_ended`` said "Ask the licence
    administrator to raise the quota", which would not help."""
    server = FakeServer(quota=100)
    client = make_client(server, state, clock, requested_inferences=2)
    client.consume(2)
    server.deny = ("contract_ended", "the contract of customer 7 ended")
    with pytest.raises(QuotaExhaustedError) as info:
        client.consume()
    message = str(info.value)
    assert "(2 inferences) is used up" in message
    assert "raise the quota" not in message
    assert message.endswith(DENIAL_ADVICE["contract_ended"])
    client.close()


def test_a_failed_usage_report_says_it_is_sent_again(state, clock, caplog) -> None:
    """With the server down, ``skprotect run`` ended with "Usage report for licence ... failed:
    ConnectError ..." and nothing more: the user could not tell whether the count was lost."""
    server = FakeServer()
    client = make_client(server, state, clock)
    client.consume()
    server.up = False
    with caplog.at_level("WARNING", logger="skruntime.licensing.client"):
        client.close()
    [record] = [r for r in caplog.records if "Usage report" in r.getMessage()]
    assert record.getMessage().endswith("It is sent again at the next licence renewal or close().")
    server.up = True
    again = make_client(server, state, clock)
    again.report_usage()
    assert server.used == 1
    again.close()
