"""``sigterm_handled_by``: the one main-thread guard of the command lines' SIGTERM handlers
(``sigterm_as_interrupt`` and ``sklicense serve``'s default action for uvicorn), which
``serve`` repeated."""

from __future__ import annotations

import signal
import threading

from skruntime.cli import sigterm_handled_by


def test_the_handler_is_set_within_the_block_and_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_handled_by(signal.SIG_DFL):
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is before


def test_another_thread_changes_nothing() -> None:
    """``signal.signal`` raises ValueError outside the main thread."""
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def serve() -> None:
        with sigterm_handled_by(signal.SIG_IGN):
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    assert seen == [before]
    assert signal.getsignal(signal.SIGTERM) is before
