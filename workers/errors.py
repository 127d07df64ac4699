"""What a failed job tells its owner: a stable code, and one line that shows no server detail.

A job's error goes to whoever submitted it over the API, so it must not reveal the server's
files or code. An unexpected exception becomes ``internal error (logged with job <id>)``
(its traceback is in the worker's log under that id); in the messages a user can act on,
absolute paths shrink to their file name, except under the model roots the operator opened
to users (``CIRCUITD_MODEL_ROOTS``): those paths are the user's own to name.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath

from pydantic import ValidationError

from circuitd.access import model_roots
from circuitd.errors import CircuitdError, ModelError, TaskError
from circuitd.spec import spec_error_line
from circuitd.store import ErrorCode

# An absolute POSIX path: a slash not inside a word, a URL ("https://h/p") or a relative path ("org/name").
_PATH = re.compile(r"(?<![\w.~/-])/(?!/)[^\s'\"`,;:()\[\]{}<>|]+")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA OOM, a failed CPU allocation, or Python's MemoryError."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def scrub_paths(message: str) -> str:
    """``message`` with every absolute path outside the model roots cut to its last part."""
    roots = [PurePosixPath(r) for r in model_roots()]

    def short(m: re.Match[str]) -> str:
        path = m.group(0)
        tail = path[len(path.rstrip(".")):]  # a sentence's full stop is not part of the path
        path = path[: len(path) - len(tail)]
        norm = PurePosixPath(os.path.normpath(path))
        if any(norm.is_relative_to(root) for root in roots):
            return path + tail
        return (norm.name or "/") + tail

    return _PATH.sub(short, message)


def job_error(exc: BaseException, job_id: str, device: str) -> tuple[ErrorCode, str]:
    """The code and the owner's one-line message for an exception that ended a job."""
    if isinstance(exc, ValidationError):
        return ErrorCode.invalid_spec, scrub_paths(spec_error_line(exc))
    if is_out_of_memory(exc):
        return ErrorCode.out_of_memory, f"out of memory on {device}: {scrub_paths(one_line(exc))[:500]}"
    # TranscoderError by name: its module imports torch
    if isinstance(exc, ModelError) or type(exc).__name__ == "TranscoderError":
        return ErrorCode.model, scrub_paths(one_line(exc))
    if isinstance(exc, TaskError):
        return ErrorCode.task, scrub_paths(one_line(exc))
    if isinstance(exc, CircuitdError | ValueError):  # errors a user can act on, as the CLI treats them
        return ErrorCode.invalid_spec, scrub_paths(one_line(exc))[:2000]
    return ErrorCode.internal, f"internal error (logged with job {job_id})"
