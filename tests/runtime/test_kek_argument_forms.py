"""The forms a key-encryption key given to the runtime (``kek=``) takes by mistake.

``skprotect export-kek`` writes the KEK as base64 text and a newline; read as it is
(``Path(file).read_bytes()``), that is 45 bytes, and the runtime said only "kek must be 32
bytes, but got 45." The message now says what was given (its base64 or hex text) and how to
turn it into the 32 raw bytes, and never echoes the key.
"""

from __future__ import annotations

import base64

import pytest

from skruntime.errors import KeyUnavailableError
from skruntime.keysource import check_kek

KEK = bytes(range(7, 39))
B64 = base64.b64encode(KEK)

DECODE = r"pass base64\.b64decode\(Path\(file\)\.read_bytes\(\)\)\."


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (B64 + b"\n", r"but got 45 bytes holding its base64 text \(as `skprotect export-kek` "),
        (B64, r"but got 44 bytes holding its base64 text .*" + DECODE),
        (B64.decode() + "\n", r"but got a str holding its base64 text .*" + DECODE),
        (KEK.hex(), r"but got a str holding its hex text: pass bytes\.fromhex\(text\)\."),
        (KEK.hex().encode() + b"\r\n", r"but got 66 bytes holding its hex text: pass bytes\."),
        (KEK + b"\n", r"but got 33 bytes: pass the key that `skprotect export-kek` writes, base"),
        (b"", r"but got 0 bytes: .*base64-decoded \(base64\.b64decode\(Path\(file\)\.read_b"),
        (base64.b64encode(KEK[:16]), r"but got 24 bytes: pass the key that"),
        (memoryview(KEK), r"but got memoryview\.$"),
        (32, r"but got int\.$"),
    ],
    ids=[
        "file-bytes",
        "base64-stripped",
        "base64-str",
        "hex-str",
        "hex-bytes-crlf",
        "raw-with-newline",
        "empty",
        "base64-of-16-bytes",
        "memoryview",
        "int",
    ],
)
def test_a_kek_in_another_form_says_how_to_pass_it(given: object, message: str) -> None:
    with pytest.raises(KeyUnavailableError, match=r"^kek must be 32 bytes, the raw key-e") as err:
        check_kek(given)
    assert err.match(message)
    for secret in (KEK, B64, KEK.hex().encode()):
        assert secret.decode("latin-1") not in str(err.value)
        assert all(secret not in repr(a).encode("latin-1") for a in err.value.args)


@pytest.mark.parametrize("given", [KEK, bytearray(KEK)], ids=["bytes", "bytearray"])
def test_the_raw_kek_is_taken_as_bytes(given: bytes | bytearray) -> None:
    kek = check_kek(given)
    assert type(kek) is bytes and kek == KEK


def test_no_kek_stays_none() -> None:
    assert check_kek(None) is None
