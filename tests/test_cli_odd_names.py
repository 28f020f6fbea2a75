"""File names a user plausibly gives the command line: ``X.NPY`` (as Windows tools name files)
is a ``.npy`` file, as numpy reads it (it was refused as "must be a .npy or .npz file, but got
X.NPY"); a name that is only the extension (``-o "$NAME.npy"``, NAME unset) is called so (it
was "must be a .npy or .npz file, but got .npy"); an empty ``--budgets`` is called empty (it was
"every budget must be in (0, 100], got ''")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skprotect_pytorch.cli import app


@pytest.fixture(scope="module")
def outputs(module_workdir: Path, protect_linear: Callable[..., Path]) -> Path:
    """One single-output ONNX model ``mlp`` (test key) of application ``odd``."""
    return protect_linear("odd", "mlp", (6, 5))


def test_upper_case_extensions_are_read_and_written(outputs: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
    with open(tmp_path / "X.NPY", "wb") as f:  # np.save would append ".npy"
        np.save(f, x)
    results = {}
    for name in ("Y.NPY", "Y.NPZ"):
        args = ["run", str(outputs), "mlp", "--static-key", "-i", str(tmp_path / "X.NPY")]
        result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        results[name] = np.load(tmp_path / name)
    assert results["Y.NPY"].shape == (2, 5)  # a .npy array, and a .npz archive of the output
    np.testing.assert_array_equal(results["Y.NPZ"][results["Y.NPZ"].files[0]], results["Y.NPY"])


@pytest.mark.parametrize(("option", "name"), [("-o", ".npy"), ("-i", ".NPZ")])
def test_a_name_that_is_only_the_extension_is_called_so(
    workdir: Path, option: str, name: str
) -> None:
    args = ["run", "outputs/app", "mlp", "-i", "x.npy", option, name]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    long = {"-o": "--output", "-i": "--input"}[option]
    assert result.output == (
        f"error: {long} {name}: the file name is only its extension; pass a full name such as "
        f"data{name.lower()}.\n"
    )


@pytest.mark.parametrize("budgets", ["", " , "])
def test_empty_budgets_are_called_empty(workdir: Path, budgets: str) -> None:
    result = CliRunner().invoke(app, ["audit", "--budgets", budgets])
    assert (result.exit_code, result.output) == (
        2,
        "error: --budgets is empty: give one budget or more, e.g. 1,5\n",
    )


def test_the_folder_above_the_applications_names_them(outputs: Path) -> None:
    """``skprotect run outputs MODEL`` was told to "point SkRuntime" at a configuration."""
    result = CliRunner().invoke(app, ["run", str(outputs.parent), "mlp", "-i", "x.npy"])
    assert (result.exit_code, result.output) == (
        3,
        f"error: {outputs.parent} holds no configuration but the folders of applications (odd): "
        f"pass one of them, e.g. {outputs}.\n",
    )
