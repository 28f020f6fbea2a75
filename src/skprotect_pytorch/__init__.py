"""skprotect_pytorch: lock trained PyTorch models with a key, export them, and license them."""

from .customer import Customer
from .errors import SkProtectError
from .formats import ExportFormat, ExportPlatform

__all__ = ["Customer", "ExportFormat", "ExportPlatform", "SkProtectError"]
__version__ = "0.3.0"
