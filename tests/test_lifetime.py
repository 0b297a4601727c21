"""tgmae.lifetime: a pool's workers end when their parent is killed (kill -9 included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped by init) counts as ended
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_pids_after_parent_kill(initializer: str, initargs: str) -> list[int]:
    """Start a parent with a spawned 2-worker pool, kill -9 it; the workers' pids."""
    code = textwrap.dedent(f"""
        import multiprocessing, os, time
        from concurrent.futures import ProcessPoolExecutor
        {initializer}
        if __name__ == "__main__":
            ctx = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(2, mp_context=ctx, initializer=init, initargs={initargs})
            futures = [pool.submit(time.sleep, 120) for _ in range(2)]
            time.sleep(0.5)
            while len(pool._processes) < 2:
                time.sleep(0.1)
            print(" ".join(str(p) for p in pool._processes), flush=True)
            time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    time.sleep(3)  # the workers have run their initializer (the pool sleeps in them)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    return pids


def _wait_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def test_pool_workers_end_when_the_parent_is_killed():
    pids = worker_pids_after_parent_kill("from tgmae.lifetime import end_with_parent as init", "(os.getpid(),)")
    assert len(pids) == 2
    left = _wait_gone(pids)
    for p in left:  # do not leave them behind if the test fails
        os.kill(p, signal.SIGKILL)
    assert left == []
