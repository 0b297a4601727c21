"""Worker processes end with their parent, even one killed with SIGKILL.

`end_with_parent(parent_pid)`, a pool's `initializer`: on Linux `prctl(PR_SET_PDEATHSIG)`, plus
a daemon thread checking the parent once a second (other systems; the death signal follows the
thread that forked). `end_with_launcher()`, called by the CLI as it starts: the same for a rank
that torchrun started, tied to torchrun's agent; a no-op elsewhere. `stop_on_sigterm()`, called
by the CLI too: SIGTERM ends a command as Ctrl-C does (`Terminated`), cleaning up on the way;
`wait_for_rank0()`, the one exception: a rank exiting on a mistake rank 0 prints dies by it silently.
`launch_env()` / `local_rank()`: what torchrun told this process, read without torch (a command
stopped while torch imports still knows its rank).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from tgmae.errors import SettingsError

_PR_SET_PDEATHSIG = 1
STOPS = (signal.SIGINT, signal.SIGTERM)  # the signals that stop a command (Ctrl-C, SIGTERM)


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


def _launch_number(name: str, default: int, least: int) -> int:
    """Environment variable `name` as a whole number >= `least` (`default` when unset).
    SettingsError naming it and its value otherwise (RANK=abc was int()'s traceback: re-trial 29B T4)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = least - 1
    if value < least:
        raise SettingsError(f"{name}={raw!r}: expected a whole number >= {least} (torchrun sets it for each "
                            "process; outside torchrun leave it unset)")
    return value


def launch_env() -> tuple[int, int]:
    """(rank, world size) torchrun gives this process (RANK, WORLD_SIZE); (0, 1) without torchrun.
    SettingsError naming the variable when one is not a whole number, RANK < 0, WORLD_SIZE < 1, or
    RANK is not below a WORLD_SIZE that is set, or WORLD_SIZE > 1 comes without RANK (it waited for
    peers for ever: re-trial 30A L2); `tgmae.cli` checks them before any command runs. A RANK without
    WORLD_SIZE (set for something else) is a single process, rank 0 (as rank 1 of 1, `extract` left
    its features to a rank 0 that never ran, exit 0: re-trial 30A S2)."""
    rank, world = _launch_number("RANK", 0, 0), _launch_number("WORLD_SIZE", 1, 1)
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    if world > 1 and "RANK" not in os.environ:
        raise SettingsError(f"WORLD_SIZE={world} without RANK: torchrun sets both for each process "
                            "(outside torchrun leave WORLD_SIZE unset)")
    if rank >= world:
        raise SettingsError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    return rank, world


def other_launched_rank() -> bool:
    """Whether torchrun started this process as a rank other than 0 (RANK > 0 of WORLD_SIZE > 1).
    A command that is not sharded (one store written whole) runs on rank 0 alone: the other ranks
    leave at once, so they neither repeat its work nor find rank 0's lock on the output. False where
    RANK / WORLD_SIZE are invalid: `tgmae.cli` refuses them before a command runs, and its report of
    that error asks this (re-trial 29B T4)."""
    try:
        rank, world = launch_env()
    except SettingsError:
        return False
    return world > 1 and rank > 0


def local_rank(default: int = 0) -> int:
    """This process's index on its node: torchrun's LOCAL_RANK, else `default`. SettingsError naming
    it when it is not a whole number >= 0."""
    return _launch_number("LOCAL_RANK", default, 0)


LAUNCHER_ENV = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")  # set by torchrun's agent for each rank
_tied = False


def launched_by_torchrun() -> bool:
    """Whether torchrun (torchelastic's agent) started this process: its `LAUNCHER_ENV` variables
    are set. Its ranks are tied to the agent (`end_with_launcher`) and meet in its rendezvous;
    a process given RANK / WORLD_SIZE otherwise meets its peers in `distributed.rendezvous`."""
    return any(k in os.environ for k in LAUNCHER_ENV)


def end_with_launcher() -> None:
    """When torchrun started this process (its `LAUNCHER_ENV` variables are set), make it end with
    torchrun's agent, its parent (`end_with_parent`): a kill -9 of torchrun would otherwise leave
    its ranks, re-parented to init, training and writing checkpoints. The agent starts its workers
    (`subprocess.Popen`) from its main thread, so the parent-death signal, which follows the thread
    that forked, fires when the agent process ends. A no-op elsewhere: a run started from a shell
    (`nohup tgmae pretrain ... &`) outlives it. Once per process."""
    global _tied
    if _tied or not launched_by_torchrun():
        return
    _tied = True
    end_with_parent(os.getppid())


class Terminated(KeyboardInterrupt):
    """SIGTERM (SLURM's time limit, `timeout`, `kill`) raised where the main thread is, as Ctrl-C
    raises KeyboardInterrupt: the same clean-up runs (temp files, locks, DataLoader workers) and
    the command ends in one line (`tgmae.cli`) instead of dying silently."""


def stop_on_sigterm() -> None:
    """Make SIGTERM raise `Terminated` in this process's main thread. A process forked afterwards
    (a pool worker) that gets it ends as before, by the default action: its parent reports the
    stop. DataLoader workers end quietly on it (`quiet_worker_stops`; started under `workers_starting`)."""
    owner = os.getpid()

    def handler(signum, frame) -> None:
        if os.getpid() != owner:  # a forked child inherited the handler
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


RANK0_GRACE_S = 10.0  # how long another rank waits for rank 0 before printing its own mistake


def wait_for_rank0() -> None:
    """Pause a rank other than 0 that is about to print a mistake and exit. A mistake every rank
    makes alike (the command line, the config, a file each reads) is rank 0's to print: exiting
    first, this rank would have torchrun stop rank 0 before rank 0's line is out, so it waits, and
    torchrun's SIGTERM ends the wait silently (the default action: `stop_on_sigterm`'s handler
    would raise inside the error handling). A mistake of its own (rank 0 runs on) is printed after
    the wait: never silent, at worst said twice by a rank 0 slower than the wait."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(RANK0_GRACE_S)


_stopped_at = 0.0  # when this pool worker's job was stopped (time.monotonic; 0: never): it starts no other
REPEAT_S = 5.0  # a second stop this soon after the first is the same stop (the job's signal and the parent's)


def in_finalizer(frame) -> bool:
    """Whether `frame` (the one a signal handler interrupted) runs a finalizer: a `__del__` or a
    weakref callback (torch's tensors drop many). An exception raised there is only printed
    ("Exception ignored in ...") and the code it meant to stop goes on (re-trial 28 T2)."""
    for f in (frame, getattr(frame, "f_back", None)):  # the callback, or weakref.finalize calling it
        if f is not None and (f.f_code.co_name == "__del__" or os.path.basename(f.f_code.co_filename) == "weakref.py"):
            return True
    return False


def stoppable(fn, *args):
    """`fn(*args)` in a pool worker, with Ctrl-C and SIGTERM raising KeyboardInterrupt / `Terminated`
    while it runs: a stop (`stop_workers`, a terminal's Ctrl-C or SLURM's SIGTERM to the whole job)
    runs its clean-up (lock files, temp files) instead of ending it where it stands, and the worker
    starts no job after it (the pool hands each worker its next job ahead of time: cancelling cannot
    take that one back). A second stop within REPEAT_S (the job's signal, then the parent's) does
    not cut the clean-up short; a later one raises again (the first, raised inside a finalizer, was
    swallowed there: re-trial 27A T2). Idle, the worker holds nothing: SIGTERM ends it by the default
    action (its pool's initializer ignores SIGINT, which `stop_workers` passes on as SIGTERM)."""
    def handler(signum, frame) -> None:
        global _stopped_at
        if in_finalizer(frame):  # raised there it is printed and swallowed: the same stop again, shortly
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        now = time.monotonic()
        if _stopped_at and now - _stopped_at < REPEAT_S:
            return
        _stopped_at = now
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()

    if _stopped_at:
        raise Terminated()
    before = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return fn(*args)
    finally:
        for sig, previous in before.items():
            signal.signal(sig, previous)


STOP_RESEND_S, STOP_GRACE_S = 10.0, 60.0  # `stop_workers`: SIGTERM again every, SIGKILL after (seconds)


def stop_workers(executor) -> None:
    """Stop a `concurrent.futures.ProcessPoolExecutor` whose parent is stopping (Ctrl-C, SIGTERM):
    its queued jobs cancelled, its busy workers sent SIGTERM (their jobs run under `stoppable`), again
    every STOP_RESEND_S while one is alive (a stop swallowed inside a finalizer), SIGKILL after
    STOP_GRACE_S (a rerun takes over the locks it held). Returns once every worker has ended.
    Leaving the executor's `with` block alone would first run every queued job to its end: a study
    stopped by SIGTERM kept training its remaining cells (session 15)."""
    workers = list((getattr(executor, "_processes", None) or {}).values())  # shutdown() forgets them
    executor.shutdown(wait=False, cancel_futures=True)
    waited = 0.0
    while alive := [p for p in workers if p.is_alive()]:
        if waited >= STOP_GRACE_S:
            _signal_all(alive, signal.SIGKILL)
            return
        _signal_all(alive, signal.SIGTERM)
        resend = waited + STOP_RESEND_S
        while waited < resend and any(p.is_alive() for p in alive):
            time.sleep(0.1)
            waited += 0.1


def _signal_all(processes, sig: int) -> None:
    for process in processes:
        try:
            os.kill(process.pid, sig)
        except ProcessLookupError:  # it ended between the check and the signal
            pass


@contextmanager
def stops_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM held while the block runs, then raised as they would have been (the
    handler each had: KeyboardInterrupt, `Terminated`, the default action). A stop landing inside a
    C extension's import (numpy, torch) is swallowed there or leaves the module half-imported, and
    the command fails later in a traceback (re-trial 27A T1). An ignored signal stays ignored; a
    no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    before = {sig: signal.getsignal(sig) for sig in STOPS}
    before = {sig: handler for sig, handler in before.items() if handler is not signal.SIG_IGN}
    try:  # signal.signal first runs a stop already pending: raised there, the finally puts the handlers back
        for sig in before:
            signal.signal(sig, lambda signum, frame: held.append(signum))
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if held:
        signal.raise_signal(held[0])


@contextmanager
def workers_starting() -> Iterator[None]:
    """Around the start of DataLoader workers (`data.dataset.Loader`): Ctrl-C and SIGTERM held in
    this process (`stops_deferred`) and blocked in this thread (`signal.pthread_sigmask`), so each
    worker forked here starts with them blocked and the kernel keeps one sent to it pending until
    its init has put in its own handlers (`quiet_worker_stops` unblocks them). Re-trial 30A T1: a
    SIGTERM to the process group while torch started its workers raised `Terminated` in its
    half-built iterator (`AttributeError ... '_workers_status'` in its __del__), or inside
    logging's after-fork hook, where it was only printed and the stop was lost (exit 0), and a
    worker ran its parent's inherited handler and died of it ("DataLoader worker (pid N) is killed
    by signal"). Blocking alone would not do in the parent: the kernel gives a signal sent to the
    process to a thread that does not block it (torch's), and the main thread runs the handler. A
    no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with stops_deferred():
        before = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
        try:
            yield
        finally:  # a stop that came meanwhile is delivered now, to the deferring handler
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


_results_said = False  # the running command has said its results (`results_said`)


def results_said(said: bool = True) -> None:
    """Mark that the running command has said its closing results (`commands.args.say`; False: a
    new command starts). A Ctrl-C / SIGTERM after that, in the command's teardown (its locks,
    DataLoader workers, the process group), does not make a finished command exit 130 / 143 with
    "rerun to go on": the CLI ends it with 0 (re-trial 29A M1; `ignore_stops` covers the shutdown)."""
    global _results_said
    _results_said = said


def stopped_after_results() -> bool:
    """Whether a stop now lands after the command said its results (`results_said`)."""
    return _results_said


def quiet_worker_stops() -> None:
    """For a DataLoader worker's whole life (`data.dataset.loader_worker_init`): Ctrl-C is ignored
    (a stop is its parent's) and SIGTERM ends it at once with exit 0. A scheduler signals the whole
    process group (torchrun each rank's session): killed by the signal, a worker had torch's SIGCHLD
    handler raise "DataLoader worker (pid N) is killed by signal" into its parent's stop (re-trial
    29B T3); ignoring SIGTERM instead left a parent stopped while it started its workers waiting for
    them for ever at exit (multiprocessing joins them after its SIGTERM; re-trial 30A L1). A
    worker that ends with 0 is not reported, and its parent, if it goes on, is told it exited.
    The stops its parent blocked while starting it (`workers_starting`) are unblocked here, once
    these handlers are in: one that came meanwhile ends it now (re-trial 30A T1)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)


def ignore_stops() -> None:
    """For the process's last moments, once its command has returned and said its last line: Ctrl-C
    and SIGTERM are ignored, so one during the interpreter's shutdown (torch's teardown takes about a
    second, past where a Python handler runs) leaves the command's exit code, not 130 / 143 without
    a word (re-trial 27A M5, 28 M5). A shutdown that hangs is ended with SIGKILL."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
