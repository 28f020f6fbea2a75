"""The runner: ``skprotect run OUTPUTS_DIR MODEL --format onnx --input x.npy --output y.npy``.

Registered into the ``skprotect`` typer app (``skprotect_pytorch.cli``). This module imports only
the standard library, numpy and typer at import time; skruntime's runtime (and with it
onnxruntime, or torch for the torch formats) is imported inside the command, so running an ONNX
model never imports torch.

Exit codes (:data:`.cli_errors.EXIT_CODES`): 0 ok, 2 usage, 3 configuration or integrity
error, 4 key or licence error, 5 input error, 6 missing folder, file, model or format, 1 anything
else, 130 Ctrl-C, 143 SIGTERM (:func:`sigterm_as_interrupt`), 74 and 141 standard output not
writable or closed (:class:`OutputGroup`). Errors are printed as one ``error: ...`` line on
stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import enum
import errno
import io
import json
import os
import signal
import stat
import sys
import threading
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any, TypeGuard

import numpy as np
import typer
from typer.core import TyperGroup

from .cli_errors import (
    EXIT_CONFIGURATION,
    EXIT_INPUT,
    EXIT_NOT_FOUND,
    EXIT_OTHER,
    EXIT_TERMINATED,
    EXIT_USAGE,
    CliError,
    empty_option,
    exit_code_for,
    not_a_file,
)
from .cli_keys import read_kek, read_server_public_key

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_IO_ERROR",
    "OutputGroup",
    "RunFormat",
    "as_the_process",
    "discard_stdout",
    "file_path",
    "output_problem",
    "run_command",
    "sigterm_as_interrupt",
    "sigterm_handled_by",
    "stdout_failed",
    "stdout_failure",
    "write_output_file",
]


class RunFormat(enum.StrEnum):
    """Protected model formats the runner can load (the configuration's format slugs)."""

    onnx = "onnx"
    torchscript_cpu = "torchscript_cpu"
    torchscript_gpu = "torchscript_gpu"
    inductor_cpu = "inductor_cpu"
    inductor_gpu = "inductor_gpu"


class RunPlatform(enum.StrEnum):
    """Deployment platform whose configuration to read."""

    TXT = "TXT"
    LINUX = "LINUX"


def _check_device(value: str) -> str:
    from skruntime.backends.base import device_problem  # the runtime's rule, imported on use

    if problem := device_problem(value):
        raise typer.BadParameter(problem)
    return value


def _check_threads(value: int | None) -> int | None:
    from skruntime.backends.base import threads_problem

    if value is not None and (problem := threads_problem(value)):
        raise typer.BadParameter(problem)
    return value


def file_path(text: str) -> Path:
    """An option's path to a file to write (typer's ``parser``): ``Path`` drops a trailing
    ``/``, so ``-o out.npz/``, a folder by its spelling, wrote the file ``out.npz``. Refused."""
    path = Path(text)
    if text not in ("", ".") and os.path.basename(text) in ("", "."):  # '' is empty_path's
        # '/', './' and '../' are folders without the '/' too: "pass '/'" contradicted itself
        bare = "" if path.name in ("", ".", "..") else f"'{path}' (no trailing '/') or "
        raise typer.BadParameter(
            f"{text!r} names a folder (a trailing '/'), but a file is expected: pass "
            f"{bare}a file in that folder"
        )
    return path


def given_path(what: str) -> Callable[[str], Path]:
    """A typer ``parser`` of a path that refuses an empty one, saying to pass ``what``: typer
    reads ``''`` as ``.``, so ``skprotect run "$APP_DIR" MODEL`` with ``APP_DIR`` unset ran the
    configuration of the current folder, and ``scan "$DIR"`` scanned it."""

    def parse(text: str) -> Path:
        if not text:
            raise typer.BadParameter(
                f"the path is empty (a shell variable left unset?); pass {what}"
            )
        return Path(text)

    return parse


def _array_suffix(path: Path) -> str:
    """``path``'s extension in lower case: ``X.NPY`` (as Windows tools name files) is a ``.npy``
    file, as numpy reads it; it was refused as "must be a .npy or .npz file"."""
    return path.suffix.lower()


def discard_stdout() -> None:
    """Point standard output at the null device, so that what is left in its buffer after a
    broken pipe goes nowhere instead of into a warning at exit; a stdout without a file
    descriptor (tests' CliRunner) is left as it is."""
    with suppress(OSError, ValueError, AttributeError):
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, sys.stdout.fileno())
        finally:
            os.close(null)


EXIT_IO_ERROR = 74
"""Standard output could not be written (sysexits' EX_IOERR): a full disk, ``> /dev/full``."""
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""Standard output closed before all was printed (141, as a shell reports a process a closed
pipe ended)."""


#: errors of a write whose data found no room: standard output's only when standard output
#: itself has none left (:func:`_stdout_without_room`): a protection or an audit writing its own
#: files on a full disk is the command's error, not "the output could not be written".
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _stdout_without_room() -> bool:
    """Whether standard output can take nothing more: ``/dev/full``, or a file at the file size
    limit or on a disk without a free block. Checked where flushing cannot tell
    (``PYTHONUNBUFFERED``: nothing is left in the buffer to fail again)."""
    try:
        fd = sys.stdout.fileno()
        status = os.fstat(fd)
        if stat.S_ISCHR(status.st_mode):
            return status.st_rdev == os.stat("/dev/full").st_rdev
        if not stat.S_ISREG(status.st_mode):
            return False
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        at_limit = limit != resource.RLIM_INFINITY and status.st_size >= limit
        return at_limit or os.fstatvfs(fd).f_bavail == 0
    except (AttributeError, OSError, ValueError, ImportError):
        return False  # no file behind it (a test's capture), or no such check here


def stdout_failed(err: BaseException) -> TypeGuard[OSError]:
    """Whether ``err`` is standard output failing: a broken pipe (the only pipe these command
    lines write to), an error that flushing standard output raises again (what could not be
    written stays in its buffer), or a write that found no room while standard output has none
    (:func:`_stdout_without_room`)."""
    if not isinstance(err, OSError):
        return False
    if err.errno == errno.EPIPE:
        return True
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError):
        return True
    return err.errno in _NO_ROOM and _stdout_without_room()


def stdout_failure(err: OSError, note: str = "") -> tuple[str, int]:
    """The one line to say on stderr when standard output failed with ``err``
    (:func:`stdout_failed`), and the exit code: :data:`EXIT_BROKEN_PIPE` or
    :data:`EXIT_IO_ERROR`. ``note``: what the exit code does not say. Points standard output
    at the null device (:func:`discard_stdout`), so that exit adds no second error."""
    discard_stdout()
    note = f"; {note}" if note else ""
    if err.errno == errno.EPIPE:
        return (
            f"the output was closed (broken pipe) before all was printed{note}: read its "
            "output whole, or save it to a file",
            EXIT_BROKEN_PIPE,
        )
    return (
        f"the output could not be written ({err.strerror or err}){note}: send it to a file "
        "or pipe that takes it all (a disk with space left)",
        EXIT_IO_ERROR,
    )


class OutputGroup(TyperGroup):
    """A command line's top group: standard output failing while it prints (``--help``,
    ``--version`` or a command's result, to ``/dev/full`` or a closed pipe) is one line on
    stderr (:meth:`say`) and :func:`stdout_failure`'s exit code, where typer printed a
    traceback, or exited 1 without a word on a broken pipe (rich, which prints the help, ends
    the process with ``SystemExit(1)`` while handling the ``BrokenPipeError``). A closed pipe
    while the command line is parsed (:func:`_while_parsing`: ``--help | head -1``) is silent
    and exits 141, as ``ls --help`` and ``git --help`` do: its reader took what it wanted."""

    def say(self, message: str) -> None:
        """Print the ``error:`` line of a failed standard output."""
        typer.echo(f"error: {message}", err=True)

    @contextmanager
    def _stdout_errors(self) -> Iterator[None]:
        try:
            yield
        except (OSError, SystemExit) as raised:
            err = raised if isinstance(raised, OSError) else raised.__context__
            if isinstance(raised, SystemExit) and not isinstance(err, BrokenPipeError):
                raise  # a command's own exit
            if not stdout_failed(err):
                raise
            if err.errno == errno.EPIPE and _while_parsing(raised):
                discard_stdout()
                raise typer.Exit(EXIT_BROKEN_PIPE) from None
            message, code = stdout_failure(err)
            with suppress(OSError):  # stderr may be the closed pipe too
                self.say(message)
            raise typer.Exit(code) from None

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        """Parsing runs ``--help`` and ``--version``, which print."""
        with self._stdout_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        """The commands, and their ``--help``."""
        with self._stdout_errors():
            return super().invoke(ctx)


def _while_parsing(err: BaseException) -> bool:
    """Whether ``err`` was raised while a command line was parsed (in click's
    ``make_context``, of the top group or of a command): only ``--help``, ``--version`` and a
    group run without a command print then, never a command's result."""
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "make_context":
            return True
        tb = tb.tb_next
    return False


@contextmanager
def sigterm_handled_by(handler: Any) -> Iterator[None]:
    """Within the block, SIGTERM is handled by ``handler`` (a function or ``signal.SIG_DFL``),
    then as before; in the main thread only: ``signal.signal`` refuses the others, where
    nothing changes. For command line entry points only: a library must not take over a
    process's signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


_THE_PROCESS = threading.local()
"""``active``: the command runs as its process's program (:func:`as_the_process`)."""


@contextmanager
def as_the_process() -> Iterator[None]:
    """Within the block, the command line is its process's program (the ``skprotect`` entry
    point, not a test's ``CliRunner``): ``run`` then keeps core dumps off for the rest of the
    process (:func:`~skruntime.system.disable_core_dumps`), not only while it runs. The key's
    copies stay in memory until the process ends (see the security notes of
    docs/runtime.md): with core dumps back on after the run (until 2026-12-07), a crash while
    the process ended (a framework's teardown, an ``atexit`` handler) dumped them."""
    before = getattr(_THE_PROCESS, "active", False)
    _THE_PROCESS.active = True
    try:
        yield
    finally:
        _THE_PROCESS.active = before


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` where the program is, so that a
    file being written is cleaned up as on Ctrl-C (SIGTERM's default ended the process at once,
    leaving the temporary ``.NAME.XXXX.tmp`` of an atomic write beside the target), and the
    command then exits with :data:`EXIT_TERMINATED` instead of Ctrl-C's 130. Main thread only
    (:func:`sigterm_handled_by`)."""
    terminated = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal terminated
        terminated = True
        raise KeyboardInterrupt

    with sigterm_handled_by(interrupt):
        try:
            yield
        except (SystemExit, KeyboardInterrupt):  # typer turns KeyboardInterrupt into exit 130
            if terminated:
                raise SystemExit(EXIT_TERMINATED) from None
            raise


#: What numpy raises for a file it cannot read as an array; MemoryError: a header that
#: declares more data than memory holds (a damaged or foreign file: "Unable to allocate
#: 768. TiB"), which is the input file's fault, not an internal error.
_READ_ERRORS = (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile)


def _unreadable(path: Path, err: object) -> CliError:
    return CliError(
        f"cannot read input file {path} as {_array_suffix(path)} ({err}). Save inputs with "
        f"numpy.save (.npy) or numpy.savez (.npz); object arrays are not accepted.",
        EXIT_INPUT,
    )


#: How each input file must begin: numpy's .npy header, or a zip archive (``numpy.savez``; an
#: empty archive is only its end record). Any other file was handed to numpy, which reads it as
#: a pickle and advised loading it "unsafely" with ``allow_pickle`` (a damaged file included).
_MAGIC = {".npy": (b"\x93NUMPY",), ".npz": (b"PK\x03\x04", b"PK\x05\x06")}


def _what_it_is(head: bytes, suffix: str) -> str:
    """What a file is that lacks the header a ``suffix`` file starts with, from its first bytes."""
    other = ".npz" if suffix == ".npy" else ".npy"
    if head.startswith(_MAGIC[other]):
        return f"the file is {'a .npz archive' if other == '.npz' else 'a single .npy array'}"
    return f"the file is {'of another format, or damaged' if head else 'empty'}: no {suffix} header"


@contextmanager
def _array_file(path: Path) -> Iterator[Any]:
    """A ``.npy`` array, or an open ``NpzFile`` for a ``.npz`` (checked to be one), read from
    ``path`` opened only if it is a regular file (:func:`~skruntime.files.open_regular`: a
    named pipe swapped in after the path was checked blocked the runner for ever). An archive's
    arrays are read lazily: within the block only."""
    from skruntime.files import NotRegularFileError, open_regular

    try:
        file = open_regular(path)
    except (NotRegularFileError, FileNotFoundError) as err:
        raise not_a_file(path, "input file", getattr(err, "kind", None)) from err
    except OSError as err:  # e.g. no read permission
        raise _unreadable(path, err.strerror or err) from err
    with file:
        try:
            head = file.read(6)
            file.seek(0)
        except OSError as err:
            raise _unreadable(path, err.strerror or err) from err
        if not head.startswith(_MAGIC[_array_suffix(path)]):
            raise _unreadable(path, _what_it_is(head, _array_suffix(path)))
        try:
            loaded = np.load(file, allow_pickle=False)
        except _READ_ERRORS as err:
            raise _unreadable(path, err) from err
        if _array_suffix(path) == ".npy":
            yield loaded
            return
        with loaded:
            yield loaded


def _archive_member(path: Path, archive: Any, key: str) -> np.ndarray:
    """The array ``key`` of an open ``.npz``; numpy returns a member without a .npy header (a
    damaged one, or a file added to the zip) as its raw bytes, which went on to the model."""
    try:
        array = archive[key]
    except _READ_ERRORS as err:
        raise _unreadable(path, f"array {key}: {err}") from err
    if not isinstance(array, np.ndarray):
        raise _unreadable(path, f"its member {key} is not a .npy array")
    return array


def read_inputs(
    paths: Sequence[Path], input_names: Sequence[str]
) -> tuple[list[np.ndarray], list[str]]:
    """The model's inputs, in order, from one ``.npy`` per input or from one ``.npz``, and where
    each was read from (``x.npy``, ``inputs.npz[x]``), for the error of an input the model
    refuses.

    An ``.npz`` is matched by the model's input names, or else by ``arr_0``, ``arr_1``, ... (the
    names ``numpy.savez`` gives positional arrays) in order.
    """
    expected = len(input_names)
    if len(paths) == 1 and _array_suffix(paths[0]) == ".npz":
        path = paths[0]
        with _array_file(path) as archive:
            keys = list(archive.files)
            positional = [f"arr_{i}" for i in range(expected)]
            if set(input_names) <= set(keys):
                order = list(input_names)
            elif set(positional) <= set(keys):
                order = positional
            else:
                raise CliError(
                    f"{path} must hold the model's inputs named {', '.join(input_names)} "
                    f"(or arr_0..arr_{expected - 1} in order), but holds {', '.join(keys) or '-'}.",
                    EXIT_INPUT,
                )
            extra = sorted(set(keys) - set(order))
            if extra:
                raise CliError(
                    f"{path} holds array(s) {', '.join(extra)} that are not inputs of the "
                    f"model; expected only {', '.join(order)}.",
                    EXIT_INPUT,
                )
            arrays = [_archive_member(path, archive, k) for k in order]
            return arrays, [f"{path}[{k}]" for k in order]
    if any(_array_suffix(p) == ".npz" for p in paths):
        raise CliError(
            "pass either one .npz holding every input or one .npy per input, not a mix or "
            "several .npz files.",
            EXIT_USAGE,
        )
    if len(paths) != expected:
        raise CliError(
            f"the model takes {expected} input(s) ({', '.join(input_names)}), but got "
            f"{len(paths)} --input file(s). Pass one .npy per input, in order, or one .npz.",
            EXIT_INPUT,
        )
    arrays = []
    for path in paths:
        with _array_file(path) as array:
            arrays.append(array)
    return arrays, [str(p) for p in paths]


def output_problem(path: Path) -> str | None:
    """Why ``path`` cannot take an output file, or None, for a command to refuse it before its
    work: the file a symbolic link names is checked (:func:`write_output_file` replaces that
    one), and a device or named pipe needs no writable folder, only write permission."""
    from skruntime.config import unwritable_reason
    from skruntime.files import LINK_LOOP, path_kind

    if path_kind(path) == LINK_LOOP:  # realpath stops in the loop: its write failed after the run
        return f"it is {LINK_LOOP}; pass another path"
    if _is_special(path):  # through its links, not realpath: /dev/stdout names "pipe:[…]"
        return None if os.access(path, os.W_OK) else "it is not writable; pass another path"
    return unwritable_reason(os.path.realpath(path))


def _is_special(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an existing file that is neither a regular file nor a folder: a
    device (``/dev/null``) or a named pipe, which ``--output`` writes into, as ``numpy.save``
    would, instead of replacing it (a symbolic link to ``/dev/null`` run as root replaced the
    system's ``/dev/null`` with a regular file)."""
    from skruntime.files import path_kind

    return path_kind(path) not in (None, "a folder")


def _write_npz(buffer: io.BytesIO, names: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
    """An ``.npz`` archive holding each array under its name, as ``np.savez(f, **arrays)``
    writes it, for any name: ``np.savez``'s own parameters would take an output named ``file``
    (a TypeError) or ``allow_pickle`` (read as the flag: the output silently left out)."""
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in zip(names, arrays, strict=True):
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def _output_target(path: Path) -> tuple[Path, int]:
    """The file to replace for ``--output`` and its permissions, as ``numpy.save`` would
    write it: through a symbolic link to the file it names (replacing the link would leave
    that file stale), keeping an existing file's permissions, else those of a new file under
    the umask (the replacing file is new: a 0600 file came back 0644, readable by all)."""
    target = Path(os.path.realpath(path))
    try:
        return target, stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return target, 0o666 & ~umask


def write_output_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as ``numpy.save`` would (:func:`_output_target`), through a
    temporary file: a full disk leaves no truncated file and an earlier one whole. A device or
    a named pipe (``/dev/stdout``, a link to ``/dev/null``) is written into, never replaced
    (:func:`_is_special`). Raises ``OSError`` (a loop of symbolic links too)."""
    from skruntime.config import atomic_write_bytes

    if _is_special(path):  # opened by its own name: the realpath of /dev/stdout to a pipe,
        Path(path).write_bytes(data)  # /proc/PID/fd/pipe:[N], names no file
        return
    target, mode = _output_target(path)
    atomic_write_bytes(target, data, mode=mode)


def write_outputs(path: Path, outputs: Sequence[np.ndarray], output_names: Sequence[str]) -> None:
    """Write one output to ``.npy``, or every output to ``.npz`` under its output name
    (:func:`write_output_file`)."""
    buffer = io.BytesIO()
    if _array_suffix(path) == ".npy":
        np.save(buffer, outputs[0], allow_pickle=False)
    else:
        _write_npz(buffer, output_names, outputs)
    try:
        write_output_file(path, buffer.getvalue())
    except OSError as err:
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)  # else "free space" misleads
        raise CliError(
            f"could not write --output {path} ({err.strerror or err}); "
            f"{'free space or ' if full else ''}pass another path.",
            EXIT_OTHER,
        ) from err


def _describe(names: Sequence[str], arrays: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    return [
        {"name": n, "shape": list(a.shape), "dtype": str(a.dtype)}
        for n, a in zip(names, arrays, strict=True)
    ]


def _input_at(output: Path, inputs: Sequence[Path]) -> Path | None:
    """The input file that ``output`` is, by its device and inode (another spelling, a symbolic
    or a hard link), or None: ``-o x.npy -i x.npy`` replaced the inputs with the outputs."""
    for path in inputs:
        with suppress(OSError):  # either missing: nothing to replace, or the read says why
            if os.path.samefile(output, path):
                return path
    return None


def _application_folders(outputs_dir: Path) -> list[str]:
    """The folders in ``outputs_dir`` that hold a configuration, when it holds none itself:
    ``skprotect run outputs MODEL`` (the folder above the application's) was told only that
    ``outputs`` holds no configuration, and to "point SkRuntime" at one."""
    from skruntime.config import CONFIG_FILENAMES

    def configured(folder: Path) -> bool:
        return any((folder / name).is_file() for name in CONFIG_FILENAMES.values())

    if configured(outputs_dir):
        return []
    try:
        return sorted(p.name for p in outputs_dir.iterdir() if p.is_dir() and configured(p))
    except OSError:  # unreadable: SkRuntime says what is wrong with the folder
        return []


def _run(
    outputs_dir: Path,
    model: str,
    fmt: str,
    inputs: Sequence[Path],
    output: Path | None,
    *,
    device: str,
    threads: int | None,
    static_key: bool,
    platform: str | None,
    kek: str | None,
    licence_server: str | None = None,
    server_public_key: Sequence[str] = (),
    state_dir: Path | None = None,
) -> dict[str, Any]:
    from skruntime.files import path_kind

    for option, path in [*(("--input", p) for p in inputs), ("--output", output)]:
        if path is None:
            continue
        if problem := empty_option(path, option):
            raise problem
        if path.name.lower() in (".npy", ".npz"):  # `-o "$NAME.npy"`, NAME unset
            raise CliError(
                f"{option} {path}: the file name is only its extension; pass a full name such as "
                f"data{path.name.lower()}.",
                EXIT_USAGE,
            )
        if _array_suffix(path) not in (".npy", ".npz"):
            raise CliError(f"{option} must be a .npy or .npz file, but got {path}.", EXIT_USAGE)
    if output is not None and (problem := output_problem(output)):  # before the model runs
        raise CliError(f"--output {output}: {problem}.", EXIT_USAGE)
    if output is not None and (source := _input_at(output, inputs)) is not None:
        raise CliError(
            f"--output {output} is the same file as --input {source}: the outputs would "
            "replace the inputs. Pass another --output path.",
            EXIT_USAGE,
        )
    if not outputs_dir.is_dir():
        kind = path_kind(outputs_dir) or ("a file" if outputs_dir.exists() else None)
        state = f"is {kind}, not a folder" if kind else "does not exist"
        raise CliError(
            f"outputs folder {outputs_dir} {state}: pass the folder that holds the "
            f"configuration (outputs/<application_name>).",
            EXIT_NOT_FOUND,
        )
    if apps := _application_folders(outputs_dir):
        raise CliError(
            f"{outputs_dir} holds no configuration but the folders of applications "
            f"({', '.join(apps)}): pass one of them, e.g. {outputs_dir / apps[0]}.",
            EXIT_CONFIGURATION,
        )
    for path in inputs:
        if not path.is_file():
            raise not_a_file(path, "input file")
    kek_bytes = read_kek(kek) if kek is not None else None
    licensing: dict[str, Any] = {}
    if licence_server is not None:
        if not server_public_key:
            raise CliError(
                "--licence-server needs --server-public-key (the server's public key, pinned).",
                EXIT_USAGE,
            )
        from skruntime.licensing.client import MAX_PINNED_KEYS  # httpx: only when licensing

        if len(server_public_key) > MAX_PINNED_KEYS:
            raise CliError(
                f"--server-public-key is given {len(server_public_key)} times: pin at most "
                f"{MAX_PINNED_KEYS} keys (the server's current key and the next).",
                EXIT_USAGE,
            )
        licensing = {
            "licence_server": licence_server,
            "server_public_key": [read_server_public_key(key) for key in server_public_key],
            "state_dir": state_dir,
        }
        # '' (typer: '.') would make the current folder owner-only and hold the device key
        if state_dir is not None and (
            problem := empty_option(state_dir, "--state-dir", "a folder")
        ):
            raise problem
    elif server_public_key or state_dir is not None:
        raise CliError("--server-public-key and --state-dir need --licence-server.", EXIT_USAGE)

    from skruntime import SkRuntime  # lazily: keeps `skprotect --help` fast and torch-free

    t0 = time.perf_counter()
    runtime = SkRuntime(outputs_dir, platform=platform, kek=kek_bytes, **licensing)
    try:
        summary = _run_loaded(
            runtime,
            outputs_dir,
            model,
            fmt,
            inputs,
            output,
            t0,
            device=device,
            threads=threads,
            static_key=static_key,
        )
    except BaseException:
        try:  # the first error is the one to report; a failing close() only adds a warning
            runtime.close()
        except Exception as close_err:
            typer.echo(f"warning: closing the runtime failed too: {close_err}", err=True)
        raise
    runtime.close()  # flushes the inference counter and reports usage
    return summary


def _run_loaded(
    runtime: Any,
    outputs_dir: Path,
    model: str,
    fmt: str,
    inputs: Sequence[Path],
    output: Path | None,
    t0: float,
    *,
    device: str,
    threads: int | None,
    static_key: bool,
) -> dict[str, Any]:
    from skruntime.backends.base import as_numpy  # the runtime's conversion, imported on use
    from skruntime.errors import InputError

    if model not in runtime.models():
        raise CliError(
            f"unknown model '{model}' in {outputs_dir}. Protected models: "
            f"{', '.join(runtime.models()) or '-'}.",
            EXIT_NOT_FOUND,
        )
    if fmt not in runtime.formats(model):
        raise CliError(
            f"model '{model}' was not protected to format '{fmt}'. Its formats: "
            f"{', '.join(runtime.formats(model)) or '-'}.",
            EXIT_NOT_FOUND,
        )
    loaded = runtime.load(
        model, fmt, device=device, intra_op_threads=threads, static_key=static_key
    )
    load_seconds = time.perf_counter() - t0
    with loaded:
        input_names = list(loaded.input_names)
        output_names = list(loaded.output_names)
        if output is not None and _array_suffix(output) == ".npy" and len(output_names) != 1:
            raise CliError(
                f"model '{model}' has {len(output_names)} outputs ({', '.join(output_names)}): "
                f"write them to a .npz file, not {output}.",
                EXIT_USAGE,
            )
        arrays, sources = read_inputs(inputs, input_names)
        t1 = time.perf_counter()
        try:
            results = [as_numpy(y) for y in loaded.run(arrays)]
        except InputError as err:  # it names the model's input: say which file that was
            read = ", ".join(f"{n!r} = {s}" for n, s in zip(input_names, sources, strict=True))
            raise CliError(f"{err}\nThe inputs were read from: {read}.", EXIT_INPUT) from err
        run_seconds = time.perf_counter() - t1
    if output is not None:
        write_outputs(output, results, output_names)
    return {
        "model": model,
        "format": fmt,
        "device": device,
        "inputs": _describe(input_names, arrays),
        "outputs": _describe(output_names, results),
        "output_file": str(output) if output is not None else None,
        "load_seconds": load_seconds,
        "run_seconds": run_seconds,
    }


def run_command(
    outputs_dir: Annotated[
        Path,
        typer.Argument(
            parser=given_path(
                "the folder that holds the configuration (outputs/<application_name>)"
            ),
            help="Folder holding the configuration, e.g. outputs/default_app.",
        ),
    ],
    model: Annotated[str, typer.Argument(help="Name of the protected model.")],
    fmt: Annotated[
        RunFormat, typer.Option("--format", "-f", help="Protected format to load.")
    ] = RunFormat.onnx,
    inputs: Annotated[
        list[Path],
        typer.Option(
            "--input",
            "-i",
            help="One .npy per model input, in order (repeat the option), or one .npz with "
            "arrays named like the model's inputs (or arr_0, arr_1, ...).",
        ),
    ] = ...,  # required: typer refuses a run without --input (exit 2)
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            parser=file_path,
            help="Where to write the result: .npy (single output) or .npz (keys = output names).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary (shapes, dtypes, timings).")
    ] = False,
    device: Annotated[
        str, typer.Option(callback=_check_device, help="cpu, cuda or cuda:N.")
    ] = "cpu",
    threads: Annotated[
        int | None,
        typer.Option(callback=_check_threads, help="Intra-op threads (default: the framework's)."),
    ] = None,
    static_key: Annotated[
        bool,
        typer.Option(
            "--static-key",
            help="Feed the static key file as is (models protected with test_key=True only).",
        ),
    ] = False,
    platform: Annotated[
        RunPlatform | None,
        typer.Option(help="Configuration to read when the folder holds both platforms'."),
    ] = None,
    kek: Annotated[
        str | None,  # not Path: it folds "//" into "/", which hides a base64 key (read_kek)
        typer.Option(
            metavar="FILE",
            help="LINUX platform: key-encryption key file, base64 (as `skprotect export-kek` "
            "writes it) or raw 32 bytes.",
        ),
    ] = None,
    licence_server: Annotated[
        str | None,
        typer.Option(help="URL of the sklicense server (platform version 2 configurations)."),
    ] = None,
    server_public_key: Annotated[
        list[str] | None,
        typer.Option(
            help="The licence server's Ed25519 public key: a file (raw or base64) or the base64 "
            "text `sklicense init` prints. Repeat it to pin the server's next key too, before "
            "its signing key is rotated."
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Device identity and licence cache (default $SKRUNTIME_STATE_DIR or "
            "~/.local/state/skruntime)."
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """Run a protected model on inputs from .npy/.npz files (the runner for every format).

    Exit codes: 0 ok, 1 other, 2 usage, 3 config/integrity, 4 key/licence, 5 input, 6 not found.
    """
    from skruntime.system import core_dumps_disabled, disable_core_dumps

    try:
        # a crash while the key is in memory writes no core file (its copy of the session key,
        # and of the KEK with --kek): for the rest of the process, whose memory holds copies of
        # the key until it ends; in-process (a test's CliRunner) for the run only
        if getattr(_THE_PROCESS, "active", False):
            disable_core_dumps()
        with core_dumps_disabled():
            summary = _run(
                outputs_dir,
                model,
                fmt.value,
                list(inputs),
                output,
                device=device,
                threads=threads,
                static_key=static_key,
                platform=platform.value if platform is not None else None,
                kek=kek,
                licence_server=licence_server,
                server_public_key=server_public_key or (),
                state_dir=state_dir,
            )
    except Exception as err:
        if debug:
            traceback.print_exc()
        # One line, except for messages that carry a table (the compatibility table).
        typer.echo(f"error: {str(err).strip() or type(err).__name__}", err=True)
        raise typer.Exit(exit_code_for(err)) from None
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    shapes = ", ".join(f"{o['name']} {tuple(o['shape'])} {o['dtype']}" for o in summary["outputs"])
    where = f" -> {output}" if output is not None else ""
    typer.echo(
        f"{model} [{summary['format']}, {device}]: {shapes}{where} "
        f"(load {summary['load_seconds'] * 1e3:.1f} ms, run {summary['run_seconds'] * 1e3:.2f} ms)"
    )
