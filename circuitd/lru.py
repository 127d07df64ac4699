"""One least-recently-used cache for everything circuitd keeps between jobs or requests: loaded
models and transcoder sets in workers, decompressed graphs and re-pruned views in the API.

Two behaviours differ between those users and are options, not copies of the class:

* ``serial=True`` (workers): values are made under the lock, so two jobs asking for one model
  load it once, and room is made *before* the load, since the new model may need the memory
  of the one it replaces; ``False`` (API): values are made outside the lock, so one slow
  re-prune never blocks other requests (two may race for one key; both make the same value).
* ``on_drop``: called with the values dropped by an eviction (workers return CUDA memory:
  :func:`circuitd.gpu_memory.free_cuda_of`).

Imports no torch (the API uses it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``capacity`` values, the least recently used dropped first; thread-safe.
    ``capacity`` may be a callable, read at every insertion (tests change the settings);
    0 keeps nothing."""

    def __init__(
        self,
        capacity: int | Callable[[], int],
        *,
        serial: bool = False,
        on_drop: Callable[[list[V]], None] | None = None,
    ):
        self._capacity = capacity
        self._serial = serial
        self._on_drop = on_drop
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.RLock()

    @property
    def capacity(self) -> int:
        return max(self._capacity() if callable(self._capacity) else self._capacity, 0)

    def get(self, key: K) -> V | None:
        """The cached value (now the most recent), or None."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            capacity = self.capacity
            if capacity:
                self._items[key] = value
                self._items.move_to_end(key)
            self._evict(capacity)

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        """The cached value, or ``make()``'s, kept (see the module docstring for ``serial``)."""
        if not self._serial:
            hit = self.get(key)
            if hit is None:
                hit = make()
                self.put(key, hit)
            return hit
        with self._lock:
            hit = self.get(key)
            if hit is not None:
                return hit
            self._evict(max(self.capacity - 1, 0))  # room first
            value = make()
            self.put(key, value)
            return value

    def forget(self, drop: Callable[[K], bool]) -> None:
        """Drop every entry whose key ``drop`` selects."""
        with self._lock:
            self._drop([self._items.pop(k) for k in [k for k in self._items if drop(k)]])

    def keys(self) -> list[K]:
        """Keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._evict(0)

    def __len__(self) -> int:
        return len(self._items)

    def _evict(self, keep: int) -> None:
        dropped = []
        while len(self._items) > keep:
            dropped.append(self._items.popitem(last=False)[1])
        self._drop(dropped)

    def _drop(self, values: list[V]) -> None:
        if values and self._on_drop is not None:
            self._on_drop(values)

