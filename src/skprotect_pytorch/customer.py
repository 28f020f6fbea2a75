"""The customer a deployment's configuration is licensed to (platform version 2)."""

from __future__ import annotations

from dataclasses import dataclass

import skruntime.errors as rt_errors
from skruntime.config import CustomerEntry

from .errors import InvalidArgumentError

MAX_CUSTOMER_ID = 2**63 - 1
"""The largest id the licence server stores (a signed 64-bit column)."""


@dataclass(frozen=True)
class Customer:
    """A customer for licensing purposes.

    Args:
        id: customer id on the licence server (a positive integer), default ``1``.
        name: customer name, default ``""``.

    >>> Customer(42, "ACME")
    Customer(id=42, name='ACME')
    """

    id: int = 1
    name: str = ""

    def __post_init__(self) -> None:
        if (
            isinstance(self.id, bool)
            or not isinstance(self.id, int)
            or not 1 <= self.id <= MAX_CUSTOMER_ID
        ):
            raise InvalidArgumentError(
                f"Customer id must be a positive integer of at most {MAX_CUSTOMER_ID} (the "
                f"licence server's largest id), but got {self.id!r}."
            )
        if not isinstance(self.name, str):
            raise InvalidArgumentError(
                f"Customer name must be a string, but got {type(self.name).__name__}."
            )
        try:  # what a configuration file holds, checked here rather than after the export
            CustomerEntry(self.id, self.name)
        except rt_errors.ConfigurationError as err:
            raise InvalidArgumentError(f"Invalid Customer: {err}") from err

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name}
