"""A loaded-object cache for workers: models and transcoder sets kept between jobs, at most a
setting's number of them, the least recently used dropped first (and its GPU memory returned).
Imports no torch unless something on a GPU is dropped."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """``get(key, load)``: the cached value, or ``load()``'s, kept. ``capacity`` is read on every
    load (tests change the settings); 0 keeps nothing. Loads are serialised: two jobs asking for
    one model load it once. ``device_of`` names a value's device, so that dropping a CUDA value
    empties the CUDA cache."""

    def __init__(self, capacity: Callable[[], int], device_of: Callable[[V], str]):
        self._capacity = capacity
        self._device_of = device_of
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, load: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            capacity = max(self._capacity(), 0)
            self._evict(max(capacity - 1, 0))  # room first: the new value may need the memory
            value = load()
            if capacity:
                self._items[key] = value
            return value

    def keys(self) -> list[K]:
        """Keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._evict(0)

    def _evict(self, keep: int) -> None:
        devices = set()
        while len(self._items) > keep:
            _, value = self._items.popitem(last=False)
            devices.add(self._device_of(value))
            del value
        if any(d.startswith("cuda") for d in devices):
            import gc

            import torch

            gc.collect()  # a dropped model's tensors may sit in reference cycles
            torch.cuda.empty_cache()
