"""The one folder where tgmae keeps what it measured or decoded on this machine.

`$TGMAE_CACHE_DIR`, else `$XDG_CACHE_HOME/tgmae`, else `~/.cache/tgmae`; `TGMAE_CACHE_DIR=off`
(or 0 / none / empty) writes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

CACHE_ENV = "TGMAE_CACHE_DIR"


def cache_root() -> Optional[Path]:
    """The cache folder, or None when `TGMAE_CACHE_DIR` switches the disk cache off."""
    root = os.environ.get(CACHE_ENV)
    if root is not None and root.strip().lower() in ("", "0", "off", "none"):
        return None
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tgmae")
    return Path(root)
