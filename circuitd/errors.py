"""Errors a user can act on: each carries one readable line naming what was wrong."""


class CircuitdError(Exception):
    """Base class: the CLI prints the message as one line and exits non-zero."""


class ModelError(CircuitdError):
    """A model id that is unknown, unreachable or malformed."""


class TaskError(CircuitdError):
    """A task that cannot be built or does not fit the model; the message names the field."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when it has none), at most
    ``limit`` characters: what a one-line error quotes from a library's long traceback text."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]
