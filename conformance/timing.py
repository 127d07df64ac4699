"""How both sides time a method, so their figures compare: the same thread count, one
warm-up run, then the median of ``repeats`` runs. Pure Python (both venvs import it)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def timed(fn: Callable[[], T], repeats: int) -> tuple[T, float]:
    """``fn``'s last result and the median seconds of ``repeats`` runs after one warm-up."""
    result = fn()
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)
