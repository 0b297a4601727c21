"""One writer per run folder and per store: an exclusive lock file beside the target.

`hold(target, what)` refuses a second writer in one line naming the holder (pid, host, command,
start). The lock is `flock` on `<parent>/.<name>.lock` holding the holder's JSON; the kernel
releases it when its process ends (kill -9 included), so a dead holder's file is taken over.
Locks are re-entrant within a process and removed on release; the lock of a target that is gone
(a merged caption part) is removed once no process holds it (`drop_lock`). A forked child (a
DataLoader worker) closes its copies at the fork, so it never keeps a killed parent's lock; a lock
still held under the record of an ended process (its orphans) is waited for up to ORPHAN_WAIT_S,
then refused saying so.

A run folder (or one of its step checkpoints) is recognised by its files (`holds_run`); writers
that are not the run refuse an output that is one or lies inside one (`refuse_inside_run`); those
whose results belong beside a run refuse only its checkpoints (`refuse_in_checkpoints`), and every
writer outside the training loop refuses a run stopped before its first checkpoint, which only its
own rerun continues (`refuse_stopped_run`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

from tgmae.atomic import file_in_the_way
from tgmae.errors import UserError

log = logging.getLogger("tgmae")


class LockError(RuntimeError, UserError):
    """The target's lock cannot be taken: another live process holds it (the message names that
    process and the lock file), or the folder cannot hold the lock file."""


class RunFolderError(FileExistsError, UserError):
    """A writer's output is a run folder (or step checkpoint) or lies inside one, whose files are
    the run's (`refuse_inside_run`)."""


LATEST = "latest"  # a run's checkpoints/latest: the name of its newest step folder (`weights.files`)
# files a tgmae run folder or one of its step checkpoints holds (pretrain / finetune / probe)
RUN_MARKERS = ("checkpoints", "config.yaml", "metrics.jsonl", "classifier.safetensors", "probe_results.json",
               "state.pt")


def holds_run(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a run folder (its config.yaml beside the run's checkpoints, metrics or
    results; or a `checkpoints/latest`) or a run's step checkpoint (model.safetensors + state.pt)."""
    folder = Path(folder)
    if (folder / "checkpoints" / LATEST).is_file():
        return True
    if (folder / "state.pt").is_file() and (folder / "model.safetensors").is_file():
        return True
    return (folder / "config.yaml").is_file() and any(
        (folder / m).exists() for m in ("checkpoints", "metrics.jsonl", "model.safetensors", "classifier.safetensors",
                                        "probe_results.json"))


def run_around(path: str | os.PathLike) -> Optional[Path]:
    """The run folder or step checkpoint (`holds_run`) that `path` is or lies inside (resolved:
    symlinks and `..` followed), else None."""
    p = Path(path).resolve()
    return next((a for a in (p, *p.parents) if holds_run(a)), None)


def refuse_inside_run(path: str | os.PathLike, what: str) -> None:
    """RunFolderError naming `path` and the run when it is a run folder or step checkpoint or lies
    inside one: a writer other than the run itself would replace or mix with the run's files."""
    run = run_around(path)
    if run is not None:
        where = "is the run" if run == Path(path).resolve() else f"inside the run {run}"
        raise RunFolderError(f"{path} ({what}): {where}, whose files it would replace or mix with; "
                             f"give {what} a path outside any run")


# files a finished or running run leaves that a fresh run in its folder would replace (`run_files`)
NO_CHECKPOINT_YET = ".no_checkpoint_yet"  # a run folder's marker: its run (the training loop's) has no checkpoint yet
RUN_RESULTS = ("model.safetensors", "classifier.safetensors", "probe_results.json", "finetune_results.json")


def run_files(folder: str | os.PathLike) -> list[str]:
    """What of a run `folder` holds that a fresh run there would replace or mix with, as named in a
    refusal: its weights and results (`RUN_RESULTS`), a metrics.jsonl with records, the step folders
    under checkpoints/ (counted) and, beside any of these, config.yaml. Empty for a folder without
    them: a run stopped before its first logged step (config.yaml, an empty metrics.jsonl) holds
    nothing of worth."""
    folder = Path(folder)
    held = [n for n in RUN_RESULTS if (folder / n).is_file()]
    metrics = folder / "metrics.jsonl"
    try:
        if metrics.is_file() and metrics.read_text(errors="replace").strip():
            held.append("metrics.jsonl")
    except OSError:
        held.append("metrics.jsonl")
    ckpts = folder / "checkpoints"
    steps = [p for p in ckpts.glob("step_*") if p.is_dir()] if ckpts.is_dir() else []
    if steps:
        held.append(f"{len(steps)} step folder{'s' if len(steps) > 1 else ''} in checkpoints/")
    if held and (folder / "config.yaml").is_file():
        held.insert(0, "config.yaml")
    return held


def refuse_holding_run(folder: str | os.PathLike, what: str, why: str) -> None:
    """RunFolderError in one line naming `folder` (chosen by the setting `what`) and what of a run it
    holds (`run_files`), when it holds one: `why` says why the writer would not continue it, the
    ways out are another folder or deleting this one."""
    held = run_files(folder)
    if held:
        raise RunFolderError(f"{folder} ({what}): holds a run ({', '.join(held)}) that {why}; a new run there "
                             f"would replace it. Give {what} another folder, or delete {folder} to start afresh")


def stopped_run_files(folder: str | os.PathLike) -> list[str]:
    """What a training-loop run stopped before its first checkpoint holds in `folder` (`run_files`),
    else []: metrics.jsonl records without a step folder, beside the run's `NO_CHECKPOINT_YET`
    marker (or, in a folder written before runs wrote it, beside nothing but its config.yaml). The
    checks of the writers outside the loop see a run by its checkpoints or results, which such a
    run has none of (re-trial 32A S4)."""
    held = run_files(folder)
    if "metrics.jsonl" not in held or any(h.endswith("in checkpoints/") for h in held):
        return []
    if (Path(folder) / NO_CHECKPOINT_YET).is_file() or set(held) <= {"config.yaml", "metrics.jsonl"}:
        return held
    return []


def refuse_stopped_run(folder: str | os.PathLike, what: str, writer: str) -> None:
    """`refuse_holding_run`'s RunFolderError when `folder` holds a run stopped before its first
    checkpoint (`stopped_run_files`): `writer`, a command outside the training loop (a k-NN or
    L-BFGS probe, evaluate, retrieve), would put its results beside that run's metrics and marker,
    and the run's rerun, which starts it afresh there, beside them (re-trial 32A S4)."""
    if stopped_run_files(folder):
        refuse_holding_run(folder, what, f"stopped before its first checkpoint ({NO_CHECKPOINT_YET}): only a rerun "
                                         f"of its own command continues it, not {writer}")


def holds_extraction(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a `tgmae extract` output: its shards (`shard-SSSSS-of-TTTTT.safetensors`)
    or the manifest.json that lists an extraction's settings and videos (`tgmae.evaluate.feature_shards`)."""
    folder = Path(folder)
    if any(folder.glob("shard-[0-9]*-of-[0-9]*.safetensors")):
        return True
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"spec", "video_ids", "num_shards"} <= set(manifest)


def refuse_extraction(path: str | os.PathLike, what: str) -> None:
    """RunFolderError naming `path` when it holds an extraction (`holds_extraction`): a run's
    config.yaml, metrics and checkpoints would mix with its shards and index."""
    if holds_extraction(path):
        raise RunFolderError(f"{path} ({what}): holds a `tgmae extract` output (manifest.json, shards), "
                             f"another kind of folder, whose files the run would mix with; give {what} another path")


def refuse_in_checkpoints(path: str | os.PathLike, what: str) -> None:
    """RunFolderError naming `path` when it is or lies inside a run's checkpoints/ folder or one of
    its step checkpoints: the run's resume and `checkpoints/latest` read those folders, so nothing
    else is written there. (Writers whose results belong beside a run, such as evaluate's
    test_results.json in its run folder, may write into the run folder itself.)"""
    p = Path(path).resolve()
    run = run_around(p)
    if run is None:
        return
    step = (run / "state.pt").is_file() and (run / "model.safetensors").is_file()
    if step or p == run / "checkpoints" or run / "checkpoints" in p.parents:
        where = "is" if p in (run, run / "checkpoints") else "lies inside"
        folder = run if step else run / "checkpoints"
        raise RunFolderError(f"{path} ({what}): {where} {folder}, a run's checkpoints, which its resume reads; "
                             f"give {what} a path outside checkpoints/ (the run folder itself is fine)")


_held: dict[str, tuple[int, int]] = {}  # lock file -> (fd, hold count), this process
_made: dict[str, list[Path]] = {}  # lock file -> the folders made to hold it (outermost first)
_guard = threading.Lock()
ORPHAN_WAIT_S = 15.0  # how long to wait for the orphaned children of an ended holder to let go


def _forget_in_child() -> None:
    """After a fork, the child (a DataLoader worker) closes its copies of the held lock fds: a flock
    belongs to the open file, which a forked child shares, so a worker orphaned by a kill -9 of its
    parent would go on holding the run's lock. Closing (never LOCK_UN) leaves the parent's lock held."""
    global _guard
    _guard = threading.Lock()  # another thread may have held it at the fork
    for fd, _ in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()
    _made.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class _Busy(Exception):
    """Another process holds the lock; `holder` is what its file says (pid, host, command, start)."""

    def __init__(self, holder: dict):
        super().__init__(_describe(holder))
        self.holder = holder


def _ended(holder: dict) -> bool:
    """Whether the holder recorded in a lock file is a process of this host that no longer runs
    (the lock is then held by its forked children: a holder on another host is never judged)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0 or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it runs, as another user
        return False
    return False


def lock_file(target: str | os.PathLike) -> Path:
    """`<parent>/.<name>.lock` of a file or folder (its real path, so two spellings share one)."""
    p = Path(target).resolve()
    return p.parent / f".{p.name}.lock"


SECRET_OPTION = re.compile(r"--[\w-]*(key|token|secret|password)", re.IGNORECASE)  # e.g. describe-classes --api-key


def masked_command(argv: Sequence[str]) -> str:
    """`argv` as one line for a lock's holder record, which others read (the file, refusals):
    the program's name only, and the values of secret options (`SECRET_OPTION`: `--api-key X`,
    `--api-key=X`) as ***."""
    words = [Path(argv[0]).name] if argv else []
    for i, a in enumerate(argv[1:], 1):
        option, eq, _ = a.partition("=")
        if eq and SECRET_OPTION.fullmatch(option):
            a = f"{option}=***"
        elif SECRET_OPTION.fullmatch(argv[i - 1]) and not a.startswith("--"):
            a = "***"
        words.append(a)
    return " ".join(words)


def _holder_text() -> str:
    cmd = masked_command(sys.argv) or "python"
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": cmd[:300],
                       "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}: "
            f"{holder.get('command', '?')}")


RECORD_READS = 20  # reads of an empty holder record, RECORD_PAUSE_S apart, before the refusal names it
RECORD_PAUSE_S = 0.005


def _read_holder(fd: int, wait: bool = False) -> dict:
    """The holder record in the lock file `fd`; {} when empty or not JSON. wait: an empty record is
    read again RECORD_READS times RECORD_PAUSE_S apart, because a holder writes its record just
    after taking the lock: two runs started at once would otherwise name "pid ?"."""
    for attempt in range(RECORD_READS if wait else 1):
        if attempt:
            time.sleep(RECORD_PAUSE_S)
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096).decode("utf-8", "replace").strip()
        if raw:
            break
    try:
        out = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        out = {"command": raw[:100]}
    return out if isinstance(out, dict) else {}


def _open_locked(path: Path) -> int:
    """An fd of `path` holding its flock; _Busy when another process holds it. Retries
    when the file was removed or replaced between open and lock (its holder released it)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd, wait=True)
            os.close(fd)
            raise _Busy(holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def check_kind(target: str | os.PathLike, what: str, folder: Optional[bool] = None) -> None:
    """LockError when `target` cannot be what its writer makes there: a file stands where one of
    its folders should be, or (folder True / False) it exists as a file / as a folder."""
    target = Path(target)
    blocker = file_in_the_way(target.parent)
    if blocker is not None:
        raise LockError(f"{target} ({what}): {blocker} is a file, not a folder; give {what} another path")
    if folder is True and os.path.lexists(target) and not target.is_dir():
        raise LockError(f"{target} ({what}) is a file, not a folder; give {what} a folder (new or existing)")
    if folder is False and target.is_dir():
        raise LockError(f"{target} ({what}) is a folder, not a file; give {what} a file name")


def _wait_for(path: Path, target: str | os.PathLike, what: str, wait: float) -> int:
    """The fd holding `path`'s flock, polling up to `wait` s for a live holder and up to
    ORPHAN_WAIT_S for the children of one that has ended (one log line each); LockError after."""
    start = time.monotonic()
    told: set[str] = set()
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return _open_locked(path)
        except OSError as e:  # a read-only or full folder, a file where the folder should be
            raise LockError(f"{target} ({what}): cannot write its lock file {path} "
                            f"({e.strerror or e}); choose a folder this user can write") from None
        except _Busy as e:
            ended = _ended(e.holder)
            limit = max(wait, ORPHAN_WAIT_S) if ended else wait
            if time.monotonic() - start >= limit:
                if ended:
                    raise LockError(
                        f"{target}: the run that locked it ({e}) has ended, but processes it left behind (orphaned "
                        f"children such as DataLoader workers) still hold its lock after {limit:.0f} s; wait for "
                        f"them to exit (`fuser -v {path}` names them) or give this run another {what}") from None
                raise LockError(f"{target} is in use by another run ({e}); wait for it to end or give "
                                f"this run another {what} (lock file {path})") from None
            if ended and "orphans" not in told:
                told.add("orphans")
                log.info("%s: the run that locked it (%s) has ended; waiting up to %.0f s for its orphaned "
                         "child processes to release the lock", target, e, limit)
            elif not ended and "holder" not in told:
                told.add("holder")
                log.info("%s: waiting up to %.0f s for %s to finish with it", target, wait, e)
            time.sleep(min(0.5, max(limit - (time.monotonic() - start), 0.05)))


def acquire(target: str | os.PathLike, what: str, wait: float = 0.0, folder: Optional[bool] = None) -> Path:
    """Take the lock of `target` (a file or folder, existing or not) for this process.

    what: the setting that chose the target (`train.output_dir`, `--out`), named in the refusal.
    wait: seconds to wait for a holder to finish before refusing; 0 = refuse at once.
    folder: the writer makes a folder (True) or a file (False) at `target` (`check_kind`).
    Returns the lock file; LockError naming the holder. Re-entrant (`release` once per `acquire`).
    """
    check_kind(target, what, folder)
    path = lock_file(target)
    key = str(path)
    with _guard:
        if key in _held:
            fd, n = _held[key]
            _held[key] = (fd, n + 1)
            return path
        made = [p for p in reversed(path.parents) if not p.exists()]
        fd = _wait_for(path, target, what, wait)
        try:
            old = _read_holder(fd)
            if old:
                log.warning("%s: taking over the lock of %s, which has ended (%s)", target, _describe(old), path)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (_holder_text() + "\n").encode())
        except BaseException as e:  # a full disk: no lock file is left behind, the error names the target
            path.unlink(missing_ok=True)
            os.close(fd)
            from tgmae.atomic import remove_empty_folders, write_failure

            remove_empty_folders(made)

            if isinstance(e, OSError) and (failure := write_failure(e, target)) is not None:
                raise failure from None
            raise
        _held[key] = (fd, 1)
        _made[key] = made
        return path


def release(target: str | os.PathLike) -> None:
    """Give back one `acquire` of `target`; the last one removes the lock file and unlocks it, and
    the folders made to hold it while they are empty (a run that failed before writing into them:
    a full disk left `--out a/b/c`'s a/b behind, which looked like a started output)."""
    path = lock_file(target)
    key = str(path)
    with _guard:
        fd, n = _held.get(key, (-1, 0))
        if n > 1:
            _held[key] = (fd, n - 1)
            return
        if n == 1:
            del _held[key]
            path.unlink(missing_ok=True)  # before unlocking: a waiter then sees no stale file
            os.close(fd)
            from tgmae.atomic import remove_empty_folders

            remove_empty_folders(_made.pop(key, []))


def drop_lock(target: str | os.PathLike) -> bool:
    """Remove the lock file of a `target` that is gone (a merged part) when no process holds it: a
    killed writer's, which no later writer of that target would take over. One held by a live
    process, this one included, stays: its `release` removes it. True if removed."""
    path = lock_file(target)
    with _guard:
        if str(path) in _held or not path.exists():
            return False
        try:
            fd = _open_locked(path)
        except (_Busy, OSError):
            return False
        path.unlink(missing_ok=True)  # before unlocking, as `release`
        os.close(fd)
        return True


def shard_target(target: str | os.PathLike, rank: int, world_size: int) -> str:
    """What one rank of a sharded writer locks: `target` itself for a single process, else
    `<target>.rank<r>-of-<w>` (ranks write their own parts; a second run's same rank is refused)."""
    return str(target) if world_size == 1 else f"{target}.rank{rank}-of-{world_size}"


@contextmanager
def hold(target: str | os.PathLike, what: str, enabled: bool = True, wait: float = 0.0,
         folder: Optional[bool] = None) -> Iterator[None]:
    """`acquire` for the block, `release` after it (also on an exception). enabled=False holds
    nothing (DDP ranks other than the one that writes)."""
    if not enabled:
        yield
        return
    acquire(target, what, wait, folder)
    try:
        yield
    finally:
        release(target)
