"""Failure families of the cluster.

``ClusterError`` is the root; the HTTP edge (``proxy/middleware.py``) maps each family once to a
NodeODM-style ``{"error": "..."}`` reply, the admin fronts map them to ``FAIL``/``INVALID``::

    ClusterError
     +-- InvalidRequest      bad input from a client (HTTP 200, NodeODM style)
     +-- AuthError           missing or wrong token (HTTP 401)
     +-- TaskNotFound        unknown uuid, or a uuid owned by another user
     +-- LimitExceeded       a user or cluster limit refuses the request
     +-- NoNodeAvailable     no online node can take the request
     +-- NodeError           a node misbehaved
     |    +-- NodeUnreachable    connection refused, timeout, DNS
     |    +-- NodeRejected       the node answered with an error
     +-- StoreError          the state store failed
     +-- CloudError          a cloud provider refused or failed
"""

from __future__ import annotations


class ClusterError(Exception):
    """Root of every error the cluster raises on purpose."""

    status = 200

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ClusterError):
    """The client sent something we cannot accept."""


class AuthError(ClusterError):
    """Token missing or wrong. Original: empty 401 body; here a JSON error with 401."""

    status = 401


class TaskNotFound(ClusterError):
    """No route and no task-table entry for this uuid (or it belongs to someone else)."""


class LimitExceeded(ClusterError):
    """A per-user or cluster limit refuses the request."""


class NoNodeAvailable(ClusterError):
    """No online node can take this request."""


class NodeError(ClusterError):
    """A node failed us."""

    def __init__(self, message: str, node: str = "") -> None:
        super().__init__(message)
        self.node = node


class NodeUnreachable(NodeError):
    """Connection refused, timed out or otherwise broken."""


class NodeRejected(NodeError):
    """The node answered, with an error (``{"error": ...}`` or a bad status)."""

    def __init__(self, message: str, node: str = "", no_retry: bool = False) -> None:
        super().__init__(message, node)
        self.no_retry = no_retry


class StoreError(ClusterError):
    """The state store failed."""


class CloudError(ClusterError):
    """A cloud provider's API refused or failed."""


def refused(error: BaseException) -> bool:
    """Whether ``error`` (or what it was raised from) is a refused connection: the node's
    process is gone, as opposed to a node that is slow or frozen."""
    seen: BaseException | None = error
    for _ in range(8):  # a short chain; bounded
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        if isinstance(getattr(seen, "os_error", None), ConnectionRefusedError):
            return True  # aiohttp's ClientConnectorError
        seen = seen.__cause__ or seen.__context__
    return False


class StartupError(ClusterError):
    """A flag or a file makes start-up impossible; the message is one line that names it
    (printed without a traceback, exit status 1)."""
