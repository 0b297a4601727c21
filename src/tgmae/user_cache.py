"""The one folder where tgmae keeps what it measured or decoded on this machine.

`$TGMAE_CACHE_DIR`, else `$XDG_CACHE_HOME/tgmae`, else `~/.cache/tgmae`; `TGMAE_CACHE_DIR=off`
(or 0 / none / empty) writes nothing. `remembered` / `remember`: small values keyed by what they
were computed from (`tgmae.data.fileid.content_key`'s and `tgmae.hub`'s weight digests, by a file's stat).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

CACHE_ENV = "TGMAE_CACHE_DIR"


def cache_root() -> Optional[Path]:
    """The cache folder, or None when `TGMAE_CACHE_DIR` switches the disk cache off."""
    root = os.environ.get(CACHE_ENV)
    if root is not None and root.strip().lower() in ("", "0", "off", "none"):
        return None
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tgmae")
    return Path(root)


def _entry(kind: str, key: list) -> Optional[Path]:
    """The file of `key`'s entry under `kind` (a folder of the cache), None when the cache is off."""
    root = cache_root()
    if root is None:
        return None
    name = hashlib.sha256(json.dumps([kind, *key]).encode()).hexdigest()
    return root / kind / name[:2] / name


def remembered(kind: str, key: list) -> Any:
    """The value `remember` kept for `key` (a JSON-ready list: what the value was computed from,
    e.g. a file's real path and stat) under `kind`, or None (no cache, no entry, a torn or foreign
    entry, or one of another key). One small JSON file per entry, so processes never share one."""
    entry = _entry(kind, key)
    if entry is None:
        return None
    try:
        saved = json.loads(entry.read_text())
        return saved["value"] if saved.get("key") == json.loads(json.dumps(key)) else None
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None


def remember(kind: str, key: list, value: Any) -> None:
    """Keep `value` (JSON-ready) for `key` under `kind` (`remembered` reads it), written atomically;
    an unwritable cache is ignored (it costs a recomputation next time, never the run)."""
    from tgmae.atomic import atomic_write_text

    entry = _entry(kind, key)
    if entry is None:
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(entry, json.dumps({"key": key, "value": value}) + "\n")
    except OSError:
        pass
