"""The quickstart: train a small CNN on scikit-learn's bundled digits, protect it to every format
this machine can produce, and compare accuracy with the key, without it, and of the original.

Its last section is the licensing path: the model is protected again for the LINUX platform
(platform version 2, a customer), an ``sklicense`` server is started embedded on loopback with
SQLite in a temporary folder, the application (with its key-encryption key) and the customer are
provisioned, and the runtime runs the licensed model, its key released by the licence."""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from skruntime.config import load_config
from skruntime.keyfile import read_txt_keys, session_key

from .errors import SkProtectError
from .export import cuda_available, get_exporter
from .export.options import ExportOptions
from .extras import missing_modules
from .formats import ExportFormat
from .protect import SkProtectorPyTorch
from .result import ProtectionResult
from .state import state_root

APPLICATION = "quickstart"
MODEL_NAME = "digits_cnn"
LICENSED_APPLICATION = "quickstart_licensed"
LICENSED_CUSTOMER_ID = 1001
LICENSED_QUOTA = 1000


class DigitsCNN(nn.Module):
    """A small conv net for 8x8 digit images (10 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed: int = 0) -> Dataset:
    """scikit-learn's digits (1,797 8x8 images, shipped with the package): 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    split = int(0.8 * len(y))
    train, test = order[:split], order[split:]
    return Dataset(torch.from_numpy(x[train]), torch.from_numpy(y[train]), x[test], y[test])


def train(data: Dataset, epochs: int = 20, seed: int = 0) -> DigitsCNN:
    torch.manual_seed(seed)
    model = DigitsCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    n = len(data.y_train)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(n).split(64):
            optimiser.zero_grad()
            loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
            optimiser.step()
    return model.eval()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())


RANDOM_KEYS = 8
"""Random keys per format in the quickstart's table (their mean accuracy is shown)."""


@dataclass
class FormatRow:
    format: str
    accuracy_with_key: float
    accuracy_without_key: float
    accuracy_random_key: float
    """Mean over :data:`RANDOM_KEYS` random keys: the lock's secrets are fresh per protection,
    so one random key's accuracy is one draw of a spread (once 20.8 % on 360 images)."""
    key_length: int
    weights_in_file: int
    """How many of the original's weight tensors ``skprotect scan`` finds in the file (0)."""


def evaluate(
    result: ProtectionResult, data: Dataset, weights: dict[str, np.ndarray]
) -> list[FormatRow]:
    """Run every artifact on the test set with a per-session key, a zero key and random keys,
    and search it for the original ``weights`` as ``skprotect scan`` does."""
    from .audit.constants import artifact_constants, find_weight_leaks

    config = load_config(result.config_path)
    entry = config.models[result.model_name]
    options = ExportOptions(
        input_names=[i.name for i in entry.inputs],
        output_names=[o.name for o in entry.outputs],
        key_name=entry.key.name,
    )
    rows = []
    rng = np.random.default_rng(0)
    for slug, fmt_result in result.formats.items():
        fmt = ExportFormat[slug.upper()]
        run = get_exporter(fmt).load(fmt_result.path, options)
        material = read_txt_keys(fmt_result.path.parent, result.model_name)
        key = session_key(material)
        zero = np.zeros_like(key)
        random_keys = [
            rng.standard_normal(key.shape).astype(np.float32) * 100 for _ in range(RANDOM_KEYS)
        ]
        rows.append(
            FormatRow(
                format=slug,
                accuracy_with_key=accuracy(run([data.x_test, key])[0], data.y_test),
                accuracy_without_key=accuracy(run([data.x_test, zero])[0], data.y_test),
                accuracy_random_key=float(
                    np.mean([accuracy(run([data.x_test, k])[0], data.y_test) for k in random_keys])
                ),
                key_length=fmt_result.key_length,
                weights_in_file=len(
                    {
                        leak.weight
                        for leak in find_weight_leaks(artifact_constants(fmt_result.path), weights)
                    }
                ),
            )
        )
    return rows


@dataclass
class LicensedRun:
    """The licensed model's run on the test set, and the licence it ran under."""

    accuracy: float
    licence_id: str
    issued_at: int
    expires_at: int
    allowance: int | None
    used: int
    server_url: str
    seconds: float
    files: list[Path]
    """What the LINUX protection wrote: its configuration, model and key files."""


def run_licensed(model: nn.Module, data: Dataset) -> LicensedRun:
    """Protect ``model`` for LINUX (platform version 2), serve the licence server embedded on
    loopback (SQLite in a temporary folder), provision it and run the licensed model."""
    import datetime as dt
    import tempfile

    from sklicense import crud, db
    from sklicense.embedded import EmbeddedServer, init_state
    from sklicense.settings import Settings
    from skruntime import SkRuntime

    from .customer import Customer

    start = time.perf_counter()
    protector = SkProtectorPyTorch(application_name=LICENSED_APPLICATION)
    linux = SkProtectorPyTorch.ExportPlatform.LINUX
    config_path = protector.config_path(linux)
    exists = config_path.exists() and MODEL_NAME in load_config(config_path).models
    protect = protector.protect_updated_model if exists else protector.protect_new_model
    result = protect(
        model,
        MODEL_NAME,
        [torch.from_numpy(data.x_test[:2])],
        model_export_formats=ExportFormat.ONNX,
        deployment_platform=linux,
        platform_version=2,
        customer=Customer(LICENSED_CUSTOMER_ID, "Quickstart Customer"),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
    )
    with tempfile.TemporaryDirectory(prefix="sklicense-quickstart-") as tmp:
        folder = Path(tmp)
        # `sklicense init`: the server's signing key and the migrated SQLite database
        settings = Settings(
            database_url=f"sqlite:///{folder / 'sklicense.db'}", state_dir=folder / "server"
        )
        server_public_key = init_state(settings)
        # provisioning (what `sklicense app create` and `sklicense customer create` do)
        sessions = db.session_factory(settings.database_url)
        with sessions.begin() as session:
            crud.create_application(
                session,
                LICENSED_APPLICATION,
                protector.state.kek,
                "quickstart",
                # devices are licensed only as the customer their signed configuration names
                public_key=base64.b64encode(protector.state.public_key_bytes).decode("ascii"),
            )
            crud.create_customer(
                session,
                "quickstart",
                id=LICENSED_CUSTOMER_ID,
                name="Quickstart Customer",
                contract_end=dt.datetime.now(dt.UTC) + dt.timedelta(days=365),
                inference_quota=LICENSED_QUOTA,
                max_devices=1,
                default_licence_seconds=30 * 86400,
            )
        try:
            # the device registers itself with its first licence request
            with (
                EmbeddedServer(settings) as server,
                SkRuntime(
                    config_path.parent,
                    licence_server=server.url,
                    server_public_key=server_public_key,
                    state_dir=folder / "device",
                    overlap_seconds=7 * 86400,
                    requested_inferences=100,
                ) as runtime,
            ):
                with runtime.load(MODEL_NAME) as licensed:
                    logits = licensed(data.x_test)
                client = runtime.licence_client
                client.flush()  # give back the unused reservation: the counter is exact
                licence = client.ensure_licence()
                used = client.usage()["counter"]
        finally:
            db.get_engine(settings.database_url).dispose()
    return LicensedRun(
        accuracy=accuracy(np.asarray(logits), data.y_test),
        licence_id=licence.licence_id,
        issued_at=licence.issued_at,
        expires_at=licence.expires_at,
        allowance=licence.inferences,
        used=used,
        server_url=server.url,
        seconds=time.perf_counter() - start,
        files=written(result),
    )


LICENCE_MODULES = ("fastapi", "uvicorn", "sqlalchemy", "alembic", "httpx")
"""What the licensed run imports from the ``licence`` extra (SQLite needs no psycopg)."""


def written(result: ProtectionResult) -> list[Path]:
    """Every file a protection wrote: its configuration first, then model and key files."""
    return [result.config_path, *result.files]


def missing_licence_modules() -> list[str]:
    """The modules of the ``licence`` extra that are not installed: without them the licensed run
    is skipped up front rather than failing with a traceback after the protection."""
    return missing_modules(LICENCE_MODULES)


def written_folders(applications: tuple[str, ...]) -> list[Path]:
    """The folders the quickstart writes: ``log/``, each application's model folder under
    ``outputs/`` and its private state folder (as :meth:`ProtectionState.open` finds it)."""
    cwd = Path.cwd()
    state = state_root()
    outputs = [cwd / "outputs" / a / MODEL_NAME for a in applications]
    return [cwd / "log", *outputs, *(state / a for a in applications)]


def check_folders(applications: tuple[str, ...]) -> None:
    """Fail at once where a folder the quickstart writes cannot be made (a plain file in its
    way, or a read-only folder): the protection would otherwise fail after the training."""
    for folder in written_folders(applications):
        existing = next(p for p in (folder, *folder.parents) if os.path.lexists(p))
        if not existing.is_dir():
            problem = f"{existing} is a file, not a folder"
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = f"{existing} is not writable"
        else:
            continue
        raise SkProtectError(
            f"{problem}, but the quickstart writes {folder}: move it away or fix its "
            "permissions, or run the quickstart from another folder."
        )


def check_tmpdir() -> None:
    """Fail at once where ``TMPDIR`` names a folder that is missing or not writable: Python falls
    back to /tmp, but torch unpacks an AOTInductor package there to load it and does not, so
    the protection's check of the ``inductor_cpu`` file failed after the training."""
    value = os.environ.get("TMPDIR")
    if not value:
        return
    folder = Path(value)
    if not folder.exists():
        problem = "does not exist"
    elif not folder.is_dir():
        problem = "is not a folder"
    elif not os.access(folder, os.W_OK | os.X_OK):
        problem = "is not writable"
    else:
        return
    raise SkProtectError(
        f"TMPDIR is {value}, which {problem}: torch unpacks the AOTInductor format there to "
        "load it (it does not fall back to /tmp as Python does). Create the folder, point "
        "TMPDIR to a writable one or unset it, then run the quickstart again."
    )


def run_quickstart(
    workdir: Path | None = None, *, licensed: bool = True
) -> tuple[float, list[FormatRow], ProtectionResult, LicensedRun | None]:
    """Train, protect and evaluate; returns (original accuracy, rows per format, result, the
    licensed run or None when ``licensed`` is False)."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        os.chdir(workdir)
    applications = (APPLICATION, LICENSED_APPLICATION) if licensed else (APPLICATION,)
    check_folders(applications)  # before the training (about a minute), not after it
    check_tmpdir()
    for application in applications:
        # the state's checks before it too: permissions, and a master secret lost for an
        # application already protected here (no new one is made, the protection's rule)
        SkProtectorPyTorch(application_name=application)._protection_state()
    data = load_digits_split()
    model = train(data)
    with torch.no_grad():
        original = accuracy(model(torch.from_numpy(data.x_test)).numpy(), data.y_test)
    formats = ExportFormat.ONNX | ExportFormat.TORCHSCRIPT_CPU | ExportFormat.INDUCTOR_CPU
    if cuda_available():
        formats |= ExportFormat.TORCHSCRIPT_GPU | ExportFormat.INDUCTOR_GPU
    protector = SkProtectorPyTorch(save_logs=True, application_name=APPLICATION)
    exists = protector.config_path(SkProtectorPyTorch.ExportPlatform.TXT).exists() and (
        MODEL_NAME
        in load_config(protector.config_path(SkProtectorPyTorch.ExportPlatform.TXT)).models
    )
    protect = protector.protect_updated_model if exists else protector.protect_new_model
    result = protect(
        model,
        MODEL_NAME,
        [torch.from_numpy(data.x_test[:2])],
        model_export_formats=formats,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
    )
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    rows = evaluate(result, data, weights)
    return original, rows, result, run_licensed(model, data) if licensed else None


def main() -> None:
    """Entry point of ``skprotect quickstart``."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # the terminal's width (or $COLUMNS, else 80 through a pipe): a wider console's lines were
    # broken in two by an 80-column terminal, and by one reading `skprotect quickstart | cat`
    console = Console()
    start = time.perf_counter()
    missing = missing_licence_modules()
    original, rows, result, licensed = run_quickstart(licensed=not missing)
    # the original's accuracy (one value) in the title: as a column the table was too wide
    table = Table(
        title=f"digits CNN, {len(load_digits_split().y_test)} test images: accuracy "
        f"{original:.3f} of the original (chance 0.10)"
    )
    random_column = f"random key (mean of {RANDOM_KEYS})"
    columns = ("with key", "without key", random_column, "key length", "original weights in file")
    table.add_column("format", no_wrap=True)  # the other columns' headers wrap instead
    for column in columns:
        table.add_column(column, min_width=len("original"))  # headers wrap between words
    for row in rows:
        table.add_row(
            row.format,
            f"{row.accuracy_with_key:.3f}",
            f"{row.accuracy_without_key:.3f}",
            f"{row.accuracy_random_key:.3f}",
            str(row.key_length),
            str(row.weights_in_file),
        )
    if licensed is not None:
        table.add_row(
            "onnx, LINUX, licensed",
            f"{licensed.accuracy:.3f}",
            "-",
            "-",
            "-",
            "-",
        )
    console.print(table)
    if licensed is not None:
        when = "%Y-%m-%d %H:%M UTC"
        issued = time.strftime(when, time.gmtime(licensed.issued_at))
        expires = time.strftime(when, time.gmtime(licensed.expires_at))
        console.print(
            f"licensed run ({LICENSED_APPLICATION}, customer {LICENSED_CUSTOMER_ID}, embedded "
            f"server {licensed.server_url}, {licensed.seconds:.1f} s): licence "
            f"{licensed.licence_id} issued {issued}, expires {expires}, allowance "
            f"{licensed.allowance} inferences, {licensed.used} used "
            f"(customer quota {LICENSED_QUOTA})"
        )
    # soft_wrap for lines with a path or a command: no line end inserted in them to copy
    runs = [written(result)] + ([licensed.files] if licensed is not None else [])
    for files in runs:
        console.print(
            f"files written: {len(files)} under {files[0].parent}", markup=False, soft_wrap=True
        )
        for path in files:
            console.print(f"  {path}", markup=False, soft_wrap=True)
    for fmt, reason in result.skipped_formats.items():
        console.print(f"[yellow]skipped {fmt}[/yellow]: {reason}")
    if missing:
        console.print(
            f"[yellow]skipped the licensed run[/yellow]: {', '.join(missing)} not installed; "
            + escape("run pip install 'skprotect[licence]' for it"),
            soft_wrap=True,
        )
    console.print(f"total time: {time.perf_counter() - start:.1f} s")
