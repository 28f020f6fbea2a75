"""A protection killed (SIGKILL, power loss) while it moved its files into place left a half
updated deployment: some new files in place, some previous ones in a hidden backup folder, the
configuration the previous one, so the runtime refused the model (IntegrityError) until someone
moved files back by hand; the next protection only warned. It now recovers: it rolls the dead
protection back when the configuration on disk records the backups, deletes them when it
records the files in place, and only warns when the files do not tell."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime

EF = SkProtectorPyTorch.ExportFormat
ALL = "net/onnx/key_params_net.json, net/onnx/key_vector_inv_net.txt, net/onnx/net.onnx"
INPUTS = [torch.randn(2, 8, generator=torch.Generator().manual_seed(0))]

# One process imports torch and the protector and runs a first ONNX export once, then forks a
# child per killed update (a fresh process took 3-4 s more for each case). On one thread: a
# child of a process whose OpenMP threads had run can hang in its own parallel code.
FORKER = textwrap.dedent(
    """
    import os, signal, sys, tempfile
    import onnxruntime, torch
    from torch import nn
    import skprotect_pytorch.pipeline as pipeline
    from skprotect_pytorch.protect import SkProtectorPyTorch

    answers = os.fdopen(os.dup(1), "w")  # the exit statuses; anything printed goes to stderr
    os.dup2(2, 1)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        first = os.path.join(folder, "first.onnx")
        torch.onnx.export(nn.Linear(8, 4).eval(), (torch.randn(2, 8),), first, dynamo=True)

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def update(where: str, version: int) -> None:
        real_replace, real_link = os.replace, os.link
        real_add_model, moves = pipeline.add_model, []

        def replace(src, dst):
            if "-backup" in str(dst) or ".staging-" not in str(dst):  # into place, or set aside
                moves.append(dst)
                if where == f"move {len(moves)}":
                    die()
            real_replace(src, dst)

        def link(src, dst):  # a replaced file is set aside as a hard link
            moves.append(dst)
            if where == f"move {len(moves)}":
                die()
            real_link(src, dst)

        def add_model(*args, **kwargs):
            if where == "before the configuration":
                die()
            real_add_model(*args, **kwargs)
            if where == "after the configuration":
                die()

        os.replace, os.link, pipeline.add_model = replace, link, add_model
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
        inputs = [torch.randn(2, 8, generator=torch.Generator().manual_seed(0))]
        SkProtectorPyTorch(application_name="app").protect_updated_model(
            model, "net", inputs, model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
            platform_version=version,
        )

    for line in sys.stdin:  # folder, output file, where, version: one update a line
        folder, output, where, version = line.rstrip("\\n").split("\\t")
        pid = os.fork()
        if pid == 0:
            with open(output, "w") as out:
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
            os.chdir(folder)
            signal.alarm(300)  # a hung update ends (SIGALRM), and the test says so
            try:
                update(where, int(version))
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), file=answers, flush=True)
    """
)


class Forker:
    """The forking process: :meth:`killed_update` runs one update in a child of it."""

    def __init__(self, log: Path) -> None:
        self.log = log
        # started before any test's ``workdir`` drops it: the updates' state folder is the
        # test's, not a $SKPROTECT_STATE_DIR of the environment (theirs failed, or wrote there)
        env = {k: v for k, v in os.environ.items() if k != "SKPROTECT_STATE_DIR"}
        with open(log, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-c", FORKER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                text=True,
            )

    def killed_update(self, workdir: Path, where: str, version: int = 2) -> None:
        """Update 'net' to the model of seed 1 in another process, SIGKILLed at ``where``."""
        output = workdir.with_name(workdir.name + "-update.txt")
        fields = (str(workdir), str(output), where, str(version))
        assert all("\t" not in f and "\n" not in f for f in fields)
        self.process.stdin.write("\t".join(fields) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the forking process ended:\n{self.log.read_text()}"
        returncode = int(line)
        assert returncode == -signal.SIGKILL, output.read_text()

    def close(self) -> None:
        """End the forking process: it exits once its input is closed."""
        self.process.stdin.close()
        self.process.stdout.close()
        assert self.process.wait(timeout=60) == 0, self.log.read_text()


@pytest.fixture(scope="module")
def forker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forker]:
    """One forking process for the module's killed updates."""
    process = Forker(tmp_path_factory.mktemp("forker") / "stderr.txt")
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def killed_update(forker: Forker, workdir: Path) -> Callable[..., None]:
    """``killed_update(where, version=2)``: update 'net' in the current folder to the model of
    seed 1 in another process, SIGKILLed at ``where``."""
    return functools.partial(forker.killed_update, workdir)


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def assert_serves(app: Path, expected: dict[str, nn.Module]) -> None:
    """The runtime loads every model of ``app`` and each computes its original's outputs."""
    runtime = SkRuntime(app)
    assert sorted(runtime.models()) == sorted(expected)
    x = INPUTS[0].numpy()
    for name, model in expected.items():
        with torch.no_grad():
            want = model(INPUTS[0]).numpy()
        np.testing.assert_allclose(runtime.load(name, fmt="onnx")(x), want, rtol=1e-4, atol=1e-5)


def leftovers(app: Path) -> list[str]:
    return sorted(p.name for p in app.iterdir() if p.name.startswith(".staging-"))


# The update moves 3 files (key params, key vector, model) into place, each one set aside
# (hard-linked into the backup folder) first: 6 moves; "move k" dies before the k-th.
@pytest.mark.parametrize(
    ("where", "committed", "named"),
    [
        ("move 1", False, "into place: none"),  # the backup folder made, nothing set aside
        # the new key params in place, the rest the previous files
        ("move 3", False, "into place: net/onnx/key_params_net.json."),
        ("move 6", False, ALL),  # the previous model set aside, the new one not moved in yet
        ("before the configuration", False, ALL),  # every new file in place, the old config
        ("after the configuration", True, ALL),  # complete, but its backups never deleted
    ],
)
def test_the_next_protection_recovers_a_killed_commit(
    workdir: Path, killed_update: Callable[..., None], where: str, committed: bool, named: str
) -> None:
    """Killed at each step of its commit, an update leaves the application serving again once
    another model is protected: the previous 'net' when the configuration was not written,
    the new one when it was; no backup is left, and the warning names the files."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(mlp(0), "net", INPUTS, model_export_formats=EF.ONNX)
    app = workdir / "outputs" / "app"
    killed_update(where)
    with pytest.warns(UserWarning, match="killed") as caught:
        protector.protect_new_model(mlp(2), "other", INPUTS, model_export_formats=EF.ONNX)
    assert_serves(app, {"net": mlp(1 if committed else 0), "other": mlp(2)})
    assert leftovers(app) == []
    said = "\n".join(str(w.message) for w in caught if "-backup" in str(w.message))
    assert ("previous files it had set aside were deleted" in said) == committed
    assert ("rolled back" in said) == (not committed)
    assert named in said


def test_an_update_of_the_same_model_recovers_and_completes(
    workdir: Path, killed_update: Callable[..., None]
) -> None:
    """The killed update run again: it recovers the previous files, then replaces them."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(mlp(0), "net", INPUTS, model_export_formats=EF.ONNX)
    killed_update("move 4")
    with pytest.warns(UserWarning, match="rolled back"):
        protector.protect_updated_model(mlp(1), "net", INPUTS, model_export_formats=EF.ONNX)
    app = workdir / "outputs" / "app"
    assert_serves(app, {"net": mlp(1)})
    assert leftovers(app) == []


def test_a_configuration_without_hashes_is_left_for_a_person(
    workdir: Path, killed_update: Callable[..., None]
) -> None:
    """Platform version 0 records no SHA-256: nothing tells which files belong, so nothing is
    touched, and the warning says what to do by hand."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        mlp(0), "net", INPUTS, model_export_formats=EF.ONNX, platform_version=0
    )
    app = workdir / "outputs" / "app"
    killed_update("move 3", version=0)
    [backup] = [name for name in leftovers(app) if name.endswith("-backup")]
    before = {p: p.read_bytes() for p in (app / backup).rglob("*") if p.is_file()}
    with pytest.warns(UserWarning, match="move it back"):
        protector.protect_new_model(
            mlp(2), "other", INPUTS, model_export_formats=EF.ONNX, platform_version=0
        )
    assert leftovers(app) == [backup]
    assert {p: p.read_bytes() for p in (app / backup).rglob("*") if p.is_file()} == before


def test_a_rollback_keeps_files_no_configuration_records(
    workdir: Path, killed_update: Callable[..., None]
) -> None:
    """A rollback deleted the files in the model's folders that no configuration records: a
    note someone kept there was lost with the dead protection's files. It is named instead."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(mlp(0), "net", INPUTS, model_export_formats=EF.ONNX)
    app = workdir / "outputs" / "app"
    note = app / "net" / "onnx" / "NOTES.txt"
    note.write_text("mine")
    killed_update("move 3")
    with pytest.warns(UserWarning, match="rolled back") as caught:
        protector.protect_new_model(mlp(2), "other", INPUTS, model_export_formats=EF.ONNX)
    assert note.read_text() == "mine"
    said = "\n".join(str(w.message) for w in caught if "rolled back" in str(w.message))
    assert "no configuration records them" in said and "net/onnx/NOTES.txt" in said
    assert_serves(app, {"net": mlp(0), "other": mlp(2)})
