"""The coordinator's exception tree. Library errors are wrapped at the store boundary."""


class CoordinatorError(Exception):
    """Base of everything the coordinator raises on purpose."""


class StoreError(CoordinatorError):
    """The database failed underneath an operation."""


class NotFound(CoordinatorError):
    """A thread, message, job or worker does not exist (or is not yours)."""


class Forbidden(CoordinatorError):
    """Someone may see this, but not do that to it (only a chat's owner renames it)."""


class Conflict(CoordinatorError):
    """The request is valid but the current state forbids it."""


class Busy(CoordinatorError):
    """The farm cannot take this now; try again later. ``reason`` labels the metric."""

    def __init__(self, message: str, retry_after_s: float, reason: str = "busy") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason


class RateLimited(CoordinatorError):
    """This client has as much running as it may; it can try again shortly."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
