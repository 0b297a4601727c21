"""Shared memory for DataLoader workers: a failed allocation is one line naming /dev/shm."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tgmae.data.shm import SharedMemoryError, share_memory


def test_shared_memory_is_shared():
    import torch

    t = share_memory(torch.zeros(4, dtype=torch.int64), "a table")
    assert t.is_shared() and t.tolist() == [0, 0, 0, 0]


@pytest.mark.skipif(sys.platform != "linux", reason="/dev/shm and RLIMIT_FSIZE are Linux's")
def test_a_failed_allocation_names_dev_shm_and_leaves_no_files(tmp_path):
    """Issue 28 (re-trial 9): under `ulimit -f 100` (as a full /dev/shm) torch's "unable to resize
    file </torch_...>: File too large" was a traceback, and left a 0-byte /dev/shm/torch_<pid>_*
    file per try. Now a SharedMemoryError (a user error) names /dev/shm and the ways out, and the
    files torch made for this process are removed."""
    code = textwrap.dedent("""
        import os, resource, glob
        import torch
        from tgmae.data.shm import SharedMemoryError, share_memory
        resource.setrlimit(resource.RLIMIT_FSIZE, (100 * 1024, resource.RLIM_INFINITY))
        try:
            share_memory(torch.zeros(1 << 16, dtype=torch.int64), "the logged-videos table")
        except SharedMemoryError as e:
            print("ERR", e)
        print("LEFT", len(glob.glob(f"/dev/shm/torch_{os.getpid()}_*")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    err = next(line for line in out.splitlines() if line.startswith("ERR"))
    assert "/dev/shm" in err and "the logged-videos table" in err and "data.num_workers=0" in err
    assert "LEFT 0" in out
