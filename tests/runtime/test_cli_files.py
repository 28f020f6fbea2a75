"""``skprotect run``'s files: inputs it cannot read, and outputs replaced as ``numpy.save``
would write them.

The atomic write (temporary file, then rename) made a new file each time: a 0600 output came
back 0644 (readable by every user) whatever the umask, and an output path that is a symbolic
link was replaced by a file, leaving the file it named with the earlier result.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from skruntime.cli import read_inputs, write_outputs
from skruntime.cli_errors import CliError

Y = np.arange(6, dtype=np.float32).reshape(2, 3)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_077():
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def test_an_existing_output_keeps_its_permissions(tmp_path: Path) -> None:
    out = tmp_path / "y.npy"
    out.write_bytes(b"earlier result")
    out.chmod(0o600)
    write_outputs(out, [Y], ["y"])
    assert _mode(out) == 0o600
    np.testing.assert_array_equal(np.load(out), Y)


def test_a_new_output_follows_the_umask(tmp_path: Path, umask_077: None) -> None:
    out = tmp_path / "y.npz"
    write_outputs(out, [Y, Y[0]], ["logits", "feat"])
    assert _mode(out) == 0o600


def test_a_symbolic_link_is_written_through(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    real = tmp_path / "runs" / "y.npy"
    real.write_bytes(b"earlier result")
    link = tmp_path / "latest.npy"
    link.symlink_to(real)
    write_outputs(link, [Y], ["y"])
    assert link.is_symlink()
    np.testing.assert_array_equal(np.load(real), Y)
    assert sorted(p.name for p in real.parent.iterdir()) == ["y.npy"]  # no temporary left


def test_an_input_that_declares_more_data_than_memory_is_an_input_error(tmp_path: Path) -> None:
    """A damaged .npy whose header claims 768 TiB: numpy's MemoryError was exit 1 without the
    file's name."""
    path = tmp_path / "x.npy"
    with path.open("wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 40, 3, 8, 8)}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(64))
    with pytest.raises(
        CliError, match=r"cannot read input file .*x\.npy .*Unable to allocate"
    ) as e:
        read_inputs([path], ["x"])
    assert e.value.code == 5


def test_a_loop_of_symbolic_links_is_one_output_error(tmp_path: Path) -> None:
    (tmp_path / "a.npy").symlink_to(tmp_path / "b.npy")
    (tmp_path / "b.npy").symlink_to(tmp_path / "a.npy")
    with pytest.raises(CliError, match=r"could not write --output .*a\.npy") as e:
        write_outputs(tmp_path / "a.npy", [Y], ["y"])
    assert e.value.code == 1


@pytest.mark.parametrize(
    ("error", "advice"),
    [
        (OSError(28, "No space left on device"), "free space or pass another path."),
        (OSError(30, "Read-only file system"), "pass another path."),
    ],
)
def test_a_failed_write_advises_freeing_space_only_for_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, advice: str
) -> None:
    """Every failed write said "free space or pass another path", a read-only folder too."""

    def failing_write(*args: object) -> None:
        raise error

    monkeypatch.setattr("skruntime.config.write_all", failing_write)
    with pytest.raises(CliError) as e:
        write_outputs(tmp_path / "y.npy", [Y], ["y"])
    assert (
        str(e.value)
        == f"could not write --output {tmp_path / 'y.npy'} ({error.strerror}); {advice}"
    )


def test_a_full_device_as_output_is_one_output_error(tmp_path: Path) -> None:
    (tmp_path / "y.npy").symlink_to("/dev/full")
    with pytest.raises(CliError) as e:
        write_outputs(tmp_path / "y.npy", [Y], ["y"])
    assert (e.value.code, str(e.value)) == (
        1,
        f"could not write --output {tmp_path / 'y.npy'} (No space left on device); free space "
        "or pass another path.",
    )
