"""The customer a deployment's configuration is licensed to (platform version 2)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidArgumentError


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
        if isinstance(self.id, bool) or not isinstance(self.id, int) or self.id < 1:
            raise InvalidArgumentError(
                f"Customer id must be a positive integer, but got {self.id!r}."
            )
        if not isinstance(self.name, str):
            raise InvalidArgumentError(
                f"Customer name must be a string, but got {type(self.name).__name__}."
            )

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name}
