"""The one LRU cache: eviction order, serial loads (workers) and drop callbacks."""

from __future__ import annotations

import threading
import time

from circuitd.lru import LRU


def test_serial_cache_loads_once_and_makes_room_before_loading() -> None:
    dropped: list[list[str]] = []
    seen_before_load: list[list[str]] = []
    cache: LRU[str, str] = LRU(lambda: 1, serial=True, on_drop=lambda vs: dropped.append(list(vs)))
    calls = []

    def load(key: str) -> str:
        seen_before_load.append(cache.keys())
        calls.append(key)
        time.sleep(0.05)
        return key.upper()

    threads = [threading.Thread(target=lambda: cache.get_or_make("a", lambda: load("a"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["a"]  # four concurrent asks, one load
    assert cache.get_or_make("b", lambda: load("b")) == "B"
    assert seen_before_load == [[], []]  # "a" was dropped before "b" loaded
    assert dropped == [["A"]] and cache.keys() == ["b"]


def test_capacity_is_read_at_each_insertion_and_zero_keeps_nothing() -> None:
    size = {"n": 2}
    cache: LRU[str, int] = LRU(lambda: size["n"], serial=True)
    assert cache.get_or_make("a", lambda: 1) == 1 and cache.get_or_make("b", lambda: 2) == 2
    assert cache.get("a") == 1  # a is now the most recent
    size["n"] = 0
    assert cache.get_or_make("c", lambda: 3) == 3
    assert cache.keys() == [] and len(cache) == 0


def test_forget_and_clear_report_what_they_drop() -> None:
    dropped: list[int] = []
    cache: LRU[str, int] = LRU(3, on_drop=dropped.extend)
    for i, k in enumerate("abc"):
        cache.put(k, i)
    cache.forget(lambda k: k == "b")
    assert dropped == [1] and cache.keys() == ["a", "c"]
    cache.clear()
    assert dropped == [1, 0, 2] and len(cache) == 0
