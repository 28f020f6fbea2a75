"""Licensing: the wire protocol shared with the sklicense server, and the runtime's client."""
