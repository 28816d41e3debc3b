"""The errors of the Engine API client: catch EngineError; EngineUnavailable means "retry later"."""

from __future__ import annotations

from pynet.store.errors import PynetError


class EngineError(PynetError):
    """Docker refused a call (STATUS is its HTTP status) or could not be asked (STATUS 0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class EngineUnavailable(EngineError):
    """dockerd did not answer: its socket is missing or refuses, or the deadline passed."""


class NetworkExists(EngineError):
    """`create_network` of a name dockerd already has (409)."""


class NetworkInUse(EngineError):
    """`delete_network` of a network with endpoints (403, "has active endpoints")."""
