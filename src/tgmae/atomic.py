"""Atomic file writes: write a temp file next to the target, then rename it over the target.

Readers see the old file or the new one, never a torn one. Temp names are
`.{name}.{host}-{pid}-{random}.tmp`, so `remove_stale_temps` can remove those of ended writers.
Written files get the mode a plain `open()` would give (`open_mode`). A write refused for want of
room or rights is an `OutputError` naming the file (`write_failure`): one line, exit 2. Writers
that replace only their own files ask `found_output` first whether one holds a user's edit.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import stat
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

from tgmae.errors import UserError

# errno of a write the user's disk or folder refused: full, read-only, not theirs, over quota
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG})
LOW_SPACE = 1 << 20  # bytes free below which a failed write is blamed on a full disk


class OutputError(OSError, UserError):
    """A file could not be written: the disk is full or the folder read-only / not writable."""

    def __str__(self) -> str:
        return str(self.strerror)


def write_failure(e: BaseException, path: Optional[str | os.PathLike] = None) -> Optional[OutputError]:
    """An OutputError naming `path` (else the error's file) when `e` is a write the disk or folder
    refused: an errno of WRITE_ERRNOS (also in a safetensors message, `(os error 30)`), a file
    where a folder must be made, or any error while the disk has under LOW_SPACE free
    (TORCH_LOW_SPACE for torch.save's short write; that write under a file size limit, `ulimit -f`,
    is EFBIG). None otherwise. Call it before removing what
    the failed write left: the free-space check must see the disk as it failed."""
    target = path if path is not None else getattr(e, "filename", None)
    if (blocked := _in_the_way(e, path)) is not None:
        return blocked
    if (no_temp := _no_temp_folder(e)) is not None:
        return no_temp
    code = _errno_of(e)
    if code in WRITE_ERRNOS:
        pass
    elif target is not None and _free_bytes(Path(target)) < (TORCH_LOW_SPACE if _torch_write_error(e) else LOW_SPACE):
        code = errno.ENOSPC
    elif _torch_write_error(e) and _file_size_limited():
        code = errno.EFBIG  # torch names no errno: its short write under `ulimit -f` is a refused write
    else:
        return None
    full = code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    hint = "free some space or write elsewhere" if full else "choose a folder you can write to"
    where = f"{target}: " if target is not None else ""
    return OutputError(code, f"{where}{os.strerror(code).lower()}; {hint}")


# the errno inside another library's error text: Rust's io::Error as safetensors shows it
# ("Read-only file system (os error 30)", or its Debug form "Os { code: 28, kind: StorageFull, ...")
_OS_ERROR_TEXT = re.compile(r"\(os error (\d+)\)|\bOs \{ code: (\d+)")
# torch.save's zip writer (caffe2 inline_container.cc) when a write comes up short: a full disk
# (its end-of-file record failing is the C++ stream's own error: re-trial 29A T1)
_TORCH_WRITE_TEXT = re.compile(r"inline_container\.cc.*(unexpected pos|file write failed)|"
                               r"PytorchStreamWriter failed writing|basic_ios::clear: iostream error", re.S)
TORCH_LOW_SPACE = 16 << 20  # bytes free below which such a torch write failure is blamed on a full disk


def _no_temp_folder(e: BaseException) -> Optional[OutputError]:
    """tempfile's FileNotFoundError when no candidate folder (TMPDIR, /tmp, /var/tmp, /usr/tmp, the
    working folder) takes its test file: a file size limit, a full disk or folders not writable
    (torch asks for one for its caches first; said as "[Errno 2] No usable temporary directory
    found in [...]", folders that exist: re-trial 29A M3). None for any other error."""
    if not (isinstance(e, FileNotFoundError) and "No usable temporary directory found" in str(e)):
        return None
    if _file_size_limited():
        code, why = errno.EFBIG, os.strerror(errno.EFBIG).lower()
    elif _free_bytes(Path(os.environ.get("TMPDIR") or "/tmp")) < LOW_SPACE:
        code, why = errno.ENOSPC, os.strerror(errno.ENOSPC).lower()
    else:
        code, why = errno.EACCES, "not writable"
    tried = str(e.strerror).split(" found in ", 1)[-1]
    return OutputError(code, f"no folder for temporary files could be written ({why}: {tried}); free some "
                             "space, or set TMPDIR to a folder you can write")


def _errno_of(e: BaseException) -> Optional[int]:
    """An OSError's errno, or the OS error code another writer (safetensors) put in its message."""
    if isinstance(e, OSError):
        return e.errno
    m = _OS_ERROR_TEXT.search(str(e))
    return int(m[1] or m[2]) if m else None


def _torch_write_error(e: BaseException) -> bool:
    """Whether `e` is torch.save's RuntimeError for a write that came up short (it names no errno)."""
    return isinstance(e, RuntimeError) and bool(_TORCH_WRITE_TEXT.search(str(e)))


def _file_size_limited() -> bool:
    """Whether this process may write only files up to a size (`ulimit -f`: RLIMIT_FSIZE's soft
    limit is finite), so a short write it cannot name is that limit's EFBIG."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return False
    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    return soft != resource.RLIM_INFINITY


def file_in_the_way(path: str | os.PathLike) -> Optional[Path]:
    """The file (anything but a folder) at `path` or at the nearest of its folders that exists:
    what stops a folder from being made at `path`; None when that is a folder."""
    path = Path(path)
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return None if p.is_dir() else p
    return None


def _in_the_way(e: BaseException, path: Optional[str | os.PathLike]) -> Optional[OutputError]:
    """An OutputError for a folder that could not be made because a file stands where it or one
    of its parents should be (mkdir: EEXIST / ENOTDIR), naming that file; else None."""
    if not (isinstance(e, OSError) and e.errno in (errno.EEXIST, errno.ENOTDIR)):
        return None
    for where in (getattr(e, "filename", None), Path(path).parent if path is not None else None):
        blocker = file_in_the_way(where) if where is not None else None
        if blocker is not None:
            target = Path(path) if path is not None else blocker
            what = f"{blocker}: is a file" if target == blocker else f"{target}: {blocker} is a file"
            return OutputError(errno.ENOTDIR, f"{what}, not a folder; choose another path")
    return None


def _free_bytes(path: Path) -> int:
    """Free bytes on the disk of `path` (its nearest existing folder); a large number when unknown."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                break
    return 1 << 62


log = logging.getLogger("tgmae")

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
_TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


def is_temp(name: str) -> bool:
    """Whether a file or folder name is one of `temp_path`'s (a writer's, live or ended)."""
    return _TEMP.match(name) is not None


def stale_temp(name: str) -> bool:
    """Whether a file or folder name is a temp of an ended writer on this host (`remove_stale_temps`
    removes those; live processes' and other hosts' are not stale)."""
    m = _TEMP.match(name)
    return m is not None and m["host"] == _HOST and _ended(int(m["pid"]))


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temp name next to `path`: `.{name}.{host}-{pid}-{random}.tmp`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _ended(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Remove the temp files and folders directly in `folder` left by ended writers on this host
    (live processes' and other hosts' are kept). Returns the count (0 for a missing folder)."""
    folder = Path(folder)
    removed, nbytes = 0, 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for e in entries:
        if not stale_temp(e.name):
            continue
        try:
            if e.is_dir(follow_symlinks=False):
                nbytes += sum(f.stat().st_size for f in Path(e.path).rglob("*") if f.is_file())
                shutil.rmtree(e.path)
            else:
                nbytes += e.stat().st_size
                os.unlink(e.path)
            removed += 1
        except FileNotFoundError:  # another process cleaned it first
            continue
    if removed:
        log.info("%s: removed %d temp files of ended writers (%.1f MiB)", folder, removed, nbytes / 2**20)
    return removed


_umask_guard = threading.Lock()


def current_umask() -> int:
    """The process umask: read from /proc/self/status where Linux shows it (nothing changes),
    else set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_guard:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def open_mode(written: str | os.PathLike, target: Optional[str | os.PathLike] = None) -> None:
    """Give the files at `written` (a file, or every file in a folder) the mode `open(target, "w")`
    would: an existing `target`'s permission bits, else 0666 minus the umask."""
    written = Path(written)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode) if target is not None and os.path.isfile(target) else None
    except OSError:
        mode = None
    if mode is None:
        mode = 0o666 & ~current_umask()
    files = [written] if not written.is_dir() else [p for p in written.rglob("*") if p.is_file()]
    for f in files:
        try:
            if stat.S_IMODE(f.stat().st_mode) != mode:
                os.chmod(f, mode)
        except OSError:
            pass


@contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False, own_folder: bool = False) -> Iterator[Path]:
    """Yield a temp path for the caller to write; on a clean exit rename it over `path`.

    fsync: flush the temp file to disk before the rename. own_folder: the temp path is `path`'s
    name inside a temp folder, for writers that make temp files of their own (safetensors).
    Creates `path`'s folder. On an exception the temp is removed, and the folders made for it
    (when still empty: a full disk left no new empty `--out` that looks like a started one), and
    the error propagates (an `OutputError` naming `path` for a write the disk or folder refused).
    """
    path = Path(path)
    folder = temp_path(path) if own_folder else None
    tmp = folder / path.name if folder is not None else temp_path(path)
    new = [p for p in reversed(path.parents) if not p.exists()]  # outermost first
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if folder is not None:
            folder.mkdir()
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        open_mode(tmp, path)
        os.replace(tmp, path)
    except Exception as e:
        _discard(tmp)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        remove_empty_folders(new)
        failure = write_failure(e, path)
        if failure is not None:
            raise failure from e
        raise
    finally:
        _discard(tmp)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def check_writable(path: str | os.PathLike, *, keep_new_folders: bool = True) -> None:
    """Fail now, before long work, if `path` could not be written later (writes and removes an
    empty temp beside it). OutputError naming `path`, also for a folder at `path`.
    keep_new_folders False: the folders made for the probe are removed again, so a refusal or
    failure before the real write leaves nothing behind (`atomic_path` makes them when writing)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(errno.EISDIR, f"{path}: is a folder; give a file name")
    tmp = temp_path(path)
    new = [p for p in reversed(path.parents) if not p.exists()]  # outermost first
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(b"")
    except OSError as e:
        raise (write_failure(e, path) or e) from e
    finally:
        _discard(tmp)
        if not keep_new_folders:
            remove_empty_folders(new)


def remove_empty_folders(made: list[Path]) -> None:
    """Remove the folders `made` (outermost first: those a writer created on its way) that are
    still empty, deepest first."""
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:  # another process put a file there meanwhile: keep it
            pass


def _discard(tmp: Path) -> None:
    """Remove a writer's temp file, if still there; a failure to remove it is not the write's."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `atomic_path`)."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


class Found(NamedTuple):
    """What `found_output` found at a path a writer is about to replace."""

    data: Optional[bytes]  # the file's bytes; None when it is missing or cannot be read
    edited: bool  # there and not the writer's: replacing it would lose a user's edit


def found_output(path: str | os.PathLike, ours: Callable[[bytes], bool]) -> Found:
    """Read the file at `path` once and tell whether it holds a user's edit: it is there and
    `ours(its bytes)` is False, or it is there but cannot be read (what it holds is unknown). A
    missing file is no edit. The one check of the writers that never replace an edited list
    (`tgmae synth`'s lists, `tgmae data prepare`'s copied annotations); each raises its own error."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return Found(None, False)
    except OSError:
        return Found(None, True)
    return Found(data, not ours(data))


def create_exclusive_text(path: str | os.PathLike, text: str) -> bool:
    """Write `text` (UTF-8) to `path` whole, and only if no file is there: False, nothing written,
    when one is (also one another process created a moment ago). For the record that decides what
    a shared folder holds (a cache's manifest): of two writers started at once exactly one's
    stands and the other reads it, where check-then-replace would let the second replace the first.
    OutputError naming `path` for a write the disk or folder refused."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(text.encode("utf-8"))
        open_mode(tmp, path)
        os.link(tmp, path)  # the exclusive step: fails when `path` exists
        return True
    except FileExistsError:
        return False
    except OSError as e:
        raise (write_failure(e, path) or e) from e
    finally:
        _discard(tmp)
