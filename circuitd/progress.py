"""How a long run talks to its caller: it reports ``(fraction, stage)`` and asks whether to stop.

The CLI passes a progress bar, the worker a writer to the job store and a check of the job's
cancel flag and time limit; every method and the evaluator take the same two callbacks.
"""

from __future__ import annotations

from collections.abc import Callable

from circuitd.errors import CircuitdError

Progress = Callable[[float, str], None]
ShouldStop = Callable[[], bool]


class Cancelled(CircuitdError):
    """The run was asked to stop."""
