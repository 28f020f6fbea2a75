"""Export a (locked) model to each format: one module per format family behind one interface.

>>> options = build_export_options([x], {"input_names": ["x"], "output_names": ["y"]}, None, None)
>>> exporter = get_exporter(ExportFormat.ONNX)
>>> report = exporter.export(keyed, (x, key), Path("m.onnx"), options, with_key=True)
>>> verify_artifact(exporter, report.path, options, [x.numpy(), key.numpy()], expected)
"""

from . import inductor, onnx, torchscript  # noqa: F401  (registers the exporters)
from .base import (
    Exporter,
    ExportReport,
    cuda_available,
    get_exporter,
    register_exporter,
    registered_formats,
    verify_artifact,
)
from .options import DEFAULT_ONNX_PARAMS, ExportOptions, build_export_options

__all__ = [
    "DEFAULT_ONNX_PARAMS",
    "ExportOptions",
    "ExportReport",
    "Exporter",
    "build_export_options",
    "cuda_available",
    "get_exporter",
    "register_exporter",
    "registered_formats",
    "verify_artifact",
]
