"""The database commits a licence grant, then the connection drops before the server reads
the commit's result: the server answers 503, and the runtime's resend of the same request is
answered with that licence, charged once. Against the real server app, SQLite and
PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from tests.licensing.test_lost_answer_resent_later import granted, start

from sklicense.models import Licence


def test_a_grant_committed_as_the_connection_dropped_is_charged_once(
    client, sessions, clock, tmp_path: Path
) -> None:
    device, slow, _ = start(client, sessions, clock, tmp_path / "device", late=0)
    sessionmaker = client.app.state.sessions
    granting: list[bool] = []

    def flushed(session: Session, context: Any) -> None:
        granting.extend(True for row in session.new if isinstance(row, Licence))

    def committed(session: Session) -> None:
        if granting:
            granting.clear()
            event.remove(sessionmaker, "after_commit", committed)
            raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection"))

    event.listen(sessionmaker, "after_flush", flushed)
    event.listen(sessionmaker, "after_commit", committed)
    licence = device.ensure_licence()
    device.close()
    assert granted(sessions) == (10, [10]) and licence.inferences == 10
    assert len(slow.nonces) == 2 and len(set(slow.nonces)) == 1  # the same request, resent
