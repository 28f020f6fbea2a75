"""skruntime: run skprotect-protected models (configuration, integrity, keys, session keys).

Importing this package never imports torch: the configuration, key-file and encrypted-key
modules need only numpy and cryptography, so ONNX models run without torch installed.
"""

__all__: list[str] = []
