"""Log a thing once per run, not once per process: a key table shared by DataLoader workers.

Used for "unreadable video replaced" and the count of videos shorter than a clip
(`tgmae.data.dataset`) and MGM's fallback warning
(`tgmae.masking.mgm`): each worker process, and each epoch's new workers, would otherwise log
the same video again.
"""

from __future__ import annotations

import hashlib

import torch

from tgmae.data.shm import share_memory


class SeenVideos:
    """Keys (video ids, paths) seen so far, shared by every process that holds this object: DataLoader workers
    (fork or spawn: the table is a shared-memory tensor, like the dataset's epoch counter) and
    their successors in later epochs. Open addressing over 63-bit hashes of the id; beyond
    `capacity` ids (or 64 probes) it falls back to a per-process set. Two workers meeting a new
    id at the same instant may both see it first (rare; a duplicate log line, nothing else)."""

    def __init__(self, capacity: int = 1 << 14, shared: bool = True):
        """shared: False for a process without DataLoader workers (a plain tensor, no /dev/shm).
        Raises SharedMemoryError (naming /dev/shm) when shared memory cannot hold the table."""
        table = torch.zeros(capacity, dtype=torch.int64)
        self.table = share_memory(table, "the table of videos already logged") if shared else table
        self._local: set[str] = set()

    def share(self) -> None:
        """Move the table (the keys seen so far kept) to shared memory, for DataLoader workers started
        after this call; a no-op when it is there. Raises SharedMemoryError naming /dev/shm."""
        if not self.table.is_shared():
            share_memory(self.table, "the table of videos already logged")

    def first_time(self, video_id: str) -> bool:
        """True the first time `video_id` is seen by any process sharing this object."""
        h = int.from_bytes(hashlib.blake2b(video_id.encode(), digest_size=8).digest(), "little") >> 1
        h = h or 1  # 0 marks an empty slot
        n = self.table.numel()
        for probe in range(min(64, n)):
            i = (h + probe) % n
            v = int(self.table[i])
            if v == h:
                return False
            if v == 0:
                self.table[i] = h
                return True
        if video_id in self._local:
            return False
        self._local.add(video_id)
        return True

    def count(self) -> int:
        """Keys seen so far by every process sharing this object (the shared table's filled slots,
        plus this process's keys beyond `capacity`)."""
        return int((self.table != 0).sum()) + len(self._local)
