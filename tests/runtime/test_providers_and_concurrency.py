"""The runtime's providers and concurrency: a GPU provider onnxruntime could not create,
one runtime used by 8
threads, and runtimes sharing one outputs folder and one licence state folder, counted exactly
against a real ``sklicense`` server (SQLite) on loopback."""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from sqlalchemy import func, select
from tests.runtime.licence_worker import count_in_a_process
from torch import nn

from sklicense import crud, db
from sklicense.crypto import create_signing_key
from sklicense.embedded import EmbeddedServer
from sklicense.models import UsageReport
from sklicense.settings import Settings
from skprotect_pytorch import Customer
from skprotect_pytorch.protect import SkProtectorPyTorch
from skprotect_pytorch.state import ProtectionState
from skruntime import BackendError, SkRuntime
from skruntime.config import PLATFORMS
from skruntime.keyfile import TxtKeySource
from skruntime.keysource import KEY_SOURCES
from skruntime.licensing.protocol import b64, unb64
from skruntime.mev import LinuxKeySource

EF = SkProtectorPyTorch.ExportFormat
APP = "h4app"
CUSTOMER = 42
FORMATS = ("onnx", "torchscript_cpu", "inductor_cpu")
X = np.random.default_rng(4).standard_normal((3, 6)).astype(np.float32)
THREADS = 8
CALLS = 25
PROCESS_CALLS = 150


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


@dataclasses.dataclass(frozen=True)
class Live:
    """The protected application and a running licence server that knows it."""

    outputs: Path
    url: str
    public_key: bytes
    sessions: Any

    def runtime(self, state: Path, **kwargs: Any) -> SkRuntime:
        return SkRuntime(
            self.outputs,
            licence_server=self.url,
            server_public_key=self.public_key,
            state_dir=state,
            **kwargs,
        )

    def reported(self) -> int:
        """Inferences reported to the server, all licences together."""
        with self.sessions() as session:
            rows = session.execute(
                select(UsageReport.licence_id, func.max(UsageReport.counter)).group_by(
                    UsageReport.licence_id
                )
            )
            return sum(counter for _, counter in rows)


@pytest.fixture(scope="module")
def live(module_workdir: Path) -> Iterator[Live]:
    """A platform-version-2 TXT application of customer 42 (every CPU format, dynamic batch)
    and a server with a quota far above what the tests use."""
    SkProtectorPyTorch(application_name=APP).protect_new_model(
        _net(),
        "net",
        [torch.from_numpy(X)],
        model_export_formats=EF.ONNX | EF.TORCHSCRIPT_CPU | EF.INDUCTOR_CPU,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
        customer=Customer(CUSTOMER, "Acme"),
    )
    app_key = ProtectionState.open(APP, create=False).public_key_bytes
    url = f"sqlite:///{module_workdir / 'sklicense.db'}"
    db.upgrade(url)
    create_signing_key(module_workdir / "server" / "server.key")
    sessions = db.session_factory(url)
    with sessions.begin() as session:
        crud.create_application(session, APP, None, "test", public_key=b64(app_key))
        crud.create_customer(
            session,
            "test",
            id=CUSTOMER,
            name="Acme",
            contract_end=None,
            inference_quota=1_000_000,
            max_devices=100,
            default_licence_seconds=3600,
        )
    settings = Settings(
        database_url=url,
        state_dir=module_workdir / "server",
        licence_requests_per_minute=100_000,
        new_device_requests_per_minute=100_000,
        usage_reports_per_minute=100_000,
    )
    with EmbeddedServer(settings) as server:
        public_key = unb64(httpx.get(f"{server.url}/v1/public-key").json()["public_key"])
        yield Live(module_workdir / "outputs" / APP, server.url, public_key, sessions)


@pytest.mark.parametrize(
    "session_options",
    [None, {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}],
    ids=["device", "providers"],
)
def test_a_gpu_provider_onnxruntime_cannot_create_is_a_backend_error(
    live: Live, monkeypatch: pytest.MonkeyPatch, session_options: dict | None
) -> None:
    """onnxruntime drops a listed provider it cannot create (CUDA listed as available, its
    libraries missing) with only a warning, and builds the session on the CPU: load() returned
    a model said to run on the GPU that ran on the CPU."""
    available = ort.get_available_providers()
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *available]
    )
    rt = SkRuntime(live.outputs)
    message = (
        r"could not create the execution provider\(s\) CUDAExecutionProvider for .*net\.onnx: "
        r"the session would run on CPUExecutionProvider only\. onnxruntime's warning on stderr "
        r"says why \(e\.g\. a CUDA or cuDNN library it could not load\)\. GPU providers need the "
        r"CUDA and cuDNN libraries .* or ask for the CPU \(device='cpu'\)\."
    )
    with (
        pytest.warns(UserWarning, match="not in available provider names"),
        pytest.raises(BackendError, match=message),
    ):
        rt.load("net", "onnx", device="cuda", session_options=session_options)


def test_a_gpu_provider_that_fails_to_start_is_not_replaced_by_the_cpu(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU provider whose creation raises (its cuDNN cannot be loaded): onnxruntime printed
    the error and built the session on the CPU again, and load() returned it."""
    from onnxruntime.capi import onnxruntime_inference_collection as collection

    create = collection.InferenceSession._create_inference_session

    def cuda_fails(self: Any, providers: Any, *args: Any, **kwargs: Any) -> Any:
        if any("CUDAExecutionProvider" in str(p) for p in providers or ()):
            self._fallback_providers = ["CPUExecutionProvider"]  # as onnxruntime sets it first
            raise RuntimeError("libcudnn.so.9: cannot open shared object file")
        return create(self, providers, *args, **kwargs)

    monkeypatch.setattr(collection.InferenceSession, "_create_inference_session", cuda_fails)
    available = ort.get_available_providers()
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *available]
    )
    with pytest.raises(BackendError, match=r"libcudnn\.so\.9: cannot open .* GPU providers need"):
        SkRuntime(live.outputs).load("net", "onnx", device="cuda")


@pytest.mark.parametrize("fmt", FORMATS)
def test_eight_threads_on_one_licensed_runtime_count_exactly(
    live: Live, tmp_path: Path, fmt: str
) -> None:
    """8 threads call one loaded model, then 8 threads each load and call their own, with
    licences of 7 inferences (renewed while the threads run): every output is bitwise the
    single-threaded one, nothing fails, and the server is told exactly the calls made."""
    expected = SkRuntime(live.outputs).load("net", fmt)(X)
    before = live.reported()
    rt = live.runtime(tmp_path / "device", requested_inferences=7)
    shared = rt.load("net", fmt)
    outputs: list[np.ndarray] = []
    errors: list[BaseException] = []

    def call(own: bool) -> None:
        try:
            for _ in range(CALLS):
                if own:
                    with rt.load("net", fmt) as model:
                        outputs.append(model(X))
                else:
                    outputs.append(shared(X))
        except BaseException as e:  # asserted below, with the outputs
            errors.append(e)

    for own in (False, True):
        threads = [threading.Thread(target=call, args=(own,)) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    shared.close()
    rt.close()
    assert errors == []
    assert len(outputs) == 2 * THREADS * CALLS
    assert all(np.array_equal(y, expected) for y in outputs)
    assert live.reported() - before == 2 * THREADS * CALLS


def test_two_processes_sharing_outputs_and_state_count_exactly(live: Live, tmp_path: Path) -> None:
    """Two processes call the same outputs folder at the same time with one licence state
    folder and licences of 3 inferences: both get the single-process outputs, and the server is
    told exactly the calls made. One of them failed now and then with "The new licence grants 3
    inferences, fewer than the 1 asked" (the other took the licence it had just renewed)."""
    expected = SkRuntime(live.outputs).load("net")(X)
    before = live.reported()
    context = multiprocessing.get_context("spawn")
    results, start = context.Queue(), context.Barrier(2)
    args = (live.outputs, live.url, live.public_key, tmp_path / "device", X, PROCESS_CALLS)
    processes = [
        context.Process(target=count_in_a_process, args=(*args, start, results)) for _ in range(2)
    ]
    for p in processes:
        p.start()
    outputs = [results.get(timeout=300) for _ in processes]
    for p in processes:
        p.join(timeout=60)
    assert not [o for o in outputs if isinstance(o, str)]
    assert [p.exitcode for p in processes] == [0, 0]
    assert all(np.array_equal(np.asarray(y, np.float32), expected) for o in outputs for y in o)
    assert live.reported() - before == 2 * PROCESS_CALLS


def test_a_licence_another_runtime_takes_first_is_renewed_again(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runtimes sharing a state folder: B, its licence used up, takes the licence A has just
    renewed (and cached) before A counts on it. A's call failed with "The new licence grants 2
    inferences, fewer than the 1 asked" and A refused every call for retry_seconds (300 s),
    while the customer's quota had 999,000 inferences left."""
    state = tmp_path / "device"
    before = live.reported()
    rt_a = live.runtime(state, requested_inferences=2)
    rt_b = live.runtime(state, requested_inferences=2)
    a, b = rt_a.load("net"), rt_b.load("net")
    a(X), a(X)  # licence L1, used up by A
    b(X), b(X)  # L1 is used up: B renews to L2 and uses it up
    # below, B waits for the renewal lock A holds, in this thread: until its bound (three
    # request timeouts, 15 s), then goes on without it; half a second ends the same way
    renewal_lock = rt_b.licence_client._renewal_lock
    monkeypatch.setattr(
        rt_b.licence_client, "_renewal_lock", lambda *, wait: renewal_lock(wait=min(wait, 0.5))
    )
    client = rt_a.licence_client
    request = client._request

    renewals: list[Any] = []

    def request_then_b_runs(*args: Any) -> Any:
        licence = request(*args)
        renewals.append(licence)
        if len(renewals) == 1:  # L3, cached for the state folder
            b(X), b(X)  # L2 is used up: B takes the cached L3, reserving all of it, uses it up
        return licence

    monkeypatch.setattr(client, "_request", request_then_b_runs)
    a(X)  # renews to L3, finds it reserved by B: renews again (L4)
    a(X)
    assert len(renewals) == 2
    assert client.ensure_licence().licence_id != rt_b.licence_client.ensure_licence().licence_id
    for model in (a, b):
        model.close()
    rt_a.close()
    rt_b.close()
    assert live.reported() - before == 8


def test_every_platform_has_one_key_source() -> None:
    """Each platform reads its keys through one module behind :class:`KeySource`."""
    assert set(KEY_SOURCES) == set(PLATFORMS)
    assert {"TXT": TxtKeySource, "LINUX": LinuxKeySource} == KEY_SOURCES


def test_a_gpu_failure_during_a_run_is_not_retried_on_the_cpu_by_onnxruntime_1_20(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime 1.20, the oldest this package takes, ignores ``InferenceSession(...,
    enable_fallback=False)`` (1.32 reads it): with the fallback not turned off otherwise, a
    provider failing in run() made onnxruntime rebuild the session on its fallback providers
    (from bytes dropped after loading) instead of raising."""
    from onnxruntime.capi import _pybind_state as C
    from onnxruntime.capi import onnxruntime_inference_collection as collection

    init = collection.Session.__init__
    monkeypatch.setattr(  # as in 1.20: the keyword is not read, fallback is on
        collection.Session, "__init__", lambda self, enable_fallback=True: init(self, True)
    )
    model = SkRuntime(live.outputs).load("net", "onnx", device="cpu")
    session = model._backend._session  # type: ignore[union-attr]

    class FailingProvider:
        """The session's provider, failing in run()."""

        def __init__(self, sess: Any) -> None:
            self.sess = sess

        def __getattr__(self, name: str) -> Any:
            return getattr(self.sess, name)

        def run(self, *args: Any) -> Any:
            raise C.EPFail("CUDA failure 700: an illegal memory access was encountered")

    monkeypatch.setattr(session, "_sess", FailingProvider(session._sess))
    rebuilt: list[Any] = []
    monkeypatch.setattr(session, "set_providers", lambda *a, **k: rebuilt.append(a))
    with pytest.raises(BackendError, match="CUDA failure 700"):
        model(X)
    assert rebuilt == []
