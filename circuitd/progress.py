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


class Reports:
    """``report``, ``check_stop`` and ``scaled`` for a context that holds the two callbacks
    (the method contexts are dataclasses with these two fields)."""

    progress: Progress | None
    should_stop: ShouldStop | None

    def report(self, fraction: float, stage: str) -> None:
        if self.progress is not None:
            self.progress(fraction, stage)

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("cancelled")

    def scaled(self, lo: float, hi: float, prefix: str = "") -> Progress | None:
        """Progress of a sub-stage mapped onto ``[lo, hi]`` of this run's."""
        report = self.progress
        if report is None:
            return None
        return lambda f, stage: report(lo + (hi - lo) * f, prefix + stage)
