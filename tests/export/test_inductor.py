"""AOTInductor exporter: each compile takes 6-25 s, so every package is compiled once per module."""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent
from tests.export.toy_models import ConvNet, Toy, eager, export_onto_full_disk
from torch import nn
from torch._inductor import package as inductor_package
from torch.export import Dim

from skprotect_pytorch.errors import ExportError, InvalidArgumentError, VerificationError
from skprotect_pytorch.export import (
    build_export_options,
    cuda_available,
    get_exporter,
    verify_artifact,
)
from skprotect_pytorch.export.inductor import _cache_dir, build_folders, without_build_paths
from skprotect_pytorch.formats import ExportFormat
from skprotect_pytorch.lock import lock_model

CPU = get_exporter(ExportFormat.INDUCTOR_CPU)
GPU = get_exporter(ExportFormat.INDUCTOR_GPU)


@pytest.fixture(scope="module")
def locked_package(tmp_path_factory):
    """A real KeyedModel, its batch made dynamic by onnx_params["dynamic_axes"] alone."""
    torch.manual_seed(0)
    model = ConvNet().eval()
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    key = torch.from_numpy(locked.layout.static_key())
    x = torch.randn(2, 3, 16, 16)
    params = {"input_names": ["image"], "dynamic_axes": {"image": {0: "batch"}}}
    opts = build_export_options([x], params)
    path = tmp_path_factory.mktemp("aoti") / "m.pt2"
    report = CPU.export(locked.keyed, (x, key), path, opts, with_key=True)
    return model, key.numpy(), opts, report, CPU.load(report.path, opts)


@pytest.fixture(scope="module")
def original_package(tmp_path_factory):
    torch.manual_seed(0)
    model, x = nn.Linear(8, 3).eval(), torch.randn(2, 8)
    opts = build_export_options([x], {"input_names": ["x"]}, ({0: Dim("batch")},))
    path = tmp_path_factory.mktemp("aoti_orig") / "orig.pt2"
    report = CPU.export(model, (x,), path, opts, with_key=False)
    return model, opts, report


@pytest.mark.slow
def test_report(locked_package):
    _, _, _, report, _ = locked_package
    assert report.path.is_file() and report.path.suffix == ".pt2"
    assert report.fmt is ExportFormat.INDUCTOR_CPU
    assert report.exporter == "torch.export + aoti_compile_and_package (cpu)"
    assert report.notes[0].startswith("torch.export ")


@pytest.mark.slow
@pytest.mark.parametrize("batch", [3, 1, 16, 40])
def test_dynamic_batch_from_dynamic_axes(locked_package, batch):
    model, key, opts, report, _ = locked_package
    x = torch.randn(batch, 3, 16, 16)
    assert verify_artifact(CPU, report.path, opts, [x.numpy(), key], eager(model, x)) < 1e-4


@pytest.mark.slow
def test_package_carries_no_build_paths_and_still_runs(locked_package):
    """AOTInductor writes torch's cache folder, the virtualenv and the Python installation
    into the generated sources and the compiled library; the shipped package has none."""
    model, key, _, report, run = locked_package
    content = report.path.read_bytes()
    folders = build_folders()
    assert str(Path(torch.__file__).parent) in folders and sys.prefix in folders
    for folder in folders:
        assert folder.encode() not in content, folder
    x = torch.randn(3, 3, 16, 16)
    assert_equivalent(run([x.numpy(), key]), eager(model, x), rtol=1e-4)


def test_build_paths_are_blanked_in_place_and_sources_only_packages_kept(tmp_path):
    """Same-length blanks keep every offset of the compiled library; a package of sources only
    is compiled where it is loaded, from the folders it names."""
    folder = build_folders()[0]
    library = b"\x7fELF" + folder.encode() + b"/x.cpp\x00code"
    source = b"// g++ " + folder.encode() + b"/x.cpp -o x.so\n"
    package = tmp_path / "m.pt2"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("m/data/aotinductor/model/x.so", library)
        archive.writestr("m/data/aotinductor/model/x.cpp", source)
    assert without_build_paths(package) is True
    with zipfile.ZipFile(package) as archive:
        blanked = archive.read("m/data/aotinductor/model/x.so")
        assert folder.encode() not in archive.read("m/data/aotinductor/model/x.cpp")
    assert len(blanked) == len(library) and blanked.endswith(b"/x.cpp\x00code")
    assert without_build_paths(package) is False
    sources_only = tmp_path / "cpp.pt2"
    with zipfile.ZipFile(sources_only, "w") as archive:
        archive.writestr("m/data/aotinductor/model/x.cpp", source)
    before = sources_only.read_bytes()
    assert without_build_paths(sources_only) is False
    assert sources_only.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpp.pt2", "m.pt2"]


@pytest.mark.slow
def test_wrong_expected_output_raises(locked_package):
    model, key, opts, report, _ = locked_package
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(VerificationError, match="differs from the reference"):
        verify_artifact(CPU, report.path, opts, [x.numpy(), key], [eager(model, x)[0] - 1])


@pytest.mark.slow
@pytest.mark.parametrize("change", [-1, 1, None])
def test_wrong_key_length_is_a_clear_error_not_a_crash(locked_package, change):
    _, key, _, _, run = locked_package
    length = 0 if change is None else len(key) + change
    bad = np.resize(key, length).astype(np.float32)
    with pytest.raises(InvalidArgumentError) as info:
        run([np.zeros((2, 3, 16, 16), np.float32), bad])
    assert str(info.value) == (
        f'The AOTInductor model m.pt2 rejected its key "key_vector" (shape ({length},), dtype '
        f"float32): expected shape ({len(key)},), dtype float32. Pass it with the shape and dtype "
        "it was exported with (the key is a float32 vector of fixed length)."
    )


@pytest.mark.slow
def test_wrong_key_dtype_and_input_shape_and_count(locked_package):
    _, key, _, _, run = locked_package
    image = np.zeros((2, 3, 16, 16), np.float32)
    with pytest.raises(InvalidArgumentError, match=r'rejected its key "key_vector" .*dtype'):
        run([image, key.astype(np.float64)])
    with pytest.raises(
        InvalidArgumentError, match=r'rejected its input "image" \(shape \(2, 3, 15'
    ):
        run([np.zeros((2, 3, 15, 16), np.float32), key])
    with pytest.raises(InvalidArgumentError, match=r"takes 2 input\(s\) \(image, key_vector\)"):
        run([image])


@pytest.mark.slow
def test_save_original_without_key(original_package):
    model, opts, report = original_package
    x = torch.randn(4, 8)
    assert verify_artifact(CPU, report.path, opts, [x.numpy()], eager(model, x)) < 1e-5


def test_torch_export_failure_is_an_export_error(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("data-dependent control flow")

    monkeypatch.setattr(torch.export, "export", broken)
    x, key = torch.randn(2, 8), torch.rand(10)
    opts = build_export_options([x], {"input_names": ["x"]})
    with pytest.raises(ExportError) as info:
        CPU.export(Toy(), (x, key), tmp_path / "m.pt2", opts, with_key=True)
    assert str(info.value).startswith(
        "torch.export failed (RuntimeError: data-dependent control flow). Check that the model "
        "runs with input_tensors"
    )


def test_compile_failure_is_an_export_error(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", broken)
    x, key = torch.randn(2, 8), torch.rand(10)
    opts = build_export_options([x], {"input_names": ["x"]})
    with pytest.raises(ExportError, match=r"^AOTInductor compilation failed \(RuntimeError: no C"):
        CPU.export(Toy(), (x, key), tmp_path / "m.pt2", opts, with_key=True)
    assert not (tmp_path / "m.pt2").exists()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_an_os_error_not_a_crash(tmp_path):
    """aoti_compile_and_package writing to a path on a full disk aborted the whole process
    (C++ terminate: the archive writer's destructor threw while its error unwound); the
    protection turns an OSError into an ExportError that says to free space."""
    done = export_onto_full_disk(tmp_path, "INDUCTOR_CPU", "toy.pt2", "toy.pt2", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "OSError ENOSPC"
    assert not (tmp_path / "toy.pt2").is_symlink()  # the link is removed, not /dev/full
    assert Path("/dev/full").exists()


class Wide(nn.Module):
    """4 MiB of weights, most of the package."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1024, 1024)

    def forward(self, x, key):
        return self.lin(x) * key[:4].sum()


@pytest.mark.slow
def test_the_package_is_streamed_to_its_file_not_held_in_memory(tmp_path, monkeypatch):
    """It was packaged into an io.BytesIO, then written: one more copy of the weights at the
    protection's peak (1,201 -> 1,384 MiB for a 192 MiB MLP). What the packaging holds now
    is the one file it copies in at a time (torch reads each whole), not the package too."""
    package_aoti = inductor_package.package_aoti
    peaks: list[int] = []

    def measured(archive, files):
        tracemalloc.start()
        try:
            return package_aoti(archive, files)
        finally:
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()

    monkeypatch.setattr(inductor_package, "package_aoti", measured)
    model, x, key = Wide().eval(), torch.randn(2, 1024), torch.rand(10)
    options = build_export_options([x], {"input_names": ["x"], "output_names": ["y"]})
    report = CPU.export(model, (x, key), tmp_path / "m.pt2", options, with_key=True)
    with zipfile.ZipFile(report.path) as package:
        largest = max(info.file_size for info in package.infolist())
    assert largest > 4 << 20  # the library, weights included
    assert peaks[0] < 1.25 * largest, (peaks, largest)
    inputs = [x.numpy(), key.numpy()]
    assert verify_artifact(CPU, report.path, options, inputs, eager(model, x, key)) < 1e-5


def test_a_package_without_its_weights_is_refused_before_any_work(tmp_path, monkeypatch):
    """torch 2.13 packages no weights with package_constants_in_so=False alone, and loading
    that package killed the protection with a segmentation fault."""
    calls: list[str] = []
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: calls.append("export"))
    x, key = torch.randn(2, 8), torch.rand(10)
    in_so = {"aot_inductor.package_constants_in_so": False}
    opts = build_export_options([x], {"input_names": ["x"]}, inductor_configs=in_so)
    with pytest.raises(InvalidArgumentError, match=r"package_constants_on_disk_format"):
        CPU.export(Toy(), (x, key), tmp_path / "m.pt2", opts, with_key=True)
    assert calls == [] and not (tmp_path / "m.pt2").exists()
    on_disk = {**in_so, "aot_inductor.package_constants_on_disk_format": "binary_blob"}
    opts = build_export_options([x], {"input_names": ["x"]}, inductor_configs=on_disk)
    assert (
        CPU.compile_configs(opts, (x, key), with_key=True)["aot_inductor.package_constants_in_so"]
        is False
    )


@pytest.mark.skipif(cuda_available(), reason="checks the refusal on machines without CUDA")
def test_gpu_variant_requires_cuda(tmp_path):
    x, key = torch.randn(2, 8), torch.rand(10)
    opts = build_export_options([x], {"input_names": ["x"]})
    with pytest.raises(ExportError, match=r"^ExportFormat\.INDUCTOR_GPU requires CUDA"):
        GPU.export(Toy(), (x, key), tmp_path / "m.pt2", opts, with_key=True)
    with pytest.raises(ExportError, match=r"^ExportFormat\.INDUCTOR_GPU requires CUDA"):
        GPU.load(tmp_path / "m.pt2", opts)


@pytest.mark.slow
@pytest.mark.skipif(not cuda_available(), reason="needs CUDA")
def test_gpu_package_runs_and_checks_the_key(tmp_path):
    torch.manual_seed(0)
    model, x, key = Toy().eval(), torch.randn(2, 8), torch.rand(10)
    opts = build_export_options([x], {"input_names": ["x"]}, ({0: Dim("batch")},))
    report = GPU.export(model, (x, key), tmp_path / "m.pt2", opts, with_key=True)
    assert next(model.parameters()).device.type == "cpu"
    x3 = torch.randn(3, 8)
    inputs = [x3.numpy(), key.numpy()]
    assert verify_artifact(GPU, report.path, opts, inputs, eager(model, x3, key), rtol=1e-3) < 1e-3
    with pytest.raises(InvalidArgumentError, match=r'rejected its key "key_vector" \(shape \(7,\)'):
        GPU.load(report.path, opts)([x3.numpy(), key.numpy()[:7]])


def test_cpu_compile_turns_off_layout_optimisation_unless_asked():
    x, key = torch.randn(2, 8), torch.rand(10)
    opts = build_export_options([x], {"input_names": ["x"]}, ({0: Dim("batch")},))
    assert CPU.compile_configs(opts, (x, key), with_key=True)["layout_optimization"] is False
    assert "layout_optimization" not in GPU.compile_configs(opts, (x, key), with_key=True)
    asked = build_export_options(
        [x],
        {"input_names": ["x"]},
        ({0: Dim("batch")},),
        inductor_configs={"layout_optimization": True},
    )
    assert CPU.compile_configs(asked, (x, key), with_key=True)["layout_optimization"] is True


def test_gpu_compile_turns_off_compile_time_autotuning_unless_asked():
    x, key = torch.randn(2, 8), torch.rand(10)
    opts = build_export_options([x], {"input_names": ["x"]}, ({0: Dim("batch")},))
    gpu = GPU.compile_configs(opts, (x, key), with_key=True)
    assert gpu["triton.autotune_at_compile_time"] is False  # random inputs index out of bounds
    assert "skprotect.inputs" in gpu["aot_inductor.metadata"]
    assert "triton.autotune_at_compile_time" not in CPU.compile_configs(opts, (x, key), True)
    asked = build_export_options(
        [x],
        {"input_names": ["x"]},
        ({0: Dim("batch")},),
        inductor_configs={"triton.autotune_at_compile_time": True},
    )
    assert GPU.compile_configs(asked, (x, key), with_key=True)["triton.autotune_at_compile_time"]


def _library_package(path: Path, library: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m/data/aotinductor/model/x.so", library)
    return path


def _library(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        return archive.read("m/data/aotinductor/model/x.so")


def test_build_paths_are_blanked_chunk_by_chunk_even_across_chunks(tmp_path, monkeypatch):
    """Each member was read into memory whole and copied again by the blanking: a library
    holding gigabytes of weights took twice its size in memory. Members now go through in
    chunks, and a path split between two chunks is blanked whole, not from its shorter
    build folder on (the virtualenv inside torch's folder)."""
    import skprotect_pytorch.export.inductor as inductor

    folder = build_folders()[0].encode()
    blank = b"/" + b"_" * (len(folder) - 1)
    noise = np.random.default_rng(0).bytes(8 << 20)
    library = noise[:1000] + folder + noise[1000:] + folder
    package = _library_package(tmp_path / "m.pt2", library)
    monkeypatch.setattr(inductor, "_CHUNK", 1 << 18, raising=False)
    tracemalloc.start()
    try:
        assert without_build_paths(package) is True
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(library) / 2, peak
    assert _library(package) == library.replace(folder, blank)
    small = library[:3000]
    for chunk in (7, 1000 + 5, 1000 + len(folder) // 2):  # the path cut in two
        monkeypatch.setattr(inductor, "_CHUNK", chunk, raising=False)
        package = _library_package(tmp_path / f"m{chunk}.pt2", small)
        assert without_build_paths(package) is True
        assert _library(package) == small.replace(folder, blank), chunk


@pytest.mark.slow
def test_two_exports_of_one_architecture_at_once_keep_their_own_files(tmp_path, monkeypatch):
    """Another export of the same graph with other weights and metadata, run between this
    export's compile and its packaging (as a second process on the machine does): torch built
    both in one folder named after the graph's code, and this package took the other's library
    (its weights) and wrapper metadata."""
    torch.manual_seed(0)
    ours, theirs = Toy().eval(), Toy().eval()
    x, key = torch.randn(2, 8), torch.ones(8)

    def options(who: str):
        configs = {"aot_inductor.metadata": {"who": who}}
        return build_export_options([x], {"input_names": ["x"]}, None, configs)

    package_aoti = inductor_package.package_aoti

    def other_export_first(*args, **kwargs):
        monkeypatch.setattr(inductor_package, "package_aoti", package_aoti)
        CPU.export(theirs, (x, key), tmp_path / "theirs.pt2", options("theirs"), with_key=True)
        return package_aoti(*args, **kwargs)

    monkeypatch.setattr(inductor_package, "package_aoti", other_export_first)
    report = CPU.export(ours, (x, key), tmp_path / "ours.pt2", options("ours"), with_key=True)
    with zipfile.ZipFile(report.path) as package:
        named = [n for n in package.namelist() if n.endswith("metadata.json")]
        assert len(named) == 2
        assert {package.read(n) for n in named} == {package.read(named[0])}
        assert b'"who": "ours"' in package.read(named[0])
    for module, path in ((ours, report.path), (theirs, tmp_path / "theirs.pt2")):
        out = CPU.load(path, options("any"))([x.numpy(), key.numpy()])
        assert_equivalent(out, eager(module, x, key))


@pytest.mark.parametrize("folder", ["", "build"])
def test_an_output_path_of_the_users_is_refused_before_any_work(tmp_path, monkeypatch, folder):
    """torch refused a path only when compiling, saying to "pass in a package path" (which a
    protection does not take), and took "" for the folder it shares between exports."""
    calls: list[str] = []
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: calls.append("export"))
    x, key = torch.randn(2, 8), torch.rand(10)
    configs = {"aot_inductor.output_path": folder}
    opts = build_export_options([x], {"input_names": ["x"]}, inductor_configs=configs)
    with pytest.raises(InvalidArgumentError) as refused:
        CPU.export(Toy(), (x, key), tmp_path / "m.pt2", opts, with_key=True)
    assert str(refused.value) == (
        'inductor_configs sets "aot_inductor.output_path": the protection writes the package '
        "into outputs/<application_name>/ and AOTInductor builds it in a folder of its own, "
        "removed afterwards. Leave it out."
    )
    assert calls == [] and not (tmp_path / "m.pt2").exists()


@pytest.mark.slow
def test_two_threads_exporting_at_once_each_get_their_own_package(tmp_path):
    """torch.export and the AOTInductor compile keep process-wide state: two exports in two
    threads at once failed ("Trying to pop empty mode stack"; with the traces taken one at a
    time, the compile's KeyError: 'custom'). They now take turns."""
    torch.manual_seed(0)
    x, key = torch.randn(2, 8), torch.ones(8)
    modules = {"a": Toy().eval(), "b": Toy().eval()}
    reports, errors = {}, []

    def options(who: str):
        configs = {"aot_inductor.metadata": {"who": who}}
        return build_export_options([x], {"input_names": ["x"]}, None, configs)

    def export(who: str) -> None:
        try:
            path = tmp_path / f"{who}.pt2"
            reports[who] = CPU.export(modules[who], (x, key), path, options(who), with_key=True)
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=export, args=(who,)) for who in modules]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for who, module in modules.items():
        with zipfile.ZipFile(reports[who].path) as package:
            metadata = [package.read(n) for n in package.namelist() if n.endswith("metadata.json")]
        assert [f'"who": "{who}"'.encode() in m for m in metadata] == [True, True], who
        out = CPU.load(reports[who].path, options(who))([x.numpy(), key.numpy()])
        assert_equivalent(out, eager(module, x, key))


@pytest.mark.parametrize(
    "failure",
    [
        # the compiler's output, as torch 2.13 raises it for a full compile cache
        "CppCompileError: C++ compile error\n\nOutput:\n/tmp/cc57xH7N.s: Assembler messages:\n"
        "/tmp/cc57xH7N.s: Fatal error: /cache/w.o: No space left on device\n",
        OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/cache/w.so"),
    ],
    ids=["compiler output", "quota"],
)
def test_a_compile_out_of_disk_space_says_so(tmp_path, monkeypatch, failure):
    """It said "check that a C++ compiler is installed" (a full torch compile cache, measured
    on a 2 MB tmpfs: the assembler could not write the wrapper's object file)."""

    def full(*args, **kwargs):
        if isinstance(failure, OSError):
            raise RuntimeError("C++ compile error") from failure
        raise RuntimeError(failure)

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", full)
    x, key = torch.randn(2, 8), torch.rand(10)
    opts = build_export_options([x], {"input_names": ["x"]})
    with pytest.raises(ExportError) as refused:
        CPU.export(Toy(), (x, key), tmp_path / "m.pt2", opts, with_key=True)
    message = str(refused.value)
    assert message.startswith("AOTInductor compilation ran out of disk space (")
    quoted = (
        f"[Errno {errno.EDQUOT}] {os.strerror(errno.EDQUOT)}: '/cache/w.so'"
        if isinstance(failure, OSError)
        else "/tmp/cc57xH7N.s: Fatal error: /cache/w.o: No space left on device"
    )
    assert f"disk space ({quoted}). It builds in torch's compile cache ({_cache_dir()};" in message
    assert "TORCHINDUCTOR_CACHE_DIR" in message
    assert f"in {tempfile.gettempdir()} ($TMPDIR): free space there" in message
    assert "C++ compiler" not in message
    assert not (tmp_path / "m.pt2").exists()
