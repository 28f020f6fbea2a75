"""The audit's cell folder (``AuditConfig.cells``): a stopped run resumes where it stopped with
the same numbers (inside a cell too, from its stored parts), two processes share the work
without computing a cell twice, and damaged or unwritable folders give clear errors without
touching the cells already stored."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import skprotect_pytorch.audit as audit_pkg
import skprotect_pytorch.audit.attacks as attacks_mod
import skprotect_pytorch.audit.cells as cells_mod
from skprotect_pytorch.audit import AuditConfig, run_audit
from skprotect_pytorch.audit.cells import PENDING, CellStore, part
from skprotect_pytorch.audit.suite import ReferenceSpec
from skprotect_pytorch.errors import StateError

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"model": "mlp", "quick": True, "budgets": (1,), "victim_epochs": 2}


def _rows(report) -> list[tuple]:
    return [
        (r.attack, r.variant, r.budget, r.accuracy, r.reference, r.perm_recovered, r.passed)
        for r in report.rows
    ]


def _forbid(monkeypatch, *names: str) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a stored cell was computed again")

    for name in names:
        monkeypatch.setattr(audit_pkg, name, refuse)


def test_a_stopped_run_resumes_with_the_same_numbers(tmp_path, monkeypatch, one_thread):
    config = AuditConfig(**SMALL, attacks=("A0", "A1"), cells=tmp_path)
    first = run_audit(config, log=lambda line: None)
    (folder,) = tmp_path.iterdir()
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "A0-spread.json",
        "A0.json",
        "A1-null@1.json",
        "A1-random@1.json",
        "B@1.json",
        "settings.json",
        "victims.pt",
    ]
    assert first.cells["computed"] == 5 and first.cells["reused"] == 0
    stored = {n: json.loads((folder / f"{n}.json").read_text())["seconds"] for n in ("A0", "B@1")}
    times = first.cells["cell_times"]
    assert sorted(times) == ["A0", "A0-spread", "A1-null@1", "A1-random@1", "B@1"]
    assert all(times[n] == round(t, 1) for n, t in stored.items())
    assert first.cells["cell_seconds"] == pytest.approx(sum(times.values()), abs=0.3)
    assert first.cells["code"] == [cells_mod.code_version()]  # which code computed the cells
    assert json.loads((folder / "B@1.json").read_text())["code"] == cells_mod.code_version()
    assert json.loads((folder / "settings.json").read_text())["model"] == "mlp"

    # the same numbers as a run that keeps its cells in memory
    in_memory = run_audit(AuditConfig(**SMALL, attacks=("A0", "A1")), log=lambda line: None)
    assert _rows(in_memory) == _rows(first) and in_memory.cells == {}

    # a rerun trains nothing and attacks nothing: every cell and both networks are read back
    (folder / "A1-random@1.json").rename(tmp_path / "kept.json")  # as if stopped in that cell
    _forbid(monkeypatch, "baseline_from_scratch", "attack_no_key", "wrong_key_spread")
    monkeypatch.setattr(
        ReferenceSpec, "train_victim", lambda *a, **k: pytest.fail("victim retrained")
    )
    lines: list[str] = []
    resumed = run_audit(config, log=lines.append)
    assert resumed.cells["computed"] == 1 and resumed.cells["reused"] == 4
    assert _rows(resumed) == _rows(first)
    assert any(line.startswith("A1 fine-tune, random key at 1 %") for line in lines)
    assert "1 cells computed, 4 reused from" in resumed.to_markdown()
    assert resumed.cells["cell_times"]["B@1"] == times["B@1"]  # a reused cell keeps its time
    assert f"B@1 {times['B@1']:,.0f}" in resumed.to_markdown()
    assert (
        json.loads((folder / "A1-random@1.json").read_text())["value"]
        == json.loads((tmp_path / "kept.json").read_text())["value"]
    )


class Stopped(Exception):
    """A run killed in the middle of a cell."""


def _stop() -> None:
    raise Stopped


def test_a_stopped_cell_resumes_from_its_stored_parts(tmp_path):
    store = CellStore(tmp_path, {"model": "m"}, log=lambda line: None)
    done: list[str] = []

    def work(name: str, value, stop_at: str | None):
        if name == stop_at:
            raise Stopped
        time.sleep(0.05)
        done.append(name)
        return value

    def cell(stop_at: str | None = None) -> dict:
        first = part("seed0", lambda: work("seed0", 1.5, stop_at))

        def second() -> list[torch.Tensor]:
            return [
                part(f"lr{lr}", lambda lr=lr: work(f"lr{lr}", torch.full((2,), lr), stop_at))
                for lr in (1, 2)
            ]

        keys = [k.tolist() for k in part("seed1", second)]
        return {"first": first, "second": keys, "end": part("end", lambda: work("end", 0, stop_at))}

    def stored() -> list[str]:
        return sorted(str(p.relative_to(parts)) for p in parts.rglob("*.pt"))

    parts = store.folder / "c@1.parts"
    with pytest.raises(Stopped):
        store.try_get("c@1", lambda: cell(stop_at="lr2"))
    assert done == ["seed0", "lr1"]
    assert stored() == ["seed0.pt", "seed1/lr1.pt"]  # seed 1 is not stored yet, its lr1 is
    assert not (store.folder / "c@1.json").exists()
    assert not (store.folder / "c@1.json.claim").exists()  # released: a rerun can compute it

    done.clear()
    with pytest.raises(Stopped):
        store.try_get("c@1", lambda: cell(stop_at="end"))
    assert done == ["lr2"]  # the stored parts are read back, not computed again
    assert stored() == ["seed0.pt", "seed1.pt"]  # a stored part replaces its own parts

    done.clear()
    value = store.try_get("c@1", cell)
    assert done == ["end"]
    assert value == {"first": 1.5, "second": [[1.0, 1.0], [2.0, 2.0]], "end": 0} == cell()
    assert not parts.exists()  # the finished cell replaces its parts
    record = json.loads((store.folder / "c@1.json").read_text())
    assert record["value"] == value
    assert record["seconds"] >= 0.2  # the parts computed before the stops count
    assert store.cell_times["c@1"] == record["seconds"]
    assert record["parts_code"] == [cells_mod.code_version()]
    assert part("free", lambda: 7) == 7  # outside a cell: just computed
    assert sorted(p.name for p in store.folder.iterdir()) == ["c@1.json", "settings.json"]


def test_damaged_parts_are_clear_errors_and_a_full_disk_keeps_the_parts_stored(
    tmp_path, monkeypatch
):
    store = CellStore(tmp_path, {"model": "m"}, log=lambda line: None)

    def cell() -> list:
        return [part(f"seed{s}", lambda s=s: s * 2.0) for s in range(3)]

    with pytest.raises(Stopped):
        store.try_get("c", lambda: [*cell(), part("last", _stop)])
    (store.folder / "c.parts" / "seed1.pt").write_bytes(b"torn")
    with pytest.raises(StateError, match=r"seed1\.pt is unreadable.*delete it"):
        store.try_get("c", cell)
    assert not (store.folder / "c.json.claim").exists()
    (store.folder / "c.parts" / "seed1.pt").unlink()

    def disk_full(path, data, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cells_mod, "atomic_write_bytes", disk_full)
    with pytest.raises(StateError, match=r"c\.parts/seed1\.pt.*free space"):
        store.try_get("c", cell)
    assert sorted(p.name for p in (store.folder / "c.parts").iterdir()) == ["seed0.pt", "seed2.pt"]
    monkeypatch.undo()
    assert store.try_get("c", cell) == [0.0, 2.0, 4.0]


def test_a_run_stopped_inside_a_cell_resumes_with_the_same_numbers(
    tmp_path, monkeypatch, one_thread
):
    small = {**SMALL, "seeds": 2, "attacks": ("A1",)}
    in_memory = run_audit(AuditConfig(**small), log=lambda line: None)
    sweep_best = attacks_mod._sweep_best
    calls: list[int] = []

    def counted(*args, stop_at: int | None = None, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise Stopped
        return sweep_best(*args, **kwargs)

    # B(1 %) is 3 init gains x 2 seeds; the run stops in A1's null key, on its second seed
    monkeypatch.setattr(attacks_mod, "_sweep_best", lambda *a, **k: counted(*a, stop_at=8, **k))
    with pytest.raises(Stopped):
        run_audit(AuditConfig(**small, cells=tmp_path), log=lambda line: None)
    (folder,) = tmp_path.iterdir()
    assert (folder / "B@1.json").exists() and not (folder / "A1-null@1.json").exists()
    assert [p.name for p in (folder / "A1-null@1.parts").iterdir()] == ["seed0.pt"]

    calls.clear()
    monkeypatch.setattr(attacks_mod, "_sweep_best", counted)
    lines: list[str] = []
    resumed = run_audit(AuditConfig(**small, cells=tmp_path), log=lines.append)
    assert "A1-null@1: going on from 1 stored part(s) of a stopped run" in lines
    assert len(calls) == 3  # A1's null key on seed 1, its random key on seeds 0 and 1
    assert _rows(resumed) == _rows(in_memory)
    assert not list(folder.glob("*.parts"))


def test_stored_only_reports_what_the_folder_holds_and_computes_nothing(
    tmp_path, monkeypatch, one_thread
):
    run_audit(AuditConfig(**SMALL, attacks=("A0", "A1"), cells=tmp_path), log=lambda line: None)
    (folder,) = tmp_path.iterdir()
    (folder / "B@1.json").unlink()  # the A1 rows are stored, their baseline is not
    _forbid(monkeypatch, "baseline_from_scratch", "attack_no_key", "attack_finetune")
    config = AuditConfig(**SMALL, attacks=("A0", "A1", "A3"), cells=tmp_path, stored_only=True)
    report = run_audit(config, log=lambda line: None)
    assert [r.attack for r in report.rows] == ["A0"] * 4
    assert report.not_run == [
        "B@1 (not computed yet)",
        "A3@1 (not computed yet)",
        "the rows at 1 % stored but not judged: B(1 %) missing",
    ]
    assert not report.passed  # a partial gate never passes
    assert "Not run: B@1 (not computed yet)" in report.to_markdown()
    assert not (folder / "B@1.json").exists() and not (folder / "A3@1.json").exists()

    with pytest.raises(StateError, match=r"No cells for these settings.*found mlp-"):
        run_audit(
            AuditConfig(**SMALL, attacks=("A0",), cells=tmp_path, stored_only=True, lock_seed=9),
            log=lambda line: None,
        )
    with pytest.raises(ValueError, match=r"give AuditConfig\.cells"):
        run_audit(AuditConfig(**SMALL, stored_only=True), log=lambda line: None)

    # a baseline cell without one accuracy per seed made B(x) NaN, and the A1 rows passed; an
    # attack cell without its rows left the attack out, and the gate passed without it
    config = AuditConfig(**SMALL, attacks=("A0", "A1"), cells=tmp_path, stored_only=True)
    for cell, value, says in (
        ("B@1", "[]", "not 1 accuracies"),
        ("B@1", "[NaN]", "not 1 accuracies"),
        ("B@1", "[0.5, 0.5]", "not 1 accuracies"),
        ("B@1", '{"rows": []}', "not 1 accuracies"),
        ("A1-null@1", '{"rows": []}', "not rows of A1 with 1 accuracies"),
        ("A0", '{"rows": [{"attack": "A1", "accuracies": [0.1]}]}', "not rows of A0"),
        (  # a string: "not measured at s, e, e, d, ..."
            "A1-null@1",
            '{"rows": [{"attack": "A1", "accuracies": [0.1], "unmeasured": "seed 0"}]}',
            "not rows of A1 with 1 accuracies in \\[0, 1\\] each and, if any, a list of unmeasured",
        ),
    ):
        path = folder / f"{cell}.json"
        stored = path.read_text() if path.exists() else None  # B@1 was deleted above
        path.write_text(f'{{"value": {value}, "seconds": 1.0}}')
        with pytest.raises(StateError, match=rf"{cell}\.json holds .*{says}.*delete it"):
            run_audit(config, log=lambda line: None)
        if stored is None:
            path.unlink()
        else:
            path.write_text(stored)
    assert len(run_audit(config, log=lambda line: None).rows) == 4  # A0's: the cells put back


def test_other_settings_get_their_own_folder(tmp_path, one_thread):
    run_audit(AuditConfig(**SMALL, attacks=("A0",), cells=tmp_path), log=lambda line: None)
    run_audit(
        AuditConfig(**SMALL, attacks=("A0",), cells=tmp_path, lock_seed=7), log=lambda line: None
    )
    folders = sorted(tmp_path.iterdir())
    assert len(folders) == 2
    seeds = {json.loads((f / "settings.json").read_text())["lock_seed"] for f in folders}
    assert seeds == {1, 7}


def test_a_claimed_cell_is_left_to_its_holder_until_the_holder_dies(tmp_path):
    store = CellStore(tmp_path, {"model": "m"}, poll_s=0.05)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claim = store.folder / "x.json.claim"
        claim.write_text(f"{cells_mod.socket.gethostname()} {holder.pid}\n")
        assert store.try_get("x", lambda: pytest.fail("computed a claimed cell")) is PENDING
    finally:
        holder.kill()
        holder.wait()
    assert store.try_get("x", lambda: 42) == 42  # the dead holder's claim is taken over
    assert not claim.exists() and store.computed == 1

    # a live holder that finishes while we wait: its value, not ours
    claim = store.folder / "y.json.claim"
    claim.write_text(f"{cells_mod.socket.gethostname()} {os.getpid()} {cells_mod.CLAIM_TOKEN}\n")

    def finish() -> None:
        time.sleep(0.3)
        record = {"value": "theirs", "seconds": 5.0, "host": "h"}
        (store.folder / "y.json").write_text(json.dumps(record))
        claim.unlink()

    thread = threading.Thread(target=finish)
    thread.start()
    assert store.get("y", lambda: "ours") == "theirs"
    thread.join()
    assert store.reused == 1 and store.cell_times["y"] == 5.0


def test_a_claim_left_by_a_killed_run_with_our_pid_is_taken_over(tmp_path):
    """A restarted container has the same host name and often the same pid (1): the killed
    run's claim looked alive, and the run waited for itself forever."""
    store = CellStore(tmp_path, {"model": "m"}, poll_s=0.05)
    host = cells_mod.socket.gethostname()
    for name, text in (
        ("old", f"{host} {os.getpid()}\n"),  # a claim written before claims had a token
        ("other", f"{host} {os.getpid()} 0123456789abcdef\n"),  # another process's token
    ):
        (store.folder / f"{name}.json.claim").write_text(text)
        assert store.get(name, lambda: 7) == 7
        assert not (store.folder / f"{name}.json.claim").exists()
    assert store.computed == 2


def test_a_run_waiting_for_a_claim_says_which_file_to_delete(tmp_path):
    """It waited in silence, forever when the holder had died on another host."""
    lines: list[str] = []
    store = CellStore(tmp_path, {"model": "m"}, poll_s=0.05, log=lines.append)

    def claimed(name: str) -> None:
        claim = store.folder / f"{name}.claim"
        claim.write_text("elsewhere 123\n")  # another host: cannot be checked, assumed alive
        threading.Timer(0.3, claim.unlink).start()

    claimed("c.json")
    assert store.get("c", lambda: 5) == 5
    claimed("victims.pt")
    store.modules("victims", lambda: nn.Linear(2, 2), lambda: {"v": nn.Linear(2, 2)})
    waits = [line for line in lines if line.startswith("waiting for")]
    assert len(waits) == 2 and "claimed by elsewhere 123" in waits[0]
    assert "c.json.claim" in waits[0] and "victims.pt.claim" in waits[1]
    assert all("delete the claim file" in line for line in waits)


def test_damaged_cells_and_unwritable_folders_are_clear_errors(tmp_path, monkeypatch):
    store = CellStore(tmp_path, {"model": "m"})
    store.try_get("good", lambda: [1, 2])
    (store.folder / "bad.json").write_text("{")
    with pytest.raises(StateError, match=r"bad\.json is unreadable.*delete it"):
        store.try_get("bad", lambda: 0)
    (store.folder / "victims.pt").write_bytes(b"not a state dict")
    with pytest.raises(StateError, match="delete the whole cell folder"):
        store.modules("victims", lambda: None, lambda: {})

    def disk_full(path, data, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cells_mod, "atomic_write_bytes", disk_full)
    with pytest.raises(StateError, match="free space"):
        store.try_get("new", lambda: 1)
    assert not (store.folder / "new.json").exists()
    assert not (store.folder / "new.json.claim").exists()  # released: a rerun can compute it
    assert store.try_get("good", lambda: pytest.fail("recomputed")) == [1, 2]

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="writable folder"):
        CellStore(blocker, {"model": "m"})


@pytest.mark.slow
def test_two_processes_share_the_cells_and_compute_each_once(tmp_path):
    """Two gate runs on one cell folder, started together: each cell is computed by one of
    them, and both reports hold every row with the same numbers."""
    command = [
        sys.executable,
        str(ROOT / "bench" / "audit_gate.py"),
        "--quick",
        "--models",
        "mlp",
        "--budgets",
        "1,2",  # two budgets; 5 % instead of 2 took 4 of the 6 s of cells
        "--attacks",
        "A0,A1,A3",
        "--victim-epochs",
        "2",
        "--cells",
        str(tmp_path / "cells"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(
            [*command, "--out", str(tmp_path / f"out{i}")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    reports = [
        json.loads((tmp_path / f"out{i}" / "audit_gate.json").read_text())["models"]["mlp"]
        for i in range(2)
    ]
    n_cells = 2 + 2 * (1 + 2 + 1)  # A0 and its spread; per budget B, A1 null and random, A3
    assert sum(r["cells"]["computed"] for r in reports) == n_cells
    assert all(r["cells"]["computed"] + r["cells"]["reused"] == n_cells for r in reports)
    assert reports[0]["rows"] == reports[1]["rows"] and len(reports[0]["rows"]) == 4 + 2 * 3
