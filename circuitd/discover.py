"""The one entry point: spec in, result out. The CLI and the worker both call it.

It looks the method up in the registry and runs it with the spec's typed parameters; it
knows no method by name.
"""

from __future__ import annotations

from circuitd.methods import METHODS
from circuitd.methods.contract import Result, RunContext
from circuitd.progress import Progress, ShouldStop
from circuitd.spec import JobSpec


def discover(
    spec: JobSpec, progress: Progress | None = None, should_stop: ShouldStop | None = None
) -> Result:
    """Run ``spec``'s method and return its graph (the circuit), full graph and metrics."""
    return METHODS[spec.method].run(RunContext(spec, progress, should_stop), spec.params)
