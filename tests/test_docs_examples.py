"""The user docs' examples work as written: their Python blocks compile, the README's and
artifacts.md's snippets run on a model protected as the README says, and api.md's
``ProtectionResult`` table names every attribute of the result, with ``FormatResult``'s fields in
their order."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch
from skprotect_pytorch.result import FormatResult, ProtectionResult

ROOT = Path(__file__).resolve().parents[1]
USER_DOCS = [ROOT / "README.md", *(ROOT / "docs" / name for name in (
    "api.md", "artifacts.md", "migration.md", "runtime.md", "licensing.md", "benchmarks.md"
))]  # fmt: skip
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(doc: Path) -> list[str]:
    """The ```python blocks of ``doc``, in order."""
    return PYTHON_BLOCK.findall(doc.read_text())


def readme_model() -> nn.Module:
    """A model as the README's snippets assume: one (1, 3, 32, 32) float32 input."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32 * 32, 10)
    )


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda doc: doc.name)
def test_python_blocks_compile(doc: Path) -> None:
    """A snippet with a syntax error fails here, before any user copies it."""
    for number, block in enumerate(python_blocks(doc)):
        compile(block, f"{doc.name} python block {number}", "exec")


def test_readme_runtime_and_artifacts_snippets_run(workdir: Path) -> None:
    """The README's model protected to ONNX with ``test_key=True`` writes the files artifacts.md's
    layout names, and README's runtime snippet and artifacts.md's "feeding a test key by hand"
    run verbatim on it and give the original's outputs. (Before, both read an ``x`` they never
    defined: NameError.)"""
    model = readme_model()
    SkProtectorPyTorch(application_name="default_app").protect_new_model(
        model,
        "my_model",
        [torch.randn(1, 3, 32, 32)],
        model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
        test_key=True,
    )
    layout = (ROOT / "docs" / "artifacts.md").read_text().split("## Layout", 1)[1].split("```")[1]
    documented = set(re.findall(r"[\w<>.-]+\.(?:json|onnx|txt|bin|pt2?)\b|[\w<>]+/", layout))
    for path in (workdir / "outputs" / "default_app").rglob("*"):
        name = path.name.replace("my_model", "<model_name>") + ("/" if path.is_dir() else "")
        assert name in documented, f"{path} is not in artifacts.md's layout"
    runtime_snippet = next(b for b in python_blocks(ROOT / "README.md") if "SkRuntime(" in b)
    key_snippet = next(b for b in python_blocks(ROOT / "docs" / "artifacts.md") if "loadtxt" in b)
    for snippet in (runtime_snippet, key_snippet):
        scope: dict = {}
        exec(compile(snippet, "snippet", "exec"), scope)  # the docs' own code
        y = scope["y"][0] if isinstance(scope["y"], list) else scope["y"]  # ort: a list
        with torch.no_grad():
            expected = model(torch.from_numpy(scope["x"])).numpy()
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
        if hasattr(scope.get("model"), "close"):  # the runtime's LoadedModel: erase its key
            scope["model"].close()


def api_result_table() -> list[str]:
    """The first-column cells of api.md's ``ProtectionResult`` table."""
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("### The result: `ProtectionResult`", 1)[1].split("\n\n", 2)[1]
    return [line.split("|")[1] for line in section.splitlines()[2:]]


def test_api_result_table_lists_every_attribute() -> None:
    """Every field and public property of ``ProtectionResult`` has a row, and every name the
    table shows exists (``model_name``, ``application_name``, ``key_lengths`` had none)."""
    documented = {name for cell in api_result_table() for name in re.findall(r"`(\w+)`", cell)}
    actual = {f.name for f in dataclasses.fields(ProtectionResult)} | {
        name
        for name, value in vars(ProtectionResult).items()
        if isinstance(value, property) and not name.startswith("_")
    }
    assert documented == actual


def test_api_format_result_fields_in_order() -> None:
    """api.md spells ``FormatResult(...)`` with the dataclass's fields in their order (it
    started with ``path`` and left out ``format``)."""
    text = (ROOT / "docs" / "api.md").read_text()
    shown = re.search(r"FormatResult\(([^)]*)\)", text)
    assert shown, "api.md shows no FormatResult(...)"
    fields = [f.name for f in dataclasses.fields(FormatResult)]
    assert [name.strip() for name in shown.group(1).split(",")] == fields
