"""Exports that trace with ``torch.export`` take turns across threads.

A dynamo ONNX export beside another one, or beside an AOTInductor export, in two threads at
once failed: "ProxyTorchDispatchMode slot already occupied", "CURRENT_PATCHER is None in finally
block", "Unable to cast NotImplemented to Tensor" (ONNX), "Trying to pop empty mode stack"
(AOTInductor) — 3 of 4 pairs of ONNX exports, and an AOTInductor export beside a loop of ONNX
exports (1 ONNX failure in 19). Only AOTInductor exports took turns, among themselves."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from tests.export.toy_models import Toy
from torch import nn

from skprotect_pytorch import dynamic_axes
from skprotect_pytorch.export import build_export_options, get_exporter
from skprotect_pytorch.formats import ExportFormat
from skprotect_pytorch.lock import lock_model

_MEETING_S = 2.0
"""How long a trace waits for the other thread's trace to join it: a bound, not a delay the
test relies on; when exports take turns, each first trace waits this long, alone."""


class Meeting:
    """Where the traced forwards of two threads meet: each thread's first forward waits for the
    other's to be running too (up to :data:`_MEETING_S`), so two traces that can run at once do,
    every time; records how many threads were tracing when each first forward went on."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.tracing: set[int] = set()
        self.met: set[int] = set()
        self.seen: list[int] = []

    def enter(self) -> None:
        """The forward of the current thread begins."""
        me = threading.get_ident()
        with self.changed:
            self.tracing.add(me)
            self.changed.notify_all()
            if me not in self.met:
                self.met.add(me)
                self.changed.wait_for(lambda: len(self.tracing) > 1, timeout=_MEETING_S)
                self.seen.append(len(self.tracing))

    def leave(self) -> None:
        """The forward of the current thread ends."""
        with self.changed:
            self.tracing.discard(threading.get_ident())
            self.changed.notify_all()


class MeetingToy(Toy):
    """:class:`Toy` whose forward meets the other thread's (:class:`Meeting`)."""

    def __init__(self, meeting: Meeting) -> None:
        super().__init__()
        self.meeting = meeting

    def forward(self, x, key):
        self.meeting.enter()
        try:
            return super().forward(x, key)
        finally:
            self.meeting.leave()


def _export_in_two_threads(fmts: tuple[ExportFormat, ExportFormat], tmp_path) -> list[int]:
    """Export one :class:`MeetingToy` per format in two threads at once; check that each
    artifact computes its model; return how many traces ran as each first one went on."""
    torch.manual_seed(0)
    meeting = Meeting()
    x, key = torch.randn(2, 8), torch.ones(8)
    params = {"input_names": ["x"], "dynamo": True}  # the ONNX exporter with torch.export
    opts = build_export_options([x], params)
    modules = [MeetingToy(meeting).eval() for _ in fmts]
    errors: list[BaseException] = []
    paths = {}

    def export(i: int) -> None:
        exporter = get_exporter(fmts[i])
        try:
            report = exporter.export(
                modules[i], (x, key), tmp_path / f"{i}{exporter.extension}", opts, with_key=True
            )
            paths[i] = report.path
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=export, args=(i,)) for i in range(len(fmts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for i, fmt in enumerate(fmts):
        run = get_exporter(fmt).load(paths[i], opts)
        with torch.no_grad():
            expected = modules[i].lin(x) * key[:4].sum()
        np.testing.assert_allclose(run([x.numpy(), key.numpy()])[0], expected.numpy(), 1e-5)
    return meeting.seen


def test_two_dynamo_onnx_exports_take_turns(tmp_path):
    """Both traced at once before (the meeting took place), and failed."""
    seen = _export_in_two_threads((ExportFormat.ONNX, ExportFormat.ONNX), tmp_path)
    assert seen == [1, 1]


@pytest.mark.slow
def test_a_dynamo_onnx_export_and_an_aotinductor_export_take_turns(tmp_path):
    """They took no turns between them: one lock for every export that uses torch.export."""
    seen = _export_in_two_threads((ExportFormat.ONNX, ExportFormat.INDUCTOR_CPU), tmp_path)
    assert seen == [1, 1]


class MeetingLinear(nn.Module):
    """A linear layer whose forward meets the other thread's (:class:`Meeting`)."""

    def __init__(self, meeting: Meeting) -> None:
        super().__init__()
        self.meeting = meeting
        self.lin = nn.Linear(8, 4)

    def forward(self, x):
        self.meeting.enter()
        try:
            return self.lin(x)
        finally:
            self.meeting.leave()


def test_the_protections_reference_export_takes_its_turn(tmp_path):
    """A protection exports the model itself to name its ``Dim.AUTO`` axes
    (``dynamic_axes.export_reference``) and took no turn: beside an ONNX export of another
    protection's thread, both failed in 4 of 4 rounds ("ProxyTorchDispatchMode slot already
    occupied", "Trying to pop empty mode stack"), the reference export logging a warning and
    recording the axes unnamed."""
    meeting = Meeting()
    x, key = torch.randn(2, 8), torch.ones(8)
    onnx_opts = build_export_options([x], {"input_names": ["x"], "dynamo": True})
    auto = ({0: torch.export.Dim.AUTO},)
    reference_opts = build_export_options([x], {"input_names": ["x"]}, auto)
    errors: list[BaseException] = []
    programs = []

    def export_onnx() -> None:
        exporter = get_exporter(ExportFormat.ONNX)
        module = MeetingToy(meeting).eval()
        try:
            exporter.export(module, (x, key), tmp_path / "m.onnx", onnx_opts, with_key=True)
        except Exception as err:
            errors.append(err)

    def export_reference() -> None:
        model = MeetingLinear(meeting).eval()
        programs.append(dynamic_axes.export_reference(model, reference_opts, [x]))

    threads = [threading.Thread(target=export_onnx), threading.Thread(target=export_reference)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(programs) == 1 and programs[0] is not None
    assert meeting.seen == [1, 1]


class MeetingKeyed(nn.Module):
    """A locked model's keyed forward that meets the other thread's (:class:`Meeting`) and
    notes whether the process was exporting to ONNX as it ran."""

    def __init__(self, meeting: Meeting, keyed: nn.Module) -> None:
        super().__init__()
        self.meeting = meeting
        self.keyed = keyed
        self.in_onnx_export: list[bool] = []

    def forward(self, x, key):
        self.meeting.enter()
        try:
            self.in_onnx_export.append(torch.onnx.is_in_onnx_export())
            return self.keyed(x, key)
        finally:
            self.meeting.leave()


def test_a_torchscript_export_takes_its_turn_beside_an_onnx_export(tmp_path):
    """An ONNX export marks the whole process as exporting to ONNX, and the lock's channel
    mixing takes its ONNX form (grouped 1x1 convs) then: a TorchScript export traced in
    another thread meanwhile shipped 7 convs and no MatMul where alone it ships 3 convs and 4
    MatMuls (the same outputs, slower: ATen runs the grouped convs one group at a time)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    locked = lock_model(
        net.eval(), layer_filter=lambda name, module: True, secret_rng=np.random.default_rng(0)
    )
    x, key = torch.randn(2, 3, 8, 8), torch.from_numpy(locked.layout.static_key())
    ts_opts = build_export_options([x], {"input_names": ["x"]})
    torchscript = get_exporter(ExportFormat.TORCHSCRIPT_CPU)

    def graph_of(module: nn.Module, name: str) -> str:
        path = tmp_path / name
        torchscript.export(module, (x, key), path, ts_opts, with_key=True)
        return str(torch.jit.load(str(path)).graph)

    alone = graph_of(MeetingKeyed(Meeting(), locked.keyed).eval(), "alone.pt")
    assert "matmul" in alone

    meeting = Meeting()
    toy_x, toy_key = torch.randn(2, 8), torch.ones(8)
    onnx_opts = build_export_options([toy_x], {"input_names": ["x"], "dynamo": True})
    beside = MeetingKeyed(meeting, locked.keyed).eval()
    errors: list[BaseException] = []
    graphs = []

    def export_onnx() -> None:
        module = MeetingToy(meeting).eval()
        try:
            get_exporter(ExportFormat.ONNX).export(
                module, (toy_x, toy_key), tmp_path / "m.onnx", onnx_opts, with_key=True
            )
        except Exception as err:
            errors.append(err)

    def export_torchscript() -> None:
        graphs.append(graph_of(beside, "beside.pt"))

    threads = [threading.Thread(target=export_onnx), threading.Thread(target=export_torchscript)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(graphs) == 1
    assert beside.in_onnx_export and not any(beside.in_onnx_export)
    assert graphs[0].count("conv") == alone.count("conv")
    assert graphs[0].count("matmul") == alone.count("matmul")
    assert meeting.seen == [1, 1]
