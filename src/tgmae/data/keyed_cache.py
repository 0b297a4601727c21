"""A bounded, thread-safe least-recently-used map: the memory of the caches keyed by a file's or a
folder's stat (`frame_index`'s indexes by file identity, `frame_folder`'s listings by folder
state). A key that holds the stat is never stale, so the only policy left is the bound."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Hashable, Optional, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class KeyedCache(Generic[K, V]):
    """At most `size` entries; a `get` hit or a `put` makes an entry the most recent, and a `put`
    past `size` drops the least recent. One lock guards every call (captioning reads videos from a
    thread pool); the values are computed outside it, by the caller."""

    def __init__(self, size: int):
        self.size = size
        self._entries: "OrderedDict[K, V]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> Optional[V]:
        """The value kept under `key`, None when there is none."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
            return hit

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        """Drop `key`'s entry, if any."""
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
