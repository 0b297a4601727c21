"""Worker processes end with their parent, even one killed with SIGKILL.

`end_with_parent(parent_pid)`, a pool's `initializer`: on Linux `prctl(PR_SET_PDEATHSIG)`, plus
a daemon thread checking the parent once a second (other systems; the death signal follows the
thread that forked).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def _parent_gone(parent_pid: int) -> bool:
    return os.getppid() != parent_pid


def _watch(parent_pid: int, every_s: float) -> None:
    while not _parent_gone(parent_pid):
        time.sleep(every_s)
    os._exit(1)


def end_with_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """Make this process end when process `parent_pid` (its parent) ends; if it already has,
    end now. `every_s`: the watch thread's period in seconds."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl in this libc: the thread below still watches
            pass
    if _parent_gone(parent_pid):  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid, every_s), name="end-with-parent", daemon=True).start()
