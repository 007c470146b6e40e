"""Domain errors: what went wrong, in terms a caller can act on. No gRPC here.

Domain modules (the store, the backends, the batcher, validation) raise these. The transport
layer maps each class to a status code in one table (``STATUS_CODES`` in
services/common/status.py) and answers with it.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error a caller can act on (its class decides the status code at the edge)."""

    #: For an error relayed from another service: that service's status code (retries and
    #: degradation decide on it); None for an error raised here. Set by the gateway's clients.
    downstream_code: Any = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """A request field is wrong; ``field`` names it (empty when the whole request is)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}" if field else description)
        self.field = field
        self.description = description


class NotFound(ServiceError):
    pass


class AlreadyExists(ServiceError):
    pass


class FailedPrecondition(ServiceError):
    pass


class ResourceExhausted(ServiceError):
    """Shed or over a quota; ``retry_after_s`` (when known) is when a retry may succeed, sent to
    the caller as a ``google.rpc.RetryInfo`` detail."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unauthenticated(ServiceError):
    """No credential, or one that names no configured caller."""


class PermissionDenied(ServiceError):
    """A known caller asked for something its scopes or collections do not cover."""


class Unavailable(ServiceError):
    pass


class DeadlineExceeded(ServiceError):
    pass


class MalformedRequest(ServiceError):
    """The request's bytes do not parse as the method's message."""


class EngineError(ServiceError):
    """A storage engine call failed on a collection. What it means for the caller (disk full,
    a damaged or locked shard, a shard being swapped...) is read from the engine's own error at
    the edge: services/common/status.py, ``ENGINE_ERRORS``, one row per condition."""

    def __init__(self, cause: BaseException, collection: str, path: Any, *, opening: bool = False,
                 engine: str = "Qdrant Edge") -> None:
        self.cause = cause
        self.collection = collection
        self.path = str(path)
        self.opening = opening  # the shard was being opened (nothing was changed)
        self.engine = engine
        doing = "open the shard of" if opening else "serve"
        super().__init__(f"{engine} could not {doing} collection {collection!r} at {self.path}: {cause}")
