"""tgmae.locks: one writer per run folder and store; the holder named; stale locks taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from tgmae.locks import LockError, acquire, hold, lock_file, release


def _holder(target, tmp_path):
    """A process that holds `target`'s lock until killed (started once it holds it)."""
    code = textwrap.dedent(f"""
        import sys, time
        from tgmae.locks import acquire
        acquire({str(target)!r}, "--out")
        print("held", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, "caption", "--out", str(target)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_ones_lock_is_taken_over(tmp_path, caplog):
    store = tmp_path / "captions.jsonl"
    proc = _holder(store, tmp_path)
    try:
        with pytest.raises(LockError) as e:
            acquire(store, "--out")
        msg = str(e.value)
        assert str(store) in msg and f"pid {proc.pid}" in msg and socket.gethostname() in msg
        assert "caption --out" in msg and "UTC" in msg and "--out" in msg and str(lock_file(store)) in msg
        assert "\n" not in msg
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    held = json.loads(lock_file(store).read_text())  # kill -9 leaves the file; the kernel freed the lock
    assert held["pid"] == proc.pid
    with caplog.at_level(logging.WARNING, logger="tgmae"):
        with hold(store, "--out"):
            assert json.loads(lock_file(store).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of pid {proc.pid}" in caplog.text and "has ended" in caplog.text
    assert not lock_file(store).exists()  # released: removed


def test_locks_are_reentrant_in_a_process_and_beside_the_target(tmp_path):
    run = tmp_path / "run"
    with hold(run, "train.output_dir"):
        with hold(tmp_path / "x" / ".." / "run", "train.output_dir"):  # another spelling, same lock
            assert lock_file(run) == tmp_path / ".run.lock" and lock_file(run).exists()
        assert lock_file(run).exists()
        assert not run.exists()  # nothing written into the target itself
    assert not lock_file(run).exists()
    with hold(run, "train.output_dir", enabled=False):
        assert not lock_file(run).exists()
    release(run)  # not held: nothing to do


def test_a_waiting_writer_gets_the_lock_when_the_holder_ends(tmp_path):
    cache = tmp_path / "emb.safetensors"
    code = textwrap.dedent(f"""
        import time
        from tgmae.locks import hold
        with hold({str(cache)!r}, "--out"):
            print("held", flush=True)
            time.sleep(1.5)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockError):
            acquire(cache, "--out", wait=0.2)
        with hold(cache, "--out", wait=60):  # waits for the holder, then takes it
            assert json.loads(lock_file(cache).read_text())["pid"] == os.getpid()
    finally:
        proc.kill()
        proc.wait()


def test_masks_refuses_a_cache_folder_another_run_writes(tmp_path, capsys):
    from tgmae.cli import main

    out = tmp_path / "maps"
    proc = _holder(out, tmp_path)
    try:
        rc = main(["masks", "--format", "csv", "--root", str(tmp_path), "a.csv", "--captions", "c.jsonl",
                   "--clip", "clip", "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and f"pid {proc.pid}" in err[0] and str(out) in err[0]
    finally:
        proc.kill()
        proc.wait()


def test_a_folder_that_cannot_hold_the_lock_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LockError, match=r"cannot write its lock file .*file.*choose a folder") as e:
        acquire(tmp_path / "file" / "run", "train.output_dir")
    assert "train.output_dir" in str(e.value) and "\n" not in str(e.value)
