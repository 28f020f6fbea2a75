"""A thief holding only a shipped LINUX folder (outputs/<app>/) must not find the key there; when
the folder does hold it in plain files, the protector says so (skprotect_pytorch.shared_files).
"""

from __future__ import annotations

import copy
import pickle
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from skprotect_pytorch import Customer
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
X = torch.randn(2, 6, generator=torch.Generator().manual_seed(5))
PLAIN_KEY_WARNING = r"net/onnx/key_vector_inv_net\.txt.*unlocks the LINUX files"


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def protect(protector: SkProtectorPyTorch, platform: EP, *, update: bool = False, **kwargs) -> None:
    """Protect (or with ``update``, protect again) the test model for ``platform``."""
    method = protector.protect_updated_model if update else protector.protect_new_model
    method(
        make_model(),
        "net",
        [X],
        model_export_formats=EF.ONNX,
        deployment_platform=platform,
        customer=Customer(3, "Acme"),
        **kwargs,
    )


def thief_runs_linux_model(out: Path) -> bool:
    """Whether the plain key file in the folder runs the LINUX model file without a licence."""
    key = np.loadtxt(out / "net" / "onnx" / "key_vector_inv_net.txt", dtype=np.float32)
    session = ort.InferenceSession(str(out / "net" / "onnx" / "net.onnx"))
    y = session.run(None, {"input.1": X.numpy(), "key_vector": key})[0]
    with torch.no_grad():
        ref = make_model()(X).numpy()
    return bool(np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max())


def test_linux_after_txt_warns_that_the_txt_key_ships_beside_it(workdir: Path) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    protect(protector, EP.TXT, test_key=True)
    with pytest.warns(UserWarning, match=PLAIN_KEY_WARNING):
        protect(protector, EP.LINUX)
    assert (protector.outputs_dir / "skrpl").is_file()
    assert thief_runs_linux_model(protector.outputs_dir)  # why the warning matters


def test_txt_after_linux_warns_too(workdir: Path) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    protect(protector, EP.LINUX)
    with pytest.warns(UserWarning, match=PLAIN_KEY_WARNING):
        protect(protector, EP.TXT)


def test_linux_test_key_warns(workdir: Path) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.warns(UserWarning, match=PLAIN_KEY_WARNING):
        protect(protector, EP.LINUX, test_key=True)


def test_a_linux_only_folder_holds_no_plain_key_and_does_not_warn(workdir: Path) -> None:
    protector = SkProtectorPyTorch(application_name="app", save_logs=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        protect(protector, EP.LINUX)
    shipped = sorted(
        p.relative_to(protector.outputs_dir).as_posix()
        for p in protector.outputs_dir.rglob("*")
        if p.is_file()
    )
    assert shipped == ["net/onnx/mev_net_onnx.bin", "net/onnx/net.onnx", "skrpl"]
    kek = protector.state.kek
    for path in [*protector.outputs_dir.rglob("*"), *(workdir / "log").rglob("*")]:
        if path.is_file():
            assert kek not in path.read_bytes(), path


def test_stale_unlocked_originals_are_named_when_not_written_again(workdir: Path) -> None:
    """An update without save_original used to leave the earlier plaintext copies in the shipped
    folder, unlisted in its summary."""
    protector = SkProtectorPyTorch(application_name="app")
    protect(protector, EP.LINUX, save_original=True)
    with pytest.warns(UserWarning, match=r"net/original still holds unlocked copies.*net_onnx"):
        protect(protector, EP.LINUX, update=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # written on purpose: listed, no warning
        protect(protector, EP.LINUX, update=True, save_original=True)


@pytest.mark.parametrize("dump", [pickle.dumps, copy.deepcopy])
def test_the_master_secret_cannot_be_pickled(workdir: Path, dump) -> None:
    """Pickling a protector that had opened its state used to write the master secret (every key
    and the KEK derive from it) in plain bytes into the pickle."""
    protector = SkProtectorPyTorch(application_name="app")
    state = protector.state  # opened (as by any protection): the secret is now in memory
    assert state._master == (workdir / ".skprotect_private" / "app" / "master.key").read_bytes()
    for obj in (protector, state):
        with pytest.raises(TypeError, match="holds the application's master secret"):
            dump(obj)


class WithTable(nn.Module):
    """A model with a plaintext tensor (an embedding table) that the protector warns about."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(10, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.table(ids))


def test_the_protectors_warnings_point_at_the_callers_line(workdir: Path) -> None:
    """Each warning names the line of the user's call (so that warning filters and tracebacks
    find it), not a line inside skprotect: plaintext tensors, skipped GPU formats, a file of the
    other platform replaced, plain keys beside a LINUX deployment, stale unlocked copies."""
    ids = torch.tensor([[1, 2, 3]])
    protector = SkProtectorPyTorch(application_name="app")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        protector.protect_new_model(
            WithTable().eval(), "net", [ids], model_export_formats=EF.ONNX, test_key=True
        )
        protector.protect_new_model(
            WithTable().eval(),
            "net",
            [ids],
            model_export_formats=EF.ONNX | EF.TORCHSCRIPT_GPU,
            deployment_platform=EP.LINUX,
            customer=Customer(3, "Acme"),
            save_original=True,
        )
        protector.protect_updated_model(
            WithTable().eval(),
            "net",
            [ids],
            model_export_formats=EF.ONNX,
            deployment_platform=EP.LINUX,
            customer=Customer(3, "Acme"),
        )
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning | UserWarning)]
    said = " | ".join(str(w.message) for w in ours)
    for expected in ("plaintext", "key of model 'net' in plain files", "unlocked copies"):
        assert expected in said
    assert {(Path(w.filename).name, w.category.__name__) for w in ours} <= {
        (Path(__file__).name, "RuntimeWarning"),
        (Path(__file__).name, "UserWarning"),
    }, [(w.filename, w.lineno, str(w.message)[:50]) for w in ours]
