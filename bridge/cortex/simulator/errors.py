"""What the simulated Cortex refuses, and how it says so (``ErrorResponse``)."""

from __future__ import annotations

# ErrorResponse.type by status; the enum has nothing closer than BAD_REQUEST for 405 and 413.
_ERROR_TYPES = {
    400: "BAD_REQUEST",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "BAD_REQUEST",
    409: "CONFLICT",
    413: "BAD_REQUEST",
}


class SimError(Exception):
    """A request Cortex refuses; the HTTP layer answers ``status`` with an ``ErrorResponse`` body."""

    def __init__(self, status: int, message: str, details: str | None = None, type_: str | None = None):
        super().__init__(f"{status} {message}" + (f": {details}" if details else ""))
        self.status = status
        self.message = message
        self.details = details
        self.type = type_ or _ERROR_TYPES.get(status, "UNCATEGORIZED")


def bad_request(details: str) -> SimError:
    """A 400 whose details name the offending field."""
    return SimError(400, "Bad Request", details)
