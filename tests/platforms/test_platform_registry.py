"""Each deployment platform is one module behind one interface (skprotect_pytorch.platforms):
what each writes for a format group, and which key files each format then lists."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest

from skprotect_pytorch.formats import ExportPlatform
from skprotect_pytorch.lock.key_layout import KeyLayout
from skprotect_pytorch.platforms import GroupKeys, Platform, get_platform, write_platform_keys
from skprotect_pytorch.state import ProtectionState
from skruntime.keyfile import read_txt_keys
from skruntime.mev import read_mev

HASHES = {"torchscript_cpu": "a" * 64, "inductor_cpu": "b" * 64}
PLAIN = ["key_vector_inv_m.txt", "key_params_m.json"]


@pytest.fixture
def layout() -> KeyLayout:
    rng = np.random.default_rng(0)
    scales = [rng.uniform(1.0, 2.0, 4).astype(np.float32)]
    return KeyLayout([rng.permutation(5), rng.permutation(3)], scales)


@pytest.fixture
def state(tmp_path: Path) -> ProtectionState:
    return ProtectionState(tmp_path / "state", "app", b"\x07" * 32)


def written(
    platform: ExportPlatform, tmp_path: Path, layout: KeyLayout, state: ProtectionState, **kw
) -> dict[str, list[str]]:
    """The key files each format slug lists after writing the CPU group of model ``m``."""
    files = write_platform_keys(
        platform,
        tmp_path / "out" / "m" / "cpu",
        model_name="m",
        layout=layout,
        model_hashes=HASHES,
        state=state,
        key_epoch=0,
        **kw,
    )
    return {slug: [p.name for p in paths] for slug, paths in files.items()}


def test_every_export_platform_has_its_module() -> None:
    for member in ExportPlatform:
        platform = get_platform(member)
        assert isinstance(platform, Platform)
        assert platform.member is member
        assert type(platform).__module__ == f"skprotect_pytorch.platforms.{member.name.lower()}"


@pytest.mark.parametrize(
    ("member", "test_key", "plain"),
    [
        (ExportPlatform.TXT, False, True),
        (ExportPlatform.TXT, True, True),
        (ExportPlatform.LINUX, False, False),
        (ExportPlatform.LINUX, True, True),
    ],
)
def test_which_protections_write_plain_key_files(
    member: ExportPlatform, test_key: bool, plain: bool
) -> None:
    assert get_platform(member).writes_plain_keys(test_key) is plain


def test_txt_lists_the_groups_pair_for_each_format(
    tmp_path: Path, layout: KeyLayout, state: ProtectionState
) -> None:
    files = written(ExportPlatform.TXT, tmp_path, layout, state, test_key=False)
    assert files == {slug: PLAIN for slug in HASHES}
    folder = tmp_path / "out" / "m" / "cpu"
    for digest in HASHES.values():  # the pair unlocks each model file of the group
        key = read_txt_keys(folder, "m", model_sha256=digest)
        assert np.array_equal(key.static_key(), layout.static_key())


@pytest.mark.parametrize("test_key", [False, True])
def test_linux_lists_its_encrypted_file_and_a_test_keys_pair(
    tmp_path: Path, layout: KeyLayout, state: ProtectionState, test_key: bool
) -> None:
    files = written(ExportPlatform.LINUX, tmp_path, layout, state, test_key=test_key)
    assert files == {slug: [f"mev_m_{slug}.bin", *(PLAIN if test_key else [])] for slug in HASHES}
    folder = tmp_path / "out" / "m" / "cpu"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        {name for names in files.values() for name in names}
    )
    for slug, digest in HASHES.items():
        key = read_mev(
            folder / f"mev_m_{slug}.bin",
            model_name="m",
            fmt_slug=slug,
            model_sha256=digest,
            kek=state.kek,
        )
        assert np.array_equal(key.static_key(), layout.static_key())


def test_group_keys_show_and_pickle_no_secret() -> None:
    """Its ``repr`` held the application's KEK, the key and the commitment nonce, and a pickle
    of it the same: a crash reporter recording the locals of a failed key write wrote them out."""
    kek = bytes(range(32))
    keys = GroupKeys(
        "m",
        np.array([0.5, 7.25], np.float32),
        {},
        {},
        [],
        False,
        np.random.default_rng(0),
        "ab" * 32,
        kek,
    )
    text = repr(keys)
    assert "model_name='m'" in text
    assert repr(kek) not in text and "7.25" not in text and "ab" * 32 not in text
    for leak in (pickle.dumps, copy.copy):
        with pytest.raises(TypeError, match="holds the key and the KEK"):
            leak(keys)
