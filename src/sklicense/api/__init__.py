"""The HTTP API: :func:`sklicense.api.main.create_app`."""
