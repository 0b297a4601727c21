"""The one error kind the command line shows as a message: a mistake in the user's input.

`UserError` marks an exception whose message alone tells the user what is wrong and what to do
(a config key, a path, the wrong kind of checkpoint). `tgmae.cli.main` prints it as one line,
`tgmae COMMAND: message`, and exits 2; any other exception keeps its traceback (a bug). The
project's input errors (`ConfigError`, `CheckpointError`, `AnnotationError`, ...) derive from it
as well as from the builtin they always were (ValueError, RuntimeError), so callers that catch
those keep working. Set `TGMAE_DEBUG=1` to see the traceback of a user error too.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input whose message names the key or path and the way out (CLI: exit 2, no traceback)."""


class SettingsError(ValueError, UserError):
    """A setting passed as an argument (a command's flag, a library function's keyword) is invalid;
    the message names it and the valid values."""


__all__ = ["SettingsError", "UserError"]
