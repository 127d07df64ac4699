"""Returning GPU memory when a cached model or transcoder set is dropped."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

V = TypeVar("V")


def free_cuda_of(device_of: Callable[[V], str]) -> Callable[[list[V]], None]:
    """An ``on_drop`` that returns CUDA memory when a dropped value lived on a GPU."""

    def drop(values: list[V]) -> None:
        if any(device_of(v).startswith("cuda") for v in values):
            import gc

            import torch

            values.clear()
            gc.collect()  # a dropped model's tensors may sit in reference cycles
            torch.cuda.empty_cache()

    return drop
