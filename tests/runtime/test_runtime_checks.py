"""SkRuntime's checks: key files bound to their model file in every platform version,
local checks before the licence, and licensing options that are checked instead of ignored."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from skprotect_pytorch.cli import app as cli_app
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import (
    BackendError,
    ConfigurationError,
    IntegrityError,
    KeyFileError,
    ModelFileError,
    ModelNotFoundError,
    SkRuntime,
)
from skruntime.cli_errors import CliError
from skruntime.cli_keys import read_server_public_key

EF = SkProtectorPyTorch.ExportFormat
X = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
#: nothing listens on port 9 (discard): a licence request would fail
UNREACHABLE = "http://127.0.0.1:9"


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


@pytest.fixture(scope="module")
def outputs(module_workdir: Path) -> Path:
    """Two applications protecting the same model: platform version 0 and the default (2)."""
    for app, version in (("a0", 0), ("b0", 0), ("v2", 2)):
        SkProtectorPyTorch(application_name=app).protect_new_model(
            _net(),
            "net",
            [torch.from_numpy(X)],
            model_export_formats=EF.ONNX,
            platform_version=version,
        )
    both = SkProtectorPyTorch(application_name="both")
    for platform in SkProtectorPyTorch.ExportPlatform:
        both.protect_new_model(
            _net(),
            "net",
            [torch.from_numpy(X)],
            model_export_formats=EF.ONNX,
            deployment_platform=platform,
        )
    return module_workdir / "outputs"


def test_v0_key_files_of_another_protection_are_refused(outputs: Path, tmp_path: Path) -> None:
    """Platform version 0 records no model hash in the configuration, but the key files do:
    key files of another protection must be refused, not combined into garbage outputs."""
    app = shutil.copytree(outputs / "a0", tmp_path / "a0")
    with torch.no_grad():
        expected = _net()(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(SkRuntime(app).load("net")(X), expected, rtol=1e-4, atol=1e-5)
    for name in ("key_params_net.json", "key_vector_inv_net.txt"):
        shutil.copy(outputs / "b0" / "net" / "onnx" / name, app / "net" / "onnx" / name)
    with pytest.raises(KeyFileError, match="written for another protection of model 'net'"):
        SkRuntime(app).load("net")


@pytest.fixture
def licensed(outputs: Path, tmp_path: Path) -> SkRuntime:
    """A licensed runtime whose server is unreachable and that holds no licence yet."""
    app = shutil.copytree(outputs / "v2", tmp_path / "v2")
    return SkRuntime(
        app,
        licence_server=UNREACHABLE,
        server_public_key=bytes(32),
        state_dir=tmp_path / "state",
    )


def test_load_checks_names_and_files_before_the_licence(licensed: SkRuntime) -> None:
    """A typo or a bad file is reported as such, not as an unreachable licence server."""
    with pytest.raises(ModelNotFoundError, match="No model 'nett'"):
        licensed.load("nett")
    with pytest.raises(ModelNotFoundError, match="not protected for format 'torchscript_cpu'"):
        licensed.load("net", "torchscript_cpu")
    model_file = licensed.outputs_dir / "net" / "onnx" / "net.onnx"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="does not match the SHA-256"):
        licensed.load("net")
    model_file.unlink()
    with pytest.raises(ModelFileError, match="not found"):
        licensed.load("net")


@pytest.mark.parametrize(
    "option",
    [
        {"server_public_key": bytes(32)},
        {"state_dir": "state"},
        {"overlap_seconds": 3600},
        {"requested_inferences": None},
        {"requested_inferences": 5},
        {"contract_end_check_seconds": 3600},
        {"transport": object()},
    ],
)
def test_licensing_options_without_licence_server_are_refused(outputs: Path, option: dict) -> None:
    with pytest.raises(ConfigurationError, match=f"{next(iter(option))} is only used with"):
        SkRuntime(outputs / "v2", **option)


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"overlap_seconds": -1}, "overlap_seconds must be a finite number"),
        ({"overlap_seconds": float("nan")}, "overlap_seconds must be a finite number"),
        ({"overlap_seconds": float("inf")}, "overlap_seconds must be a finite number"),
        ({"overlap_seconds": "1h"}, "overlap_seconds must be a finite number"),
        ({"overlap_seconds": True}, "overlap_seconds must be a finite number"),
        ({"contract_end_check_seconds": -1}, "contract_end_check_seconds must be a finite"),
        ({"contract_end_check_seconds": "1d"}, "contract_end_check_seconds must be a finite"),
        ({"requested_inferences": 0}, "requested_inferences must be an int from 1"),
        ({"requested_inferences": 2**63}, "requested_inferences must be an int from 1"),
        ({"requested_inferences": 2.5}, "requested_inferences must be an int from 1"),
        ({"state_dir": 5}, "state_dir must be a folder path"),
        ({"state_dir": ""}, "state_dir must be a folder path"),
    ],
)
def test_invalid_licensing_options_are_configuration_errors(
    outputs: Path, tmp_path: Path, option: dict, match: str
) -> None:
    options = {"state_dir": tmp_path / "state", **option}
    with pytest.raises(ConfigurationError, match=match):
        SkRuntime(
            outputs / "v2", licence_server=UNREACHABLE, server_public_key=bytes(32), **options
        )


def test_defaults_passed_explicitly_without_licence_server_are_fine(outputs: Path) -> None:
    rt = SkRuntime(outputs / "v2", overlap_seconds=30 * 24 * 3600, requested_inferences=10_000)
    assert rt.licence_client is None


def test_both_platforms_without_platform_names_the_cli_option(
    outputs: Path, tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", X)
    result = CliRunner().invoke(
        cli_app, ["run", str(outputs / "both"), "net", "-i", str(tmp_path / "x.npy")]
    )
    assert result.exit_code == 3
    assert "--platform TXT or LINUX" in result.output


@pytest.mark.parametrize(
    "session_options",
    [{"bogus": 1}, {"providers": "CPUExecutionProvider"}, {"providers": ["NoSuchProvider"]}],
)
def test_session_options_are_checked_before_any_file(
    licensed: SkRuntime, session_options: dict
) -> None:
    """Option names and providers are refused before the files are read and the licence asked
    (here: the model file is gone and the licence server unreachable)."""
    (licensed.outputs_dir / "net" / "onnx" / "net.onnx").unlink()
    with pytest.raises(BackendError, match=r"session_options|session option"):
        licensed.load("net", session_options=session_options)


def test_a_platform_whose_configuration_is_absent_names_the_present_one(outputs: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"No LINUX configuration \(skrpl\).*TXT one"):
        SkRuntime(outputs / "v2", platform="LINUX", kek=bytes(32))


def test_an_empty_state_dir_leaves_the_current_folder_alone(
    outputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'' is the current folder: it was made owner-only and given the device key."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(mode=0o755)
    monkeypatch.chdir(cwd)
    np.save(cwd / "x.npy", X)
    licensing = ["--licence-server", UNREACHABLE, "--server-public-key"]
    licensing += [base64.b64encode(bytes(32)).decode(), "--state-dir", ""]
    result = CliRunner().invoke(
        cli_app, ["run", str(outputs / "v2"), "net", "-i", "x.npy", *licensing]
    )
    assert result.exit_code == 2, result.output
    assert "--state-dir: the path is empty (or '.'); pass a folder." in result.output
    assert sorted(p.name for p in cwd.iterdir()) == ["x.npy"]
    assert cwd.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("fmt", [["onnx"], EF.ONNX, None])
def test_a_format_that_is_not_a_string_is_named(outputs: Path, fmt: object) -> None:
    with pytest.raises(ModelNotFoundError, match="fmt must be a format name"):
        SkRuntime(outputs / "v2").load("net", fmt)


def test_linux_without_a_key_names_the_cli_options(outputs: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", X)
    args = [
        "run",
        str(outputs / "both"),
        "net",
        "--platform",
        "LINUX",
        "-i",
        str(tmp_path / "x.npy"),
    ]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 4
    assert "--kek FILE" in result.output


def test_numpy_numbers_are_valid_overlaps(outputs: Path, tmp_path: Path) -> None:
    for overlap in (np.int64(3600), np.float64(1.5), 0):
        with SkRuntime(
            outputs / "v2",
            licence_server=UNREACHABLE,
            server_public_key=bytes(32),
            state_dir=tmp_path / "state",
            overlap_seconds=overlap,
        ) as rt:
            assert rt.licence_client.overlap_seconds == overlap


def test_the_contract_end_check_period_reaches_the_licence_client(
    outputs: Path, tmp_path: Path
) -> None:
    options = {"licence_server": UNREACHABLE, "server_public_key": bytes(32)}
    with SkRuntime(outputs / "v2", state_dir=tmp_path / "state", **options) as rt:
        assert rt.licence_client.contract_end_check_seconds == 24 * 3600
    with SkRuntime(
        outputs / "v2", state_dir=tmp_path / "state", contract_end_check_seconds=600, **options
    ) as rt:
        assert rt.licence_client.contract_end_check_seconds == 600


def test_an_unreadable_server_public_key_file_is_one_usage_error(
    tmp_path: Path, deny_reading: Callable[[Path], None]
) -> None:
    key = tmp_path / "server.pub"
    key.write_bytes(bytes(32))
    deny_reading(key)
    with pytest.raises(CliError, match="cannot be read: Permission denied") as info:
        read_server_public_key(str(key))
    assert info.value.code == 2


def test_a_thread_count_given_twice_is_refused(outputs: Path) -> None:
    """session_options' value used to win silently over intra_op_threads."""
    with pytest.raises(BackendError, match="thread count is given twice"):
        SkRuntime(outputs / "v2").load(
            "net", intra_op_threads=1, session_options={"intra_op_num_threads": 2}
        )
