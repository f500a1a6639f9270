"""A bounded, thread-safe least-recently-used mapping for the caches of long-lived stages.

A stage kept alive by a service sees new texts with every request; an unbounded dict of their
embeddings or judge verdicts grows until the process runs out of memory. :class:`LRUCache` keeps
the ``maxsize`` most recently used entries (``None``: unbounded, for batch jobs that want them all).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any

__all__ = ["LRUCache"]


class LRUCache:
    """Mapping of at most ``maxsize`` entries; reading or writing an entry makes it the newest.

    Args:
        maxsize: Entries kept (the least recently used are dropped first); ``None``: no limit.
        items: Initial entries (a mapping or ``(key, value)`` pairs).
    """

    def __init__(self, maxsize: int | None = 10_000, items: Mapping[Hashable, Any] | Iterable[tuple[Hashable, Any]] = ()) -> None:
        if maxsize is not None and maxsize < 1:
            raise ValueError(f"LRUCache: maxsize must be >= 1 or None, got {maxsize}")
        self._maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.update(items)

    @property
    def maxsize(self) -> int | None:
        """The most entries kept (``None``: unbounded)."""
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"LRUCache: maxsize must be >= 1 or None, got {value}")
        with self._lock:
            self._maxsize = value
            self._trim()

    def _trim(self) -> None:
        while self._maxsize is not None and len(self._data) > self._maxsize:
            self._data.popitem(last=False)

    def __getitem__(self, key: Hashable) -> Any:
        with self._lock:
            value = self._data[key]
            self._data.move_to_end(key)
            return value

    def __setitem__(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            self._trim()

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value of ``key`` (made the newest), or ``default``."""
        try:
            return self[key]
        except KeyError:
            return default

    def update(self, items: Mapping[Hashable, Any] | Iterable[tuple[Hashable, Any]] = ()) -> None:
        """Add or refresh entries, in order (the last ones end up newest)."""
        pairs = items.items() if isinstance(items, Mapping | LRUCache) else items
        for k, v in pairs:
            self[k] = v

    def items(self) -> list[tuple[Hashable, Any]]:
        """A snapshot of the entries, oldest first."""
        with self._lock:
            return list(self._data.items())

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[Hashable]:
        return iter([k for k, _ in self.items()])

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._data.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {"maxsize": self._maxsize, "items": self.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["maxsize"], state["items"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"LRUCache({len(self)} of {self._maxsize if self._maxsize is not None else 'unbounded'})"
