"""Errors shared by every layer.

They live at the bottom of the import graph (store/) so that ipam/ and drivers/ can raise
them without knowing plugin/, which turns any `PynetError` into Docker's error reply.
"""


class PynetError(Exception):
    """An error whose message is fit to show a Docker user as it is."""


class InvalidRequest(PynetError):
    """The request or one of its options is malformed; the message names the field and value."""


class NotFound(PynetError):
    """A network, endpoint, pool or address that pynet does not know."""


class Conflict(PynetError):
    """The request clashes with existing state (address taken, overlapping pool, busy parent)."""


class Exhausted(PynetError):
    """No free address or pool is left."""


class StoreUnavailable(PynetError):
    """The store did not answer within its deadline."""


class RevisionCompacted(PynetError):
    """A watch asked for history the store no longer keeps."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(f"revision {requested} was compacted (oldest kept: {compacted})")
        self.requested = requested
        self.compacted = compacted
