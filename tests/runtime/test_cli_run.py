"""``skprotect run``: the runner CLI end to end, from the protector's outputs to .npy/.npz files."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from skprotect_pytorch.cli import app
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime.backends import onnxruntime as ort_backend
from skruntime.backends.base import BackendOptions
from skruntime.cli_keys import read_kek

EF = SkProtectorPyTorch.ExportFormat
APP = "cliapp"
BATCH = torch.export.Dim("batch", min=1, max=64)


class TwoInTwoOut(nn.Module):
    """Two inputs (x, y) and two outputs (logits, feat): exercises ordering and .npz names."""

    def __init__(self) -> None:
        super().__init__()
        self.fx = nn.Linear(8, 16)
        self.fy = nn.Linear(4, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.fx(x) + self.fy(y))
        return self.head(h), h.mean(dim=1)


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 5)).eval()


def make_two() -> nn.Module:
    torch.manual_seed(1)
    return TwoInTwoOut().eval()


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def invoke(*args: str | Path) -> object:
    return CliRunner().invoke(app, ["run", *map(str, args)])


@pytest.fixture(scope="module")
def outputs(module_workdir: Path) -> Path:
    """Protect ``mlp`` (ONNX, test key) and ``two`` (ONNX + TorchScript CPU, key shares), TXT."""
    protector = SkProtectorPyTorch(application_name=APP)
    protector.protect_new_model(
        make_mlp(),
        "mlp",
        [torch.randn(2, 6)],
        model_export_formats=EF.ONNX,
        dynamic_shapes=({0: BATCH},),
        test_key=True,
    )
    protector.protect_new_model(
        make_two(),
        "two",
        [torch.randn(2, 8), torch.randn(2, 4)],
        model_export_formats=EF.ONNX | EF.TORCHSCRIPT_CPU,
        dynamic_shapes=({0: BATCH}, {0: BATCH}),
        onnx_params={"input_names": ["x", "y"], "output_names": ["logits", "feat"]},
    )
    return module_workdir / "outputs" / APP


@pytest.fixture(scope="module")
def data(module_workdir: Path) -> dict[str, object]:
    """Input files and the original models' outputs."""
    gen = np.random.default_rng(0)
    x = gen.standard_normal((3, 8), dtype=np.float32)
    y = gen.standard_normal((3, 4), dtype=np.float32)
    m = gen.standard_normal((5, 6), dtype=np.float32)
    folder = module_workdir / "data"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    np.save(folder / "m.npy", m)
    np.savez(folder / "named.npz", y=y, x=x)  # order of the archive must not matter
    np.savez(folder / "positional.npz", x, y)
    with torch.no_grad():
        logits, feat = make_two()(torch.from_numpy(x), torch.from_numpy(y))
        mlp_out = make_mlp()(torch.from_numpy(m))
    return {
        "dir": folder,
        "logits": logits.numpy(),
        "feat": feat.numpy(),
        "mlp": mlp_out.numpy(),
    }


# --------------------------------------------------------------------------- success paths


def test_npy_in_npy_out(outputs: Path, data: dict, tmp_path: Path) -> None:
    out = tmp_path / "y.npy"
    result = invoke(outputs, "mlp", "--format", "onnx", "--input", data["dir"] / "m.npy",
                    "--output", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mlp [onnx, cpu]" in result.stdout
    assert rel(np.load(out), data["mlp"]) < 1e-4


@pytest.mark.parametrize("fmt", ["onnx", "torchscript_cpu"])
def test_npy_inputs_in_order_npz_out(outputs: Path, data: dict, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out.npz"
    d = data["dir"]
    result = invoke(outputs, "two", "-f", fmt, "-i", d / "x.npy", "-i", d / "y.npy", "-o", out)
    assert result.exit_code == 0, result.output
    with np.load(out) as archive:
        assert sorted(archive.files) == ["feat", "logits"]
        assert rel(archive["logits"], data["logits"]) < 1e-4
        assert rel(archive["feat"], data["feat"]) < 1e-4


@pytest.mark.parametrize("archive", ["named.npz", "positional.npz"])
def test_npz_inputs(outputs: Path, data: dict, tmp_path: Path, archive: str) -> None:
    out = tmp_path / "out.npz"
    result = invoke(outputs, "two", "--input", data["dir"] / archive, "--output", out)
    assert result.exit_code == 0, result.output
    with np.load(out) as got:
        assert rel(got["logits"], data["logits"]) < 1e-4


def test_json_summary(outputs: Path, data: dict, tmp_path: Path) -> None:
    d = data["dir"]
    result = invoke(outputs, "two", "-i", d / "x.npy", "-i", d / "y.npy", "-o",
                    tmp_path / "o.npz", "--json", "--threads", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"] == "two"
    assert summary["format"] == "onnx"
    assert summary["device"] == "cpu"
    assert summary["inputs"] == [
        {"name": "x", "shape": [3, 8], "dtype": "float32"},
        {"name": "y", "shape": [3, 4], "dtype": "float32"},
    ]
    assert summary["outputs"] == [
        {"name": "logits", "shape": [3, 3], "dtype": "float32"},
        {"name": "feat", "shape": [3], "dtype": "float32"},
    ]
    assert summary["output_file"] == str(tmp_path / "o.npz")
    assert summary["load_seconds"] >= 0 and summary["run_seconds"] >= 0


def test_without_output_file_prints_summary(outputs: Path, data: dict) -> None:
    result = invoke(outputs, "mlp", "-i", data["dir"] / "m.npy")
    assert result.exit_code == 0, result.output
    assert "(5, 5) float32" in result.stdout


def test_static_key_of_a_test_key_model(outputs: Path, data: dict, tmp_path: Path) -> None:
    out = tmp_path / "y.npy"
    result = invoke(outputs, "mlp", "-i", data["dir"] / "m.npy", "-o", out, "--static-key")
    assert result.exit_code == 0, result.output
    assert rel(np.load(out), data["mlp"]) < 1e-4


def test_static_key_refused_without_test_key(outputs: Path, data: dict, tmp_path: Path) -> None:
    d = data["dir"]
    result = invoke(outputs, "two", "-i", d / "x.npy", "-i", d / "y.npy", "--static-key")
    assert result.exit_code == 4, result.output
    assert result.stderr.startswith("error: ")
    assert not (tmp_path / "o.npz").exists()


# --------------------------------------------------------------------------- exit codes


@pytest.fixture
def copied(outputs: Path, tmp_path: Path) -> Path:
    """A private copy of the outputs folder, to tamper with."""
    return Path(shutil.copytree(outputs, tmp_path / APP))


def assert_error(result: object, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr, result.stderr


def test_tampered_configuration_exits_3(copied: Path, data: dict) -> None:
    config = copied / "skconfig.json"
    doc = json.loads(config.read_text())
    doc["payload"]["skprotect_version"] = "9.9.9"
    config.write_text(json.dumps(doc))
    assert_error(invoke(copied, "mlp", "-i", data["dir"] / "m.npy"), 3)


def test_tampered_model_file_exits_3(copied: Path, data: dict) -> None:
    model_file = copied / "mlp" / "onnx" / "mlp.onnx"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    assert_error(invoke(copied, "mlp", "-i", data["dir"] / "m.npy"), 3, "mlp.onnx")


def test_corrupted_key_file_exits_4(copied: Path, data: dict) -> None:
    key_file = copied / "mlp" / "onnx" / "key_vector_inv_mlp.txt"
    key_file.write_text(key_file.read_text()[:-20])
    assert_error(invoke(copied, "mlp", "-i", data["dir"] / "m.npy"), 4)


def test_unknown_model_exits_6(outputs: Path, data: dict) -> None:
    assert_error(invoke(outputs, "nope", "-i", data["dir"] / "m.npy"), 6, "nope")


def test_format_not_protected_exits_6(outputs: Path, data: dict) -> None:
    result = invoke(outputs, "mlp", "-f", "torchscript_cpu", "-i", data["dir"] / "m.npy")
    assert_error(result, 6, "torchscript_cpu")


def test_missing_outputs_folder_exits_6(tmp_path: Path, data: dict) -> None:
    assert_error(invoke(tmp_path / "absent", "mlp", "-i", data["dir"] / "m.npy"), 6, "absent")


def test_missing_input_file_exits_6(outputs: Path, tmp_path: Path) -> None:
    assert_error(invoke(outputs, "mlp", "-i", tmp_path / "absent.npy"), 6, "absent.npy")


@pytest.mark.parametrize(
    "array",
    [np.zeros((5, 7), np.float32), np.zeros((5, 6), np.float64), np.zeros((5, 6, 1), np.float32)],
    ids=["wrong-shape", "wrong-dtype", "wrong-rank"],
)
def test_wrong_input_exits_5(outputs: Path, tmp_path: Path, array: np.ndarray) -> None:
    np.save(tmp_path / "bad.npy", array)
    assert_error(invoke(outputs, "mlp", "-i", tmp_path / "bad.npy"), 5)


def test_wrong_input_count_exits_5(outputs: Path, data: dict) -> None:
    assert_error(invoke(outputs, "two", "-i", data["dir"] / "x.npy"), 5, "2 input(s)")


def test_an_input_the_model_refuses_is_named_with_its_file(outputs: Path, data: dict) -> None:
    """Input files swapped on the command line: the error named the model's input 'x' and what
    it expects, but not the file it had been read from."""
    result = invoke(outputs, "two", "-i", data["dir"] / "y.npy", "-i", data["dir"] / "x.npy")
    assert_error(result, 5, "Input 'x' has shape (3, 4), but axis 1 must be 8")
    assert result.stderr.endswith(
        f"The inputs were read from: 'x' = {data['dir'] / 'y.npy'}, "
        f"'y' = {data['dir'] / 'x.npy'}.\n"
    )


def test_npz_without_the_input_names_exits_5(outputs: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", a=np.zeros((1, 8), np.float32))
    assert_error(invoke(outputs, "two", "-i", tmp_path / "bad.npz"), 5, "x, y")


def test_unreadable_input_exits_5(outputs: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    assert_error(invoke(outputs, "mlp", "-i", tmp_path / "bad.npy"), 5, "bad.npy")


def test_unreadable_npz_exits_5_and_names_the_file(outputs: Path, tmp_path: Path) -> None:
    m = np.zeros((2, 6), np.float32)
    np.savez(tmp_path / "whole.npz", arr_0=m)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:100])
    np.save(tmp_path / "array.npy", m)
    (tmp_path / "array.npz").write_bytes((tmp_path / "array.npy").read_bytes())  # .npy inside
    np.savez(tmp_path / "objects.npz", arr_0=np.array([{"a": 1}], dtype=object))
    (tmp_path / "archive.npy").write_bytes((tmp_path / "whole.npz").read_bytes())  # .npz inside
    for name in ("cut.npz", "array.npz", "objects.npz", "archive.npy"):
        assert_error(invoke(outputs, "mlp", "-i", tmp_path / name), 5, name, "cannot read")


def test_output_is_checked_first_and_written_whole(
    outputs: Path, data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = data["dir"] / "m.npy"
    result = invoke(outputs, "mlp", "-i", m, "-o", tmp_path / "nodir" / "y.npy")
    assert_error(result, 2, "nodir", "does not exist")
    assert "load" not in result.stdout  # refused before the model was loaded
    target = tmp_path / "y.npy"
    target.write_bytes(b"earlier result")

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("skruntime.config.write_all", full_disk)
    assert_error(invoke(outputs, "mlp", "-i", m, "-o", target), 1, "y.npy", "No space left")
    assert target.read_bytes() == b"earlier result"  # the earlier file is whole
    assert [p.name for p in tmp_path.iterdir()] == ["y.npy"]  # no temporary left behind


def test_a_failing_close_does_not_hide_the_error(
    outputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from skruntime import SkRuntime

    def broken_close(self: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(SkRuntime, "close", broken_close)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    result = invoke(outputs, "mlp", "-i", tmp_path / "bad.npy")
    assert result.exit_code == 5, result.output  # the input error, not the close() one
    assert "cannot read input file" in result.stderr
    assert "warning: closing the runtime failed too" in result.stderr


def test_several_outputs_to_npy_is_a_usage_error(outputs: Path, data: dict, tmp_path: Path) -> None:
    d = data["dir"]
    result = invoke(outputs, "two", "-i", d / "x.npy", "-i", d / "y.npy", "-o", tmp_path / "o.npy")
    assert_error(result, 2, ".npz")


@pytest.mark.parametrize(
    "args",
    [["--format", "tflite"], ["--device", "tpu"], ["--threads", "0"], ["-o", "out.csv"]],
    ids=["format", "device", "threads", "output-suffix"],
)
def test_usage_errors_exit_2(outputs: Path, data: dict, args: list[str]) -> None:
    result = invoke(outputs, "mlp", "-i", data["dir"] / "m.npy", *args)
    assert result.exit_code == 2, result.output


def test_thread_counts_beyond_the_limit_exit_2(
    outputs: Path, data: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not onnxruntime's pybind TypeError (exit 1): the runtime's limit, as a usage error."""
    for threads in ("99999999999", "1025"):
        result = invoke(outputs, "mlp", "-i", data["dir"] / "m.npy", "--threads", threads)
        assert result.exit_code == 2, result.output
        assert "must be an int from 1 to 1024, but got" in " ".join(result.stderr.split())
    # more threads than cores do not spin between jobs (onnxruntime's default): 1024 spinning
    # threads on 2 busy cores took 11-18 s to build the session, 0.3 s without
    session_options = ort_backend._session_options
    asked: list[tuple[int, str]] = []

    def recorded(options: BackendOptions) -> ort.SessionOptions:
        so = session_options(options)
        spinning = so.get_session_config_entry("session.intra_op.allow_spinning")
        asked.append((so.intra_op_num_threads, spinning))
        return so

    monkeypatch.setattr(ort_backend, "_session_options", recorded)
    result = invoke(outputs, "mlp", "-i", data["dir"] / "m.npy", "--threads", "1024")
    assert result.exit_code == 0, result.output
    assert set(asked) == {(1024, "0")}  # onnxruntime was given the 1024 threads, not spinning


@pytest.mark.parametrize(("cores", "spinning"), [({0}, "0"), ({0, 1}, None)])
def test_threads_beyond_the_usable_cores_do_not_spin(
    monkeypatch: pytest.MonkeyPatch, cores: set[int], spinning: str | None
) -> None:
    """The cores counted are the process's own (taskset, a container's cpuset): 2 threads
    pinned to one core spun, since the machine has 2; within the cores, onnxruntime's default."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores, raising=False)
    so = ort_backend._session_options(BackendOptions(intra_op_threads=2))
    assert so.intra_op_num_threads == 2
    if spinning is None:
        with pytest.raises(RuntimeError, match="does not have configuration with key"):
            so.get_session_config_entry("session.intra_op.allow_spinning")
    else:
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == spinning


def test_input_is_required(outputs: Path) -> None:
    result = invoke(outputs, "mlp")
    assert result.exit_code == 2, result.output
    assert "Missing option '--input' / '-i'." in result.stderr


def test_help_marks_input_required_and_lists_exit_codes_on_one_line() -> None:
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    lines = [line.strip(" │") for line in result.stdout.splitlines()]
    assert (
        "Exit codes: 0 ok, 1 other, 2 usage, 3 config/integrity, 4 key/licence, 5 input, "
        "6 not found." in lines
    )
    option = next(i for i, line in enumerate(lines) if "--input" in line)
    assert lines[option].startswith("* ")  # typer's required marker
    assert "[required]" in " ".join(lines[option : option + 6])


def test_inputs_sharing_the_batch_must_agree_exits_5(
    outputs: Path, data: dict, tmp_path: Path
) -> None:
    np.save(tmp_path / "y2.npy", np.zeros((2, 4), np.float32))  # x has 3 rows
    for fmt in ("onnx", "torchscript_cpu"):
        result = invoke(outputs, "two", "-f", fmt, "-i", data["dir"] / "x.npy",
                        "-i", tmp_path / "y2.npy")  # fmt: skip
        assert_error(result, 5, "share the dynamic dimension 'batch'", "'x' has 3 on axis 0")


def test_paths_that_are_folders_files_or_empty(outputs: Path, data: dict, tmp_path: Path) -> None:
    """Each message says what the path is (a file, a folder, empty), not "does not exist"."""
    empty = "the path is empty (or '.'); pass a file name."
    not_a_file = "is a folder, not a file; pass the file."
    m = data["dir"] / "m.npy"
    file, folder = tmp_path / "plain", tmp_path / "folder.npy"
    file.write_bytes(b"a file")
    folder.mkdir()
    cases = [
        (
            [outputs, "-i", m, "-o", file / "y.npy"],
            2,
            f"--output {file}/y.npy: {file} is a file, not a folder; pass a path in a folder.",
        ),
        ([outputs, "-i", m, "-o", ""], 2, f"--output: {empty}"),
        ([outputs, "-i", ""], 2, f"--input: {empty}"),
        ([outputs, "-i", folder], 6, f"input file {folder} {not_a_file}"),
        (
            [outputs, "-i", m, "--kek", tmp_path],
            6,
            f"--kek {tmp_path} is a folder, not a file; pass the key-encryption key file "
            "that `skprotect export-kek` writes.",
        ),
        (
            [file, "-i", m],
            6,
            f"outputs folder {file} is a file, not a folder: pass the folder that holds the "
            "configuration (outputs/<application_name>).",
        ),
    ]
    for (where, *args), code, message in cases:
        result = invoke(where, "mlp", *args)
        assert result.exit_code == code, result.output
        assert result.stderr == f"error: {message}\n"


@pytest.mark.parametrize("encoding", ["raw", "base64"])
def test_kek_file_raw_or_base64(tmp_path: Path, encoding: str) -> None:
    kek = bytes(range(32))
    path = tmp_path / "kek"
    path.write_bytes(kek if encoding == "raw" else base64.b64encode(kek) + b"\n")
    path.chmod(0o600)
    assert read_kek(path) == kek


@pytest.mark.parametrize("content", [b"short", bytes(33), base64.b64encode(bytes(31))])
def test_kek_file_of_another_length_exits_4(
    outputs: Path, data: dict, tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "kek").write_bytes(content)
    result = invoke(outputs, "mlp", "-i", data["dir"] / "m.npy", "--kek", tmp_path / "kek")
    assert_error(result, 4, f"error: --kek {tmp_path}/kek holds no key-encryption key: expected "
                 "32 bytes, raw or base64-encoded; pass the key-encryption key file that "
                 "`skprotect export-kek` writes.")  # fmt: skip


def test_raw_kek_is_read_and_passed_on(outputs: Path, data: dict, tmp_path: Path) -> None:
    """A raw 32-byte kek reaches the runtime, which refuses it for this TXT configuration."""
    (tmp_path / "kek").write_bytes(bytes(range(32)))
    (tmp_path / "kek").chmod(0o600)
    result = invoke(outputs, "mlp", "-i", data["dir"] / "m.npy", "--kek", tmp_path / "kek")
    assert_error(result, 4, "kek decrypts LINUX key files, but")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_kek_file_other_users_can_read_is_warned_about(
    outputs: Path, data: dict, tmp_path: Path, mode: int
) -> None:
    """A KEK file readable by others was used silently, while whoever reads it decrypts every
    model key of the application. Warned, not refused: a Kubernetes secret volume is 0644 by
    default, and such deployments work today."""
    kek = tmp_path / "kek"
    kek.write_bytes(base64.b64encode(bytes(range(32))) + b"\n")
    kek.chmod(mode)
    result = invoke(outputs, "mlp", "-i", data["dir"] / "m.npy", "--kek", kek)
    assert result.exit_code == 4, result.output  # then refused: a TXT configuration
    assert "kek decrypts LINUX key files, but" in result.stderr
    assert (
        f"warning: --kek {kek} is accessible to other users (mode {mode:o}); whoever reads it "
        f"decrypts every model key of the application: run `chmod 600 {kek}`"
    ) in result.stderr
    kek.chmod(0o600)
    assert "warning" not in invoke(outputs, "mlp", "-i", data["dir"] / "m.npy", "--kek", kek).stderr


def test_debug_shows_the_traceback(outputs: Path, data: dict) -> None:
    result = invoke(outputs, "nope", "-i", data["dir"] / "m.npy", "--debug")
    assert result.exit_code == 6
    assert "Traceback" in result.stderr


# --------------------------------------------------------------------------- torch-free path

# The console script `skprotect` is `skprotect_pytorch.cli:app`: this runs exactly that, in a
# fresh interpreter where any `import torch` fails.
NO_TORCH = """
import sys
sys.modules["torch"] = None
from skprotect_pytorch.cli import app
app(prog_name="skprotect")
"""


def test_onnx_runs_with_torch_blocked(outputs: Path, data: dict, tmp_path: Path) -> None:
    d = data["dir"]
    out = tmp_path / "out.npz"
    args = ["run", str(outputs), "two", "--format", "onnx", "-i", str(d / "named.npz")]
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args, "-o", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["format"] == "onnx"
    with np.load(out) as got:
        assert rel(got["logits"], data["logits"]) < 1e-4
    # and a torch format fails cleanly there, naming what is missing
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args[:3], "-f", "torchscript_cpu", *args[5:]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "torch" in proc.stderr
    assert "Traceback" not in proc.stderr
