"""`UserError`: a mistake in the user's input, which `tgmae.cli` prints as one line (exit 2)
instead of a traceback (`TGMAE_DEBUG=1` shows it). Input errors (`ConfigError`, ...) derive from
it and from their builtin (ValueError, RuntimeError).
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Optional


def count(n: int, one: str, many: str = "") -> str:
    """`n` with its noun in the number it takes, for messages: 1 step, 2 steps, 1 process."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


class UserError(Exception):
    """Bad input whose message names the key or path and the way out (CLI: exit 2, no traceback)."""


class SettingsError(ValueError, UserError):
    """A setting passed as an argument (a command's flag, a library function's keyword) or in the
    environment (`env_switch`) is invalid; the message names it and the valid values."""


# tgmae's on/off environment variables -> their value when unset or empty (README: Configuration,
# Troubleshooting); `tgmae.cli` checks each before a command runs
SWITCHES = {"TGMAE_AUTOTUNE": True, "TGMAE_DEBUG": False}
_SWITCH_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def env_switch(name: str) -> bool:
    """Environment variable `name` (a key of `SWITCHES`) as on/off: 1/true/yes/on or 0/false/no/off,
    any case (unset or empty: its default). SettingsError naming it, its value and these words
    otherwise: a misspelt switch must not act as its default, unseen."""
    raw = os.environ.get(name, "")
    word = raw.strip().lower()
    if not word:
        return SWITCHES[name]
    if word not in _SWITCH_WORDS:
        raise SettingsError(f"{name}={raw!r}: expected on or off (1/0, true/false, yes/no)")
    return _SWITCH_WORDS[word]


_WORKER = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def worker_user_error(e: BaseException) -> Optional[str]:
    """The message of a UserError raised inside a DataLoader worker, else None: torch re-raises it
    with msg "Caught T in DataLoader worker process N." + the traceback, whose last
    `module.T: message` line holds it."""
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


class NothingDoneError(RuntimeError, UserError):
    """A per-video tool (`data prepare`, `caption --model`, `masks`) failed on every video it was
    given: nothing came out, so the run must not look like a success (CLI: exit 2). The message
    names how many failed and where their list is. A partial failure is only warned about."""


def nothing_done(failed: int, where: str) -> NothingDoneError:
    """The one line of a `NothingDoneError`: `all N videos failed ...; their reasons: where`. No
    tool name: `tgmae.cli.main` puts `tgmae COMMAND:` before every user error's line."""
    return NothingDoneError(f"all {failed} video(s) failed, nothing was made; their reasons: {where}")
