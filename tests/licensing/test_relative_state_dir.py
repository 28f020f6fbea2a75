"""A relative ``state_dir`` named the folder under the working folder of the moment: once the
application changed it (a daemon's ``chdir("/")``), every count, renewal and close read and
wrote another folder ("Cannot write device/.usage_demo-app.lock"), or forked the state in one
that exists there. ``SkRuntime.outputs_dir`` was made absolute on 2026-12-07; the state folder
is too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.licensing.server_helpers import Clock, device_client, sqlite_server

from skruntime.licensing.protocol import unb64


def test_a_relative_state_dir_stays_the_same_folder_after_chdir(
    tmp_path: Path, state_dir: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sqlite_server(tmp_path, state_dir, clock) as (client, _):
        pinned = unb64(client.get("/v1/public-key").json()["public_key"])
        monkeypatch.chdir(tmp_path)
        runtime = device_client(
            "http://testserver",
            client._transport,
            pinned,
            "device",
            clock,
            requested_inferences=100,
        )
        assert runtime.state_dir == tmp_path / "device"
        runtime.consume(1)
        elsewhere = tmp_path / "elsewhere"
        (elsewhere / "device").mkdir(parents=True)
        os.chdir(elsewhere)
        runtime.consume(1)
        runtime.close()
        assert not any((elsewhere / "device").iterdir())
        assert (tmp_path / "device" / "usage_demo-app.json").exists()
