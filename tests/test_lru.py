"""The bounded cache that long-lived stages keep their embeddings and judge verdicts in."""

from __future__ import annotations

import pickle
import threading

import pytest

from ctxkit._lru import LRUCache


def test_drops_the_least_recently_used_entry_first() -> None:
    c = LRUCache(2)
    c["a"], c["b"] = 1, 2
    assert c["a"] == 1  # reading "a" makes "b" the oldest
    c["c"] = 3
    assert "b" not in c and c.items() == [("a", 1), ("c", 3)]
    assert c.get("b", "gone") == "gone" and len(c) == 2
    c.maxsize = 1  # shrinking trims at once
    assert list(c) == ["c"]


def test_unbounded_update_and_pickle_round_trip() -> None:
    c = LRUCache(None, {"x": 1})
    c.update([("y", 2), ("z", 3)])
    c.update(LRUCache(5, {"w": 4}))
    assert len(c) == 4 and c.maxsize is None
    back = pickle.loads(pickle.dumps(c))
    assert back.items() == c.items() and back.maxsize is None
    with pytest.raises(ValueError, match="maxsize"):
        LRUCache(0)


def test_concurrent_writers_never_exceed_the_bound() -> None:
    c = LRUCache(50)

    def write(offset: int) -> None:
        for i in range(2000):
            c[(offset, i)] = i
            c.get((offset, i - 1))

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(c) == 50 and len(c.items()) == 50
