"""The one error kind the command line shows as a message: a mistake in the user's input.

`UserError` marks an exception whose message alone tells the user what is wrong and what to do
(a config key, a path, the wrong kind of checkpoint). `tgmae.cli.main` prints it as one line,
`tgmae COMMAND: message`, and exits 2; any other exception keeps its traceback (a bug). The
project's input errors (`ConfigError`, `CheckpointError`, `AnnotationError`, ...) derive from it
as well as from the builtin they always were (ValueError, RuntimeError), so callers that catch
those keep working. Set `TGMAE_DEBUG=1` to see the traceback of a user error too.
"""

from __future__ import annotations

import importlib
import re
from typing import Optional


class UserError(Exception):
    """Bad input whose message names the key or path and the way out (CLI: exit 2, no traceback)."""


class SettingsError(ValueError, UserError):
    """A setting passed as an argument (a command's flag, a library function's keyword) is invalid;
    the message names it and the valid values."""


_WORKER = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def worker_user_error(e: BaseException) -> Optional[str]:
    """The message of a UserError raised inside a DataLoader worker, else None.

    torch re-raises a worker's exception in the main process as `type(msg)` (a RuntimeError when
    the type cannot be built from one string) with msg = "Caught T in DataLoader worker process
    N." + the worker's traceback; the traceback's last `module.T: message` holds the original
    message. T must be a UserError subclass (imported from its module to check)."""
    found = _WORKER.match(str(e))
    if found is None:
        return None
    name = found.group(1)
    lines = list(re.finditer(rf"^(?:([\w.]+)\.)?{name}: ", str(e), re.MULTILINE))
    if not lines:
        return None
    last = lines[-1]
    module = last.group(1) or "builtins"
    try:
        kind = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    if not (isinstance(kind, type) and issubclass(kind, (UserError, FileNotFoundError))):
        return None
    return str(e)[last.end():].strip()


__all__ = ["SettingsError", "UserError", "worker_user_error"]
