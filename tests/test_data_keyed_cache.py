"""tgmae.data.keyed_cache: the bounded LRU both stat-keyed caches of `tgmae.data` keep."""

from __future__ import annotations

from tgmae.data import frame_folder, frame_index
from tgmae.data.keyed_cache import KeyedCache


def test_the_least_recently_used_entry_goes_first():
    cache: KeyedCache[str, int] = KeyedCache(2)
    assert cache.get("a") is None
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a hit makes "a" the most recent: "b" goes when "c" comes
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    cache.put("a", 4)  # replaced, not added twice
    cache.put("d", 5)
    assert (cache.get("a"), cache.get("c"), cache.get("d")) == (4, None, 5)
    cache.pop("a")
    cache.pop("missing")  # no error
    assert cache.get("a") is None and cache.get("d") == 5
    cache.clear()
    assert cache.get("d") is None


def test_the_folder_listings_and_frame_indexes_are_kept_in_it_at_their_sizes():
    """Session 13 diff read: the two caches keyed by a file's or folder's stat each had their own
    dict, lock and LRU move; they share one helper and keep 4096 entries each."""
    assert isinstance(frame_folder._listings, KeyedCache) and frame_folder._listings.size == 4096
    assert isinstance(frame_index._memory, KeyedCache) and frame_index._memory.size == 4096
