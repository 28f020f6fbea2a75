"""Which compile failures say that the disk was full (:func:`inductor._out_of_space`).

Any line of the compiler's output that held "No space left on device" was taken for a full
disk: a C++ error whose quoted source line held the words (a string in the code) was reported as
"AOTInductor compilation ran out of disk space", quoting that source line. Only a diagnostic
whose reason is the system's (the words last, as ``perror`` writes them) counts now."""

from __future__ import annotations

import errno
import os

import pytest

from skprotect_pytorch.export.inductor import _out_of_space

FULL = os.strerror(errno.ENOSPC)
QUOTA = os.strerror(errno.EDQUOT)


def compile_error(*output: str) -> RuntimeError:
    """torch's error for a failed C++ compile, with the compiler's ``output`` lines."""
    command = "C++ compile error\n\nCommand:\ng++ x.cpp -o x.so\n\nOutput:\n"
    return RuntimeError(command + "\n".join(output))


@pytest.mark.parametrize(
    "line",
    [
        f"/tmp/cc57xH7N.s: Fatal error: /cache/w.o: {FULL}",  # GNU as, measured
        f"{{standard input}}: Fatal error: can't write 12 bytes to section .text of w.o: '{FULL}'",
        f"/usr/bin/ld: final link failed: {FULL}",
        f"/usr/bin/ld: cannot open output file /cache/w.so: {FULL}",
        f"cc1plus: fatal error: /cache/x.cpp: {FULL}",
        f"/cache/x.cpp:1:10: fatal error: opening dependency file x.d: {QUOTA}",
        f"ld.lld: error: failed to write output '/cache/w.so': {FULL}",
        f"ptxas fatal   : could not write /cache/k.cubin ({FULL})",
        f"OSError: [Errno {errno.ENOSPC}] {FULL}: '/cache/w.so'",
        f"[Errno {errno.EDQUOT}] {QUOTA}",
    ],
)
def test_a_diagnostic_of_a_full_disk_says_so(line):
    failure = compile_error("/tmp/cc57xH7N.s: Assembler messages:", f"  {line}  ")
    assert _out_of_space(failure) == line


@pytest.mark.parametrize(
    "lines",
    [
        # GCC quotes the source line under its diagnostic
        (
            "/c/x.cpp:12:5: error: 'fail' was not declared in this scope",
            f'   12 |     fail("write: {FULL}");',
            "      |     ^~~~",
        ),
        ("/c/x.cpp:3:1: error: expected ';'", f"    3 | // the cache: {FULL}"),
        (f'/c/x.cpp:7:9: error: no match for call to fail("{FULL}")',),
        (f"/c/x.cpp:8:2: note: {FULL} is not a type name here",),
    ],
    ids=["quoted string", "quoted comment", "call in the message", "words then more"],
)
def test_a_compile_error_that_holds_the_words_is_no_full_disk(lines):
    assert _out_of_space(compile_error(*lines)) is None


def test_a_full_disk_below_the_compile_error_is_found():
    """The errors it came from count too: the ``OSError`` itself, or its text."""
    wrapped = RuntimeError("C++ compile error")
    wrapped.__cause__ = OSError(errno.ENOSPC, FULL, "/cache/w.so")
    assert _out_of_space(wrapped) == f"[Errno {errno.ENOSPC}] {FULL}: '/cache/w.so'"
    told = RuntimeError("C++ compile error")
    told.__context__ = compile_error(f"/usr/bin/ld: final link failed: {FULL}")
    assert _out_of_space(told) == f"/usr/bin/ld: final link failed: {FULL}"
