"""The ``skprotect`` command line."""

from __future__ import annotations

import base64
import os
import shlex
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from skruntime.cli import (
    OutputGroup,
    as_the_process,
    file_path,
    given_path,
    output_problem,
    run_command,
    sigterm_as_interrupt,
    stdout_failed,
    stdout_failure,
    write_output_file,
)
from skruntime.cli_errors import empty_path
from skruntime.config import NAME_RE
from skruntime.files import path_kind
from skruntime.versions import version_option

from .errors import SkProtectError
from .extras import missing_modules


class _Cli(typer.Typer):
    """The ``skprotect`` entry point: SIGTERM cleans up as Ctrl-C does and exits 143
    (:func:`~skruntime.cli.sigterm_as_interrupt`); ``run`` keeps core dumps off until the
    process ends (:func:`~skruntime.cli.as_the_process`)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with sigterm_as_interrupt(), as_the_process():
            return super().__call__(*args, **kwargs)


app = _Cli(
    cls=OutputGroup,  # standard output failing is one line, not a traceback
    help="skprotect: lock, export and license PyTorch models.",
    no_args_is_help=True,
    rich_markup_mode="markdown",  # "rich" kept the line breaks of docstrings in the listing
)
app.command("run")(run_command)


@app.callback()
def _options(version: version_option("skprotect") = False) -> None:  # type: ignore[valid-type]
    """skprotect: lock, export and license PyTorch models."""


PROTECT_MODULES = ("torch", "onnx", "onnxruntime", "onnxscript", "safetensors", "sklearn")
"""What the ``protect`` extra installs: quickstart, scan and audit import from it."""


def _require_protector(command: str, code: int) -> None:
    """Exit ``code`` with one line naming what to install when the ``protect`` extra is missing
    (a ``skprotect[runtime]`` install runs ``skprotect run`` only), instead of a traceback."""
    missing = missing_modules(PROTECT_MODULES)
    if missing:
        typer.echo(
            f"error: skprotect {command} needs {', '.join(missing)}, not installed here: "
            "pip install 'skprotect[protect]'.",
            err=True,
        )
        raise typer.Exit(code)


@app.command()
def quickstart() -> None:
    """Train a small CNN on bundled data, protect it and run it with and without the key.

    It is protected to every format this machine can produce; accuracy is printed with the key,
    without it, and of the original; then a LINUX copy runs under a licence from an embedded
    licence server. Writes outputs/, log/ and .skprotect_private/ in the current folder.
    """
    _require_protector("quickstart", 1)
    from .quickstart import main

    try:
        main()
    except SkProtectError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


EXIT_UNEXPECTED = 70
"""``scan`` and ``audit``: an unexpected error (sysexits' EX_SOFTWARE), never 1, which says a
weight was found or the gate failed, nor 2, which says an input or option was refused."""

_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
"""The base of typer's usage errors: click's ``ClickException``, or typer's copy of it (typer
0.2x vendors click, and an install without the licence server's uvicorn has no click)."""

Debug = Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected error.")]


@contextmanager
def _unexpected_errors(command: str, debug: bool) -> Iterator[None]:
    """Turn an error nobody expected in ``command`` (a bug, a broken pipe) into one ``error:``
    line and its own exit code: it ended with a traceback and exit code 1, read by a CI job as
    a weight found (scan) or a failed gate (audit). ``debug``: the traceback too."""
    try:
        yield
    except (typer.Exit, typer.Abort, _USAGE_ERROR):
        raise  # the command's own exits, and usage errors
    except Exception as err:
        if stdout_failed(err):
            note = f"the exit code says nothing of the {command}'s result"
            message, code = stdout_failure(err, note)
        else:
            message = (
                f"unexpected {type(err).__name__} in skprotect {command}: {err}. Rerun with "
                "--debug for the traceback, and report it unless it names something to fix"
            )
            code = EXIT_UNEXPECTED
        with suppress(OSError):  # stderr may be the closed pipe too
            if debug:
                traceback.print_exc()
            typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code) from None


def _application_name(value: str) -> str:
    """``--application-name``: refused by name, as a usage error (the state's own error named
    its Python field, application_name)."""
    if not NAME_RE.fullmatch(value):
        raise typer.BadParameter(
            "must be 1-128 characters of letters, digits, '_', '.' or '-' (not starting with "
            f"'.' or '-'), but got {value!r}"
        )
    return value


@app.command("export-kek")
def export_kek(
    output: Annotated[
        Path,
        typer.Argument(
            parser=file_path,
            help="File to write the key-encryption key to (mode 0600).",
        ),
    ],
    application_name: Annotated[
        str, typer.Option(callback=_application_name, help="Application whose key to export.")
    ] = "default_app",
) -> None:
    """Export an application's key-encryption key for the licence server (LINUX platform).

    Also prints the public key that signs its configuration files (the server checks with it
    that a device's configuration was made for the customer it names).
    """
    from .state import ProtectionState

    try:
        state = ProtectionState.open(application_name, create=False)
        state.export_kek(output)  # refuses a folder, device, pipe, master secret or other file
    except SkProtectError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    public_key = base64.b64encode(state.public_key_bytes).decode("ascii")
    typer.echo(f"key-encryption key of '{application_name}' written to {output}")
    typer.echo(
        f"public key of '{application_name}': {public_key}\n"
        f"register both: sklicense app create {application_name} "  # a line to paste as it is
        f"--kek-file {shlex.quote(str(output))} --public-key {public_key}"
    )


@app.command()
def scan(
    artifacts: Annotated[
        list[Path],
        typer.Argument(
            parser=given_path("a path"),
            help="Shipped files to scan (.onnx, TorchScript .pt, .pt2; weights files saved "
            "with torch.save or as .safetensors too), or folders such as outputs/APP/MODEL: "
            "every such file in them but the unlocked original/ copies.",
        ),
    ],
    original: Annotated[
        Path,
        typer.Option(
            parser=given_path("a path"),
            help="The original model's weights: a state dict saved with torch.save, a "
            ".safetensors file, or an unlocked .onnx / TorchScript export (protect with "
            "save_original=True).",
        ),
    ],
    threshold: Annotated[
        float,
        typer.Option(
            help="|cosine| in (0, 1] above which a constant's row or column counts as a copy "
            "of an original one."
        ),
    ] = 0.999,
    debug: Debug = False,
) -> None:
    """Scan shipped files for plaintext weights of the original model; exit 1 when one is found.

    Finds copies, transposes, and rows permuted and rescaled. Exit codes: 0 none found, 1 found,
    2 bad option or unreadable file, 70 unexpected error, 74 output not writable, 141 output closed.
    """
    with _unexpected_errors("scan", debug):
        _scan(artifacts, original, threshold)


def _scan(artifacts: list[Path], original: Path, threshold: float) -> None:
    """``skprotect scan``'s work, its exit codes 0 to 2 (:func:`scan`)."""
    _require_protector("scan", 2)  # not 1: that says a weight was found
    from .audit.constants import artifact_constants, find_weight_leaks, original_weights
    from .progress import step

    if not 0.0 < threshold <= 1.0:
        typer.echo(f"error: --threshold must be in (0, 1], but got {threshold}", err=True)
        raise typer.Exit(2)
    if kind := path_kind(original):  # original_weights would say it does not exist
        typer.echo(
            f"error: --original {original} is {kind}; pass the original's weights file (a "
            "state dict, a .safetensors file or an unlocked .onnx / TorchScript export).",
            err=True,
        )
        raise typer.Exit(2)
    try:  # a folder in them that cannot be read: exit 2, not 70
        files, unlocked = _scanned_files(artifacts)
    except SkProtectError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    found = {}
    try:
        weights = original_weights(original)
        for path in files:  # ResNet-18 at 224 px: about 25 s per file
            with step(f"Scanning {path}"):
                found[path] = find_weight_leaks(artifact_constants(path), weights, threshold)
    except SkProtectError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    matrices = sum(1 for w in weights.values() if w.ndim >= 2)
    for path, leaks in found.items():
        if not leaks:
            typer.echo(
                f"{path}: no weight of the original found ({matrices} weight tensors compared; "
                "rows and columns shorter than 8 values are not)"
            )
            continue
        where: dict[tuple[str, str], list] = {}
        for leak in leaks:  # one line per weight and constant, its rows and columns together
            where.setdefault((leak.weight, leak.constant), []).append(leak)
        names = {weight for weight, _ in where}
        typer.echo(f"{path}: {len(names)} weight(s) of the original found in plaintext:")
        for (weight, constant), same in where.items():
            hows = " and ".join(sorted({leak.how for leak in same}))
            best = max(leak.max_cos for leak in same)
            typer.echo(f"  - {weight} in {constant} ({hows}, |cos| {best:.4f})")
    # a folder scanned as the one to ship held the plaintext model, said clean; each copy
    # once (a folder and one inside it both given), none that was given to scan itself
    scanned = {p.resolve() for p in files}
    unlocked = list({p.resolve(): p for p in unlocked if p.resolve() not in scanned}.values())
    if unlocked:
        names = ", ".join(str(p) for p in unlocked)
        typer.echo(
            f"warning: not scanned: {names}: unlocked cop{'ies' if len(unlocked) > 1 else 'y'} "
            "that save_original=True writes, holding the original weights in plaintext. "
            "Delete the original/ folder before shipping; never ship it.",
            err=True,
        )
    if any(found.values()):
        raise typer.Exit(1)


def _scanned_files(artifacts: list[Path]) -> tuple[list[Path], list[Path]]:
    """The files ``scan`` reads for ``artifacts`` (each once), and the unlocked copies in the
    folders among them; exits 2 where one is missing, not a file or folder, or holds nothing
    to scan."""
    from .audit.constants import artifact_files, unlocked_copies

    files = []
    unlocked: list[Path] = []
    for given in artifacts:
        # first: a loop of symbolic links does not "exist" either (it was said to be missing)
        if (kind := path_kind(given)) not in (None, "a folder"):
            typer.echo(f"error: {given} is {kind}, not a file or folder to scan.", err=True)
            raise typer.Exit(2)
        if not given.exists():  # a missing folder has no suffix: say what is wrong with it
            typer.echo(f"error: {given} does not exist; check the path.", err=True)
            raise typer.Exit(2)
        inside = artifact_files(given) if given.is_dir() else [given]
        if given.is_dir():
            unlocked += unlocked_copies(given)
        if not inside:
            copies = unlocked_copies(given) if given.is_dir() else []
            only = (
                f", only unlocked copies that save_original=True writes ({copies[0]}...), "
                "holding the original weights in plaintext: never ship them"
                if copies
                else ""
            )
            typer.echo(f"error: {given} holds no .onnx, .pt or .pt2 file to scan{only}", err=True)
            raise typer.Exit(2)
        files += inside
    # each file once: a folder and a file in it both given were scanned twice (25 s a file)
    unique: dict[Path, Path] = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    files = list(unique.values())
    return files, unlocked


def _refuse_unwritable(path: Path, option: str) -> None:
    """Exit 2 before any work if ``path`` cannot take a report: an audit runs for hours, and a
    report it cannot write at the end would be lost."""
    if problem := output_problem(path):
        typer.echo(f"error: {option} {path}: {problem}.", err=True)
        raise typer.Exit(2)


def _write_report(path: Path, text: str, option: str) -> bool:
    """Write ``text`` to ``path`` as ``skprotect run`` writes ``--output`` (a full disk leaves
    the previous file whole; ``/dev/stdout`` or a link to a file is written through, not
    replaced); say why and return False when it fails."""
    try:
        write_output_file(path, text.encode("utf-8"))
    except OSError as err:
        typer.echo(
            f"error: could not write {option} {path} ({err.strerror or err}); the report is "
            "printed above: free space or pass another path, then copy it from there.",
            err=True,
        )
        return False
    return True


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same path once resolved, or another spelling
    of an existing one (a hard link)."""
    if a.resolve() == b.resolve():
        return True
    with suppress(OSError):  # either missing: not the same existing file
        return os.path.samefile(a, b)
    return False


def _spec_file(model: str) -> Path | None:
    """The spec file ``--model FILE.py:NAME`` names, or None (a suite name, ``module:NAME``)."""
    where, sep, _ = model.rpartition(":")
    return Path(where) if sep and where.endswith(".py") else None


class AuditPreset(StrEnum):
    """The lock presets (``lock.context.LOCK_PRESETS``; listed here to keep the CLI light)."""

    strong = "strong"
    balanced = "balanced"


@app.command()
def audit(
    model: Annotated[
        str,
        typer.Option(
            help="What to lock and attack: a reference model of the suite (mlp, cnn, "
            "transformer, lstm, gru; docs/security.md), or your own as FILE.py:NAME or "
            "module:NAME, naming a spec built with skprotect_pytorch.audit.model_spec "
            "(docs/api.md)."
        ),
    ] = "mlp",
    preset: Annotated[
        AuditPreset,
        typer.Option(help="Lock preset to audit (the product's default is strong)."),
    ] = AuditPreset.strong,
    quick: Annotated[
        bool, typer.Option(help="One-point training sweep and one seed (minutes, not hours).")
    ] = False,
    budgets: Annotated[
        str, typer.Option(help="Attacker budgets, % of the training data, comma-separated.")
    ] = "1,5,10,25",
    seeds: Annotated[
        int | None,
        typer.Option(  # max: audit.arguments.MAX_SEEDS, which imports torch
            min=1, max=100, help="Seeds per budget, 1 to 100 (default: 3, or 1 with --quick)."
        ),
    ] = None,
    attacks: Annotated[
        str, typer.Option(help="Attacks to run, comma-separated (A0 … A5; default: all).")
    ] = "A0,A1,A2,A3,A4,A5",
    victim_epochs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Epochs to train the victim, its twin and A5's base (default: the suite's, "
            "or the spec's epochs); with a victim of your own, only the twin and A5's.",
        ),
    ] = None,
    json_file: Annotated[
        Path | None,
        typer.Option("--json", parser=file_path, help="Write the report as JSON to this file."),
    ] = None,
    markdown_file: Annotated[
        Path | None,
        typer.Option(
            "--markdown",
            parser=file_path,
            help="Write the report as markdown to this file.",
        ),
    ] = None,
    cells: Annotated[
        Path | None,
        typer.Option(
            help="Keep every finished cell (a baseline, or one attack at one budget) and the "
            "attacked networks in this folder: run again to go on where a run stopped, or run "
            "two processes on it to share the work."
        ),
    ] = None,
    stored_only: Annotated[
        bool,
        typer.Option(
            help="Compute nothing: report what --cells holds and list the missing cells as not "
            "run (the report then fails)."
        ),
    ] = False,
    debug: Debug = False,
) -> None:
    """Attack a locked model as a thief would; print the report, exit 1 when the gate fails.

    The thief has the shipped files and x % of the training data; the model is a reference
    model of the suite or yours (docs/security.md). Exit codes: 0 passed, 1 failed, 2 bad
    option, unusable file or report file not written, 70 unexpected error, 74 standard output
    not writable, 130 Ctrl-C (143 SIGTERM; no report written), 141 output closed.
    """
    with _unexpected_errors("audit", debug):
        _audit(
            model,
            preset,
            quick,
            budgets,
            seeds,
            attacks,
            victim_epochs,
            json_file,
            markdown_file,
            cells,
            stored_only,
        )


def _audit(
    model: str,
    preset: AuditPreset,
    quick: bool,
    budgets: str,
    seeds: int | None,
    attacks: str,
    victim_epochs: int | None,
    json_file: Path | None,
    markdown_file: Path | None,
    cells: Path | None,
    stored_only: bool,
) -> None:
    """``skprotect audit``'s work, its exit codes 0 to 2 (:func:`audit`)."""
    _require_protector("audit", 2)  # not 1: that says the gate failed
    from .audit import ATTACKS, AuditConfig, load_spec, run_audit
    from .lock import LockSettings

    chosen = tuple(a.strip() for a in attacks.split(",") if a.strip())
    if not chosen or set(chosen) - set(ATTACKS):
        typer.echo(
            f"error: --attacks takes names from {', '.join(ATTACKS)} separated by commas, got "
            f"'{attacks}'",
            err=True,
        )
        raise typer.Exit(2)
    if len(set(chosen)) < len(chosen):
        typer.echo(
            f"error: --attacks lists an attack twice, got '{attacks}'; give each once", err=True
        )
        raise typer.Exit(2)

    outputs = {"--json": json_file, "--markdown": markdown_file}
    for option, path, wanted in (
        *((o, p, "a file name") for o, p in outputs.items()),
        ("--cells", cells, "a folder"),
    ):
        if path is not None and (problem := empty_path(path, option, wanted)):
            typer.echo(f"error: {problem}", err=True)  # '' is read as '.': cells went there
            raise typer.Exit(2)
    for option, path in outputs.items():
        if path is not None:
            _refuse_unwritable(path, option)
    if json_file is not None and markdown_file is not None and _same_file(json_file, markdown_file):
        typer.echo(
            f"error: --json and --markdown both name {json_file}: one report would overwrite "
            "the other; give two files",
            err=True,
        )
        raise typer.Exit(2)
    spec_file = _spec_file(model)
    for option, path in outputs.items():
        if path is not None and spec_file is not None and _same_file(path, spec_file):
            typer.echo(
                f"error: {option} {path} is the --model file {spec_file}: the report would "
                "replace your spec; give another path",
                err=True,
            )
            raise typer.Exit(2)
    try:
        values = tuple(float(b) for b in budgets.split(",") if b.strip())
    except ValueError:
        percent = " (percentages without '%', e.g. 1,5)" if "%" in budgets else ""
        typer.echo(
            f"error: --budgets must be numbers separated by commas{percent}, got '{budgets}'",
            err=True,
        )
        raise typer.Exit(2) from None
    if not values:  # `--budgets ""` (a shell variable left unset) was "must be in (0, 100]"
        typer.echo("error: --budgets is empty: give one budget or more, e.g. 1,5", err=True)
        raise typer.Exit(2)
    if any(not 0 < b <= 100 for b in values):
        typer.echo(f"error: every budget must be in (0, 100], got '{budgets}'", err=True)
        raise typer.Exit(2)
    if len({f"{b:g}" for b in values}) < len(values):  # the report and cells name it so
        typer.echo(
            f"error: --budgets lists a budget twice, got '{budgets}'; give each once", err=True
        )
        raise typer.Exit(2)
    if stored_only and cells is None:
        typer.echo(
            "error: --stored-only reports what a cells folder holds: pass --cells DIR", err=True
        )
        raise typer.Exit(2)
    try:
        spec = load_spec(model)
    except SkProtectError as err:
        if (cause := err.__cause__) is not None and not isinstance(cause, SkProtectError):
            # an error in your file or model: its traceback says where
            typer.echo("".join(traceback.format_exception(cause)), err=True)
        typer.echo(f"error: --model: {err}", err=True)
        raise typer.Exit(2) from None
    except Exception as err:  # a function NAME of yours raised: its traceback, then exit 2, not 1
        typer.echo(traceback.format_exc(), err=True)
        typer.echo(f"error: --model: {model} raised {type(err).__name__}: {err}", err=True)
        raise typer.Exit(2) from None
    try:
        report = run_audit(
            AuditConfig(
                model=spec,
                budgets=values,
                attacks=chosen,
                quick=quick,
                seeds=seeds,
                victim_epochs=victim_epochs,
                lock_settings=LockSettings.preset(preset.value),
                cells=cells,
                stored_only=stored_only,
            ),
            log=lambda line: typer.echo(line, err=True),
        )
    except SkProtectError as err:  # a damaged --cells folder, nothing stored, no lockable layer
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: exit 130 or 143 (typer) said nothing
        kept = (
            f"; the finished cells are kept in {cells}: run the same command again to go on"
            if cells is not None and not stored_only
            else ""
        )
        typer.echo(f"error: interrupted: the audit stopped, no report written{kept}", err=True)
        raise
    text = report.to_markdown()
    typer.echo(text)  # first: a report that cannot be written is still on screen
    for warning in report.warnings:  # report-only (A5): never changes the exit code
        typer.echo(f"warning: {warning}", err=True)
    for caveat in report.caveats:
        typer.echo(f"caveat: {caveat}", err=True)
    contents = {"--json": report.to_json, "--markdown": lambda: text}
    written = [
        _write_report(path, contents[option](), option)
        for option, path in outputs.items()
        if path is not None
    ]
    if not all(written):
        raise typer.Exit(2)
    if not report.passed:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
