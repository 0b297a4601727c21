"""Reading a user's text file (annotation lists, classes.txt, class descriptions, caption stores,
YAML configs): UTF-8, a leading BOM allowed. A file in another encoding (cp1252 / Latin-1, as old
EPIC-Kitchens or Windows-made lists often are) is refused by `NotUtf8Error` in one line naming
file:line, the byte and its column, instead of a `UnicodeDecodeError` traceback or, worse, its
bytes silently replaced.
"""

from __future__ import annotations

import codecs
import io
from pathlib import Path

from tgmae.errors import UserError


class NotUtf8Error(ValueError, UserError):
    """A user's text file holds bytes that are not UTF-8; the message names file:line, the first
    such byte and its column (1-based, in characters) and the way out (save it as UTF-8)."""


def not_utf8(path: str | Path, data: bytes, at: int, first_line: int = 1) -> NotUtf8Error:
    """The error for the undecodable byte at offset `at` of `data` (bytes of `path` whose first
    line is `first_line`, 1-based): `FILE:LINE: not UTF-8 (byte 0xe9 at column C); save it as UTF-8`."""
    start = data.rfind(b"\n", 0, at) + 1  # the line's first byte
    if start == 0 and data.startswith(codecs.BOM_UTF8):  # a BOM takes no column
        start = len(codecs.BOM_UTF8)
    line = first_line + data.count(b"\n", 0, at)
    column = len(data[start:at].decode("utf-8", errors="replace")) + 1  # valid up to `at`: characters
    return NotUtf8Error(f"{path}:{line}: not UTF-8 (byte 0x{data[at]:02x} at column {column}); save it as UTF-8")


def decode(data: bytes, path: str | Path, first_line: int = 1, bom: bool = True) -> str:
    """`data` (bytes of `path`, or of its lines from `first_line` on) as text; a leading UTF-8 BOM
    is dropped when `bom`. Raises NotUtf8Error at the first byte that is not UTF-8."""
    skip = len(codecs.BOM_UTF8) if bom and data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(path, data, skip + e.start, first_line) from None


def read_text(path: str | Path, bom: bool = True) -> str:
    """The text of the user's file `path` (UTF-8; a BOM dropped when `bom`). Raises NotUtf8Error
    naming file:line for another encoding; OSError (FileNotFoundError, ...) as `open` does."""
    return decode(Path(path).read_bytes(), path, bom=bom)


def open_text(path: str | Path) -> io.StringIO:
    """The user's file `path` as a text stream for `csv` (as `open(path, newline="",
    encoding="utf-8-sig")` gives it: line ends untouched), decoded whole first so that a byte
    that is not UTF-8 is a NotUtf8Error naming its line (see `read_text`)."""
    return io.StringIO(read_text(path), newline="")
