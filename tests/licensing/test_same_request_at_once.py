"""The same signed licence request arriving several times at once (a client resending while a
slow server still decides the first copy): every copy is answered with the one licence, and the
quota is charged once. SQLite and PostgreSQL, one server process, threads."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import func, select
from tests.licensing.server_helpers import FakeDevice, make_application, make_customer

from sklicense import service
from sklicense.crypto import load_signing_key
from sklicense.models import Customer, Licence
from sklicense.schemas import LicenceRequestIn
from skruntime.licensing.protocol import SIGNATURE_HEADER

COPIES = 4


def test_copies_of_one_request_at_once_are_charged_once(sessions, state_dir, clock) -> None:
    make_application(sessions)
    make_customer(sessions, inference_quota=1000)
    key = load_signing_key(state_dir / "server.key")
    device = FakeDevice()
    body = device.licence_request(42, clock.now, requested_inferences=10)
    signature = device.headers(body)[SIGNATURE_HEADER]
    request = LicenceRequestIn.model_validate(body)
    start = threading.Barrier(COPIES)
    answers: list[Any] = []

    def send() -> None:
        start.wait()
        verified, _ = service.signed_by_device(
            sessions, device.id, body, signature, device.signing_public
        )
        outcome = service.request_licence(
            sessions, request, body, signature, clock.now, key, verified
        )
        answers.append(outcome)

    threads = [threading.Thread(target=send) for _ in range(COPIES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status for a in answers] == [200] * COPIES
    assert len({a.body["licence"]["licence_id"] for a in answers}) == 1
    with sessions() as session:
        assert session.get(Customer, 42).inferences_granted == 10
        assert session.scalar(select(func.count()).select_from(Licence)) == 1
