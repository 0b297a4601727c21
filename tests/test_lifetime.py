"""tgmae.lifetime: a pool's workers end when their parent is killed (kill -9 included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped by init) counts as ended
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_pids_after_parent_kill(initializer: str, initargs: str) -> list[int]:
    """Start a parent with a spawned 2-worker pool, kill -9 it; the workers' pids."""
    code = textwrap.dedent(f"""
        import multiprocessing, os, time
        from concurrent.futures import ProcessPoolExecutor
        {initializer}
        if __name__ == "__main__":
            ctx = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(2, mp_context=ctx, initializer=init, initargs={initargs})
            futures = [pool.submit(time.sleep, 120) for _ in range(2)]
            time.sleep(0.5)
            while len(pool._processes) < 2:
                time.sleep(0.1)
            print(" ".join(str(p) for p in pool._processes), flush=True)
            time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    time.sleep(3)  # the workers have run their initializer (the pool sleeps in them)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    return pids


def _wait_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def test_pool_workers_end_when_the_parent_is_killed():
    pids = worker_pids_after_parent_kill("from tgmae.lifetime import end_with_parent as init", "(os.getpid(),)")
    assert len(pids) == 2
    left = _wait_gone(pids)
    for p in left:  # do not leave them behind if the test fails
        os.kill(p, signal.SIGKILL)
    assert left == []


def _cli_child_after_launcher_kill(tmp_path, env: dict) -> int:
    """A parent imitating torchrun's agent (it starts the CLI with `env` from its main thread) is
    killed -9 once the CLI runs (its OUT_DIR lock is there); the CLI's pid."""
    out = tmp_path / "syn"
    code = textwrap.dedent(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-m", "tgmae.cli", "synth", {str(out)!r}, "--num-videos", "100000",
                                  "--frames", "8", "--size", "64", "--workers", "1"], env={{**os.environ, **{env!r}}},
                                 stdout=subprocess.DEVNULL)
        print(child.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    pid = int(parent.stdout.readline())
    deadline = time.monotonic() + 120
    while not (tmp_path / ".syn.lock").exists() and _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)  # the CLI has started and holds its lock: the parent-death signal is armed
    assert (tmp_path / ".syn.lock").exists() and _alive(pid)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    return pid


TORCHRUN_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                "TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0"}


def test_a_cli_started_by_torchrun_ends_when_torchrun_is_killed(tmp_path):
    """issue 28 re-trial 12 (F3): kill -9 of the torchrun parent left both ranks training and
    writing checkpoints (re-parented to init). A rank started by torchrun ends with it."""
    pid = _cli_child_after_launcher_kill(tmp_path, TORCHRUN_ENV)
    left = _wait_gone([pid], timeout=60.0)
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert left == []


def test_end_with_launcher_is_a_no_op_outside_torchrun(monkeypatch):
    """A run started by a shell (`nohup tgmae pretrain ... &`) outlives it: only torchrun's ranks
    are tied to their parent."""
    import threading

    from tgmae.lifetime import end_with_launcher

    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    end_with_launcher()
    assert not any(t.name == "end-with-parent" for t in threading.enumerate())


def _set_and_sleep(event) -> None:
    event.set()
    time.sleep(60)


def test_sigterm_raises_terminated_here_and_ends_a_forked_child_as_before():
    """`stop_on_sigterm`: SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, so
    clean-up runs; a child forked afterwards (a DataLoader worker) still ends by the signal."""
    import multiprocessing

    import pytest

    from tgmae.lifetime import Terminated, stop_on_sigterm

    before = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_sigterm()
        ctx = multiprocessing.get_context("fork")
        running = ctx.Event()  # a signal between fork and the child's start is lost (CPython resets them)
        child = ctx.Process(target=_set_and_sleep, args=(running,))
        child.start()
        assert running.wait(30)
        os.kill(child.pid, signal.SIGTERM)
        child.join(30)
        assert child.exitcode == -signal.SIGTERM
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode
    finally:
        signal.signal(signal.SIGTERM, before)


def test_ctrl_c_or_sigterm_stops_a_pretraining_in_one_line_naming_where_it_resumes(tmp_path):
    """Re-trial 24A T1: Ctrl-C ended `tgmae pretrain` in a 30-line KeyboardInterrupt traceback and
    SIGTERM (SLURM's time limit, `timeout`) in silence. Both end in a line naming the checkpoint a
    rerun resumes from and the command's one line, with the shell's code (130 / 143)."""
    from tgmae.data.synthetic import generate_synthetic_dataset

    root = tmp_path / "synth"
    generate_synthetic_dataset(root, num_videos=8, frames=8, size=32, gop=4, seed=0, val_fraction=0.25)
    env = {**os.environ, "PYTHONPATH": str(os.path.join(os.path.dirname(__file__), "..", "src")),
           "OMP_NUM_THREADS": "1"}
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        out = tmp_path / sig.name
        cmd = [sys.executable, "-m", "tgmae.cli", "pretrain", "data.format=csv", f"data.root={root}",
               f"data.train_annotations={root / 'train.csv'}", "data.num_frames=4", "data.image_size=32",
               "data.num_workers=1", "model.preset=micro", "model.patch_size=16", "train.batch_size=2",
               "train.epochs=1000", "train.precision=fp32", "train.log_every=1", "log.progress=false",
               "log.tensorboard=false", "checkpoint.every_steps=1", f"train.output_dir={out}"]
        # a test run in the background (`make test &`, CI) may have SIGINT ignored, which the child
        # would inherit (as a shell's background job does, on purpose): it gets SIGINT's default
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        lines = []
        for line in proc.stderr:  # until the first checkpoint is written
            lines.append(line)
            if "step 2/" in line:
                break
        proc.send_signal(sig)
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == code, "".join(lines) + rest
        assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
        said = [x for x in rest.splitlines() if x.strip()]
        assert any("a rerun of the same command resumes from" in x and "step_" in x for x in said), rest
        assert said[-1] == f"tgmae pretrain: stopped ({sig.name}); what it finished is kept: rerun the same command to go on"


def _hold_lock(path: str) -> str:
    """A pool job holding a lock file until it is stopped (its clean-up removes the file)."""
    lock = Path(path)
    lock.write_text(str(os.getpid()))
    try:
        time.sleep(600)
    finally:
        lock.unlink()
    return path


def test_stop_workers_stops_the_busy_jobs_with_their_clean_up_and_starts_no_queued_one(tmp_path):
    """Session 15: a `tgmae study` stopped by SIGTERM left its `with ProcessPoolExecutor` block,
    which first ran every queued cell to its end (minutes to hours), and a worker killed by the
    job's SIGTERM left its cell's lock file. `stop_workers` cancels the queue and stops the busy
    jobs, which run under `stoppable`: their clean-up runs."""
    import multiprocessing
    from concurrent.futures import CancelledError, ProcessPoolExecutor

    import pytest

    from tgmae.lifetime import Terminated, stop_workers, stoppable

    locks = [tmp_path / f"cell{i}.lock" for i in range(4)]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(stoppable, _hold_lock, str(p)) for p in locks]
        for _ in range(600):  # the two busy jobs hold their locks
            if locks[0].exists() and locks[1].exists():
                break
            time.sleep(0.1)
        stop_workers(pool)
        for job in jobs[:2]:
            with pytest.raises(Terminated):
                job.result(timeout=60)
        for job in jobs[2:]:  # cancelled, or refused by a stopped worker it was handed to ahead of time
            with pytest.raises((CancelledError, Terminated)):
                job.result(timeout=60)
    assert not any(p.exists() for p in locks)  # released by the stopped jobs; the queued ones never ran


def test_stops_deferred_holds_a_stop_until_the_block_ends():
    """Re-trial 27A T1: a Ctrl-C or SIGTERM landing inside numpy's or torch's import was swallowed
    there or half-imported it. `stops_deferred` holds both while the block runs and raises them as
    their handlers would after it; handlers are restored."""
    import pytest

    from tgmae.lifetime import Terminated, stop_on_sigterm, stops_deferred

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        stop_on_sigterm()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a suite run in the background ignores it
        for sig, raised in ((signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)):
            handler = signal.getsignal(sig)
            reached = []
            with pytest.raises(raised):
                with stops_deferred():
                    os.kill(os.getpid(), sig)
                    time.sleep(0.01)  # a handler would run here
                    reached.append(True)
            assert reached == [True] and signal.getsignal(sig) is handler
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])


def test_a_stop_after_the_command_returned_leaves_its_exit_code(tmp_path):
    """Re-trial 27A / 28 M5: Ctrl-C / SIGTERM in the second of torch's teardown after a command printed
    its results gave exit 130 / 143 without a word (a Python handler no longer runs there).
    `ignore_stops` once the command has returned: the process ends with the command's code."""
    script = textwrap.dedent("""
        import atexit, os, signal, sys, time
        from tgmae.lifetime import ignore_stops

        atexit.register(time.sleep, 0.5)  # a teardown the stops land in
        print("results", flush=True)
        ignore_stops()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        sys.exit(3)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "results\n", "")


def _swallow_one_stop(path: str) -> str:
    """A pool job whose first stop is swallowed (raised inside a finalizer, as torch's weakref
    callbacks do), then holding a lock file until stopped again."""
    from tgmae.lifetime import Terminated

    lock = Path(path)
    lock.write_text(str(os.getpid()))
    try:
        try:
            time.sleep(600)
        except Terminated:
            pass  # swallowed
        time.sleep(600)
    finally:
        lock.unlink()
    return path


def test_a_stop_swallowed_by_a_busy_job_is_sent_again(tmp_path, monkeypatch):
    """Re-trial 27A T2: a study cell's stop was raised inside a weakref callback and only printed
    ("Exception ignored"); the cell then ignored every later SIGTERM and ran its whole pipeline while
    the stopped study waited. `stop_workers` sends SIGTERM again every STOP_RESEND_S while a worker
    lives, and `stoppable` raises again once REPEAT_S has passed."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import pytest

    import tgmae.lifetime as lifetime
    from tgmae.lifetime import Terminated, stop_workers, stoppable

    monkeypatch.setattr(lifetime, "STOP_RESEND_S", lifetime.REPEAT_S + 1)
    lock = tmp_path / "cell.lock"
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        job = pool.submit(stoppable, _swallow_one_stop, str(lock))
        for _ in range(600):
            if lock.exists():
                break
            time.sleep(0.1)
        stop_workers(pool)
        with pytest.raises(Terminated):
            job.result(timeout=60)
    assert not lock.exists()


def test_a_finalizer_is_told_from_the_code_a_stop_should_end():
    """Re-trial 28 T2: a study cell's stop raised inside a weakref callback (torch's
    WeakKeyDictionary.remove) was printed as "Exception ignored" and the cell ran on. `stoppable`
    sends such a stop again shortly, to land outside the finalizer (`in_finalizer`)."""
    import weakref

    from tgmae.lifetime import in_finalizer

    seen = {}

    class Held:
        def __del__(self):
            seen["__del__"] = in_finalizer(sys._getframe())

    class Key:
        pass

    Held()
    key = Key()
    weakref.finalize(key, lambda: seen.setdefault("finalize", in_finalizer(sys._getframe())))
    del key
    assert seen == {"__del__": True, "finalize": True}
    assert in_finalizer(sys._getframe()) is False


def test_a_dataloader_worker_ignores_ctrl_c_and_ends_quietly_on_sigterm():
    """Re-trial 30A L1: workers that ignored SIGTERM kept a parent stopped while it started them
    waiting for ever at exit (multiprocessing joins its children after its SIGTERM). A worker
    (`quiet_worker_stops`) ignores Ctrl-C (its parent's) and ends with 0 on SIGTERM, which torch's
    SIGCHLD handler does not report as a worker killed (re-trial 29B T3)."""
    code = ("import sys, time; from tgmae.lifetime import quiet_worker_stops; quiet_worker_stops(); "
            "print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:  # ignored: still there
            pass
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()


_AT_FORK: dict[str, int] = {}  # the signal a fork's parent ("parent") / child ("child") raises at once (tests below)


def _raise_after_fork(side: str) -> None:
    """An after-fork hook as logging's (`_releaseLock`): a stop landing there is only printed."""
    if side in _AT_FORK:
        signal.raise_signal(_AT_FORK.pop(side))  # its handler runs before this returns


os.register_at_fork(after_in_parent=lambda: _raise_after_fork("parent"),
                    after_in_child=lambda: _raise_after_fork("child"))


def test_a_stop_while_workers_start_is_raised_after_them_and_held_in_each_until_its_init():
    """Re-trial 30A T1: SIGTERM to the process group while the DataLoader forked its workers was
    raised inside logging's after-fork hook (printed, the stop lost: exit 0) and killed a worker
    through its parent's inherited handler. `workers_starting`: the parent raises it after the
    block; a child forked in it keeps its own pending until `quiet_worker_stops`, then ends with 0."""
    import pytest

    from tgmae.lifetime import Terminated, quiet_worker_stops, stop_on_sigterm, workers_starting

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        stop_on_sigterm()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a suite run in the background ignores it
        _AT_FORK.update(parent=signal.SIGTERM, child=signal.SIGTERM)
        reached = []
        with pytest.raises(Terminated):
            with workers_starting():
                pid = os.fork()
                if pid == 0:  # the worker: the stop waits for its init
                    code = 4
                    try:
                        if signal.SIGTERM in signal.sigpending():
                            code = 5
                            quiet_worker_stops()  # ends it with 0
                    finally:
                        os._exit(code)
                reached.append(pid)
        assert reached == [pid] and os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the mask is back
    finally:
        _AT_FORK.clear()
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])


class _Numbers:
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> int:
        return i


def test_a_stop_while_a_loader_starts_its_workers_ends_in_the_stop_alone(capfd):
    """Re-trial 30A T1 through torch: a SIGTERM to the parent and to its workers as they fork
    (`data.dataset.Loader`) raises `Terminated` from `iter(loader)` once its iterator is whole (not
    in torch's half-built one: "AttributeError ... '_workers_status'"), nothing printed (no stop
    swallowed in an after-fork hook, no "DataLoader worker is killed by signal"); the loader still
    serves every batch afterwards."""
    import gc

    import pytest

    from tgmae.data.dataset import Loader
    from tgmae.lifetime import Terminated, stop_on_sigterm

    before = signal.getsignal(signal.SIGTERM)
    loader = Loader(_Numbers(), batch_size=2, num_workers=2, multiprocessing_context="fork")
    try:
        stop_on_sigterm()
        _AT_FORK.update(parent=signal.SIGTERM, child=signal.SIGTERM)
        with pytest.raises(Terminated):
            iter(loader)
        _AT_FORK.clear()
        gc.collect()
        assert [b.tolist() for b in loader] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    finally:
        _AT_FORK.clear()
        signal.signal(signal.SIGTERM, before)
    assert capfd.readouterr().err == ""
