"""The runtime names the other platform's configuration as the writer of a model file that no
longer matches only when that configuration is signed by this application's key: a runtime
without ``public_key`` read one signed by any key, so a file dropped beside a tampered model
turned "tampered" into "protect again"."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.models import LIFECYCLE_INPUT, lifecycle_mlp

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime
from skruntime.config import CONFIG_FILENAMES, load_config, write_config
from skruntime.errors import IntegrityError

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform


def test_another_keys_configuration_does_not_explain_a_tampered_file(workdir: Path) -> None:
    """Before: "it is the file that skrpl records ... Protect 'm' for TXT again"."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        lifecycle_mlp(0), "m", [LIFECYCLE_INPUT], model_export_formats=EF.TORCHSCRIPT_CPU
    )
    outputs = protector.outputs_dir
    model_file = outputs / "m" / "cpu" / "m.pt"
    model_file.write_bytes(model_file.read_bytes() + b"tampered")
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    config = load_config(protector.config_path(EP.TXT))
    entry = config.models["m"]
    formats = {k: dataclasses.replace(f, sha256=digest) for k, f in entry.formats.items()}
    forged = dataclasses.replace(config, models={"m": dataclasses.replace(entry, formats=formats)})
    write_config(outputs / CONFIG_FILENAMES["LINUX"], forged, Ed25519PrivateKey.generate())
    with pytest.raises(IntegrityError, match="tampered or post-processed"):
        SkRuntime(outputs, platform="TXT").load("m", "torchscript_cpu")
