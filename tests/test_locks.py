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
from pathlib import Path

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


def test_a_path_under_a_file_or_a_file_for_a_folder_is_one_line_naming_it(tmp_path):
    """issue 28: an output folder under a plain file read `cannot write its lock file ... (File
    exists)`, and train.output_dir naming an existing file ended in a FileExistsError traceback."""
    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(LockError) as e:
        acquire(plain / "run", "train.output_dir")
    msg = str(e.value)
    assert f"{plain} is a file, not a folder" in msg and "train.output_dir" in msg and str(plain / "run") in msg
    assert "File exists" not in msg and "\n" not in msg
    with pytest.raises(LockError, match=rf"{plain} \(--out\) is a file, not a folder"):
        acquire(plain, "--out", folder=True)
    with pytest.raises(LockError, match=rf"{tmp_path} \(--out\) is a folder, not a file"):
        acquire(tmp_path, "--out", folder=False)
    with hold(plain, "--out"), hold(tmp_path / "run", "--out", folder=True):  # either kind where not said
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing made, locks removed
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            return  # root writes anyway
        with pytest.raises(LockError, match=r"cannot write its lock file .*ro.*choose a folder"):
            acquire(ro / "run", "train.output_dir")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("command", ["pretrain", "probe", "extract", "masks", "caption", "prepare", "synth"])
def test_each_writer_names_a_file_given_as_its_folder(tmp_path, capsys, command):
    """The writers' output folders (train.output_dir, --out, OUT_DIR) given as an existing file, or
    under one: one line naming the file, exit 2, before any work."""
    from tgmae.cli import main

    plain = tmp_path / "plain"
    plain.write_text("x")
    (tmp_path / "a.csv").write_text("path,label\nv.mp4,0\n")
    for out, named in ((plain, f"{plain} (") if command not in ("caption",) else (plain / "c.jsonl", str(plain)),
                       (plain / "sub", str(plain))):
        argv = {
            "pretrain": ["pretrain", f"train.output_dir={out}"],
            "probe": ["probe", f"train.output_dir={out}", "model.pretrained=x.safetensors"],
            "extract": ["extract", "model.pretrained=x.safetensors", "--out", str(out)],
            "masks": ["masks", "--format", "csv", "--root", str(tmp_path), "a.csv", "--captions", "c.jsonl",
                      "--clip", "clip", "--out", str(out)],
            "caption": ["caption", "--format", "csv", "--root", str(tmp_path), "a.csv", "--oracle", "--out", str(out)],
            "prepare": ["data", "prepare", "--format", "csv", "--root", str(tmp_path), "a.csv", "--out", str(out)],
            "synth": ["synth", str(out), "--num-videos", "2"],
        }[command]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0] and "is a file, not a folder" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "plain"]


@pytest.mark.parametrize("argv,target", [
    (["synth", "{out}/syn", "--num-videos", "2"], "syn"),
    (["caption", "{out}/a.csv", "--model", "blip", "--out", "{out}/S"], "S"),
])
def test_a_full_disk_leaves_no_lock_file_and_names_the_path(tmp_path, capsys, monkeypatch, argv, target):
    """Writing the lock's holder line on a full disk left `.S.lock` / `.syn.lock` behind and said
    `no space left on device` without a path."""
    import errno

    from tgmae import locks
    from tgmae.cli import main as cli_main

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(locks.os, "write", full)
    assert cli_main([a.format(out=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{tmp_path / target}: no space left on device" in err, err
    assert not list(tmp_path.glob(".*.lock")) and not list(tmp_path.rglob("*.lock"))


def test_a_locked_run_folder_is_cleared_of_killed_writers_temps(tmp_path):
    """A probe / k-NN / attentive run (`locks_run_folder`) removes what a killed writer left there,
    e.g. the temp folder of a probe head written when the process was killed."""
    import subprocess
    import sys

    from tgmae.atomic import temp_path
    from tgmae.config import load_config
    from tgmae.train.resume import locks_run_folder

    out = tmp_path / "probe"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = temp_path(out / "probe_head.safetensors")
    stale = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{dead.pid}-"))
    stale.mkdir()
    (stale / ".tmpAbCdEf").write_bytes(b"partial")
    seen = []
    run = locks_run_folder(lambda cfg: seen.append(sorted(p.name for p in out.iterdir())))
    run(load_config(None, [f"train.output_dir={out}"]))
    assert not stale.exists() and seen and all(not n.endswith(".tmp") for n in seen[0])


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def test_the_forked_children_of_a_killed_holder_do_not_keep_its_lock(tmp_path):
    """issue 28: kill -9 of a run with data.num_workers=2 left its DataLoader workers (forked, parent pid 1)
    holding the run folder's flock for seconds; an immediate rerun was refused naming the dead process."""
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import os, sys, time
        from tgmae.locks import acquire
        acquire({str(run)!r}, "train.output_dir")
        print("held", flush=True)
        if os.fork() == 0:  # a DataLoader worker: forked, outlives its killed parent
            print("child", os.getpid(), flush=True)
            time.sleep(60)
            os._exit(0)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        assert proc.stdout.readline().strip() == "held"
        child = int(proc.stdout.readline().split()[1])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        os.kill(child, 0)  # the orphan lives on
        with hold(run, "train.output_dir"):  # wait=0: taken at once
            assert json.loads(lock_file(run).read_text())["pid"] == os.getpid()
    finally:
        proc.kill()
        proc.wait()
        if child is not None:
            os.kill(child, signal.SIGKILL)


def _orphan_holder(target, dead: int, seconds: float):
    """A process holding `target`'s lock under the record of the ended process `dead` (as the orphaned
    children of a killed holder do), for `seconds`."""
    code = textwrap.dedent(f"""
        import fcntl, json, os, socket, time
        from tgmae.locks import lock_file
        fd = os.open(lock_file({str(target)!r}), os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({{"pid": {dead}, "host": socket.gethostname(), "command": "tgmae pretrain",
                                  "started": "then"}}).encode())
        print("held", flush=True)
        time.sleep({seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_lock_whose_holder_has_ended_is_waited_for_then_refused_naming_the_orphans(tmp_path, caplog, monkeypatch):
    """When the pid recorded in a held lock is dead, its orphaned children hold it: wait (one log line)
    up to locks.ORPHAN_WAIT_S for them to exit before refusing, and then say so."""
    from tgmae import locks

    run, dead = tmp_path / "run", _dead_pid()
    proc = _orphan_holder(run, dead, 1.0)
    try:
        with caplog.at_level(logging.INFO, logger="tgmae"):
            with hold(run, "train.output_dir"):  # wait=0, yet the orphans' exit is waited for
                assert json.loads(lock_file(run).read_text())["pid"] == os.getpid()
        waits = [r.message for r in caplog.records if "orphan" in r.message]
        assert len(waits) == 1 and f"pid {dead}" in waits[0] and "has ended" in waits[0]
    finally:
        proc.kill()
        proc.wait()
    monkeypatch.setattr(locks, "ORPHAN_WAIT_S", 0.2)
    proc = _orphan_holder(run, dead, 60)
    try:
        with pytest.raises(LockError) as e:
            acquire(run, "train.output_dir")
        msg = str(e.value)
        assert f"pid {dead}" in msg and "has ended" in msg and "orphan" in msg and str(run) in msg
        assert "train.output_dir" in msg and "\n" not in msg
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("argv", [["synth", "{ro}/set", "--num-videos", "4", "--frames", "6", "--size", "32"],
                                  ["pretrain", "train.output_dir={ro}/run", "train.max_steps=1"]])
def test_a_lock_in_a_read_only_folder_is_one_line_naming_it(tmp_path, monkeypatch, capsys, argv):
    """m2 (issue 28): a writer whose lock file's folder cannot be written gives one line naming the
    folder (exit 2), neither a traceback nor a run without its lock. The folder is made read-only by
    refusing the lock file's open (EACCES), as the kernel does for a user other than root."""
    import errno

    from tgmae import locks
    from tgmae.cli import main

    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if Path(path).parent == ro and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(locks.os, "open", read_only)
    assert main([a.replace("{ro}", str(ro)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ro) in err[0] and "lock file" in err[0], err
    assert list(ro.iterdir()) == []


def _run_folder(tmp_path):
    """A pretrain run's folder: config.yaml, checkpoints/ with a step checkpoint."""
    run = tmp_path / "runs" / "pt"
    (run / "checkpoints" / "step_10").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    (run / "checkpoints" / "step_10" / "state.pt").write_bytes(b"x")
    (run / "checkpoints" / "step_10" / "model.safetensors").write_bytes(b"x")
    return run


def test_refuse_in_checkpoints_names_the_path_and_allows_the_run_folder(tmp_path):
    from tgmae.locks import RunFolderError, refuse_in_checkpoints

    run = _run_folder(tmp_path)
    for p in (run / "checkpoints", run / "checkpoints" / "new", run / "checkpoints" / "step_10" / "a.json"):
        with pytest.raises(RunFolderError, match=rf"^{p} \(--out\): .*checkpoints"):
            refuse_in_checkpoints(p, "--out")
    for p in (run, run / "eval", tmp_path / "other"):
        refuse_in_checkpoints(p, "--out")


@pytest.mark.parametrize("command", ["masks", "masks-merge", "caption", "embed-captions", "evaluate", "retrieve"])
def test_each_writer_refuses_a_run_or_its_checkpoints_naming_it(tmp_path, capsys, command):
    """issue 28: `masks --out runs/pt/checkpoints` (and caption, embed-captions, evaluate and retrieve
    outputs in a run's checkpoints/) wrote there, exit 0; now one line naming the folder, exit 2,
    before any work. masks refuses the run folder itself too; evaluate / retrieve may write beside a run."""
    from tgmae.cli import main

    run = _run_folder(tmp_path)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    (tmp_path / "a.csv").write_text("path,label\nv.mp4,0\n")
    ckpt = run / "checkpoints"
    outs = {"masks": [run, ckpt], "masks-merge": [run, ckpt], "caption": [ckpt / "c.jsonl"],
            "embed-captions": [ckpt / "c.safetensors", ckpt / "step_10" / "c.safetensors"],
            "evaluate": [ckpt, ckpt / "step_10"], "retrieve": [ckpt, ckpt / "step_10"]}[command]
    for out in outs:
        argv = {
            "masks": ["masks", "--format", "csv", "--root", str(tmp_path), "a.csv", "--captions", "c.jsonl",
                      "--clip", "clip", "--out", str(out)],
            "masks-merge": ["masks", "a.csv", "--captions", "c.jsonl", "--clip", "clip", "--merge-only",
                            "--out", str(out)],
            "caption": ["caption", "--format", "csv", "--root", str(tmp_path), "a.csv", "--oracle", "--out", str(out)],
            "embed-captions": ["embed-captions", "--captions", "c.jsonl", "--clip", "clip", "--out", str(out)],
            "evaluate": ["evaluate", f"train.output_dir={out}", "model.pretrained=x.safetensors"],
            "retrieve": ["retrieve", f"train.output_dir={out}", "model.pretrained=x.safetensors"],
        }[command]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{out} (" in err[0] and "run" in err[0], err
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    if command in ("evaluate", "retrieve"):  # the run folder itself: no refusal of it (the classifier is missing)
        assert main([command, f"train.output_dir={run}", "model.pretrained=x.safetensors"]) == 2
        assert "checkpoints" not in capsys.readouterr().err


def test_holds_extraction_knows_an_extract_folder_not_a_similarity_cache(tmp_path):
    """Issue 29: an extraction folder is its own kind: its manifest (settings, videos, shards) or shards."""
    from tgmae.locks import holds_extraction

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "manifest.json").write_text(json.dumps({"spec": {}, "video_ids": [], "num_shards": 1}))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps({"clip": "ViT-B/16"}))  # a masks cache
    assert holds_extraction(tmp_path / "x") and not holds_extraction(tmp_path / "cache")
    assert not holds_extraction(tmp_path / "none")


def test_an_empty_lock_record_is_read_again_before_the_refusal(tmp_path, monkeypatch):
    """Issue 28 (re-trial 10): two `caption --out cc2.jsonl` started together; the second said 'in use
    by another run (pid ? on ?, started ?: ?)': the holder takes the flock, then writes its record.
    An empty record is read again, a bounded few times, before the refusal names the holder."""
    import fcntl

    from tgmae import locks

    store = tmp_path / "s.jsonl"
    fd = os.open(lock_file(store), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    record = {"pid": 4242, "host": "elsewhere", "command": "tgmae caption --out s.jsonl", "started": "then"}
    naps = []

    def nap(s):  # the holder writes its record while the refuser waits
        naps.append(s)
        if len(naps) == 2:
            os.write(fd, json.dumps(record).encode())

    monkeypatch.setattr(locks.time, "sleep", nap)
    try:
        with pytest.raises(LockError) as e:
            acquire(store, "--out")
        assert "pid 4242 on elsewhere" in str(e.value) and len(naps) == 2 and sum(naps) < 0.5
        naps.clear()
        os.ftruncate(fd, 0)
        naps.append("written")  # never writes again: refused after a bounded wait, naming what it knows
        with pytest.raises(LockError) as e:
            acquire(store, "--out")
        assert str(lock_file(store)) in str(e.value) and 1 < len(naps) < 100 and sum(naps[1:]) < 0.5
    finally:
        os.close(fd)


def test_a_holder_record_masks_secret_option_values(tmp_path, monkeypatch):
    """Re-trial 19A (leak): `describe-classes --api-key K` wrote K into its world-readable lock file,
    and the next run's takeover line and any refusal printed it."""
    import json

    from tgmae.locks import hold, lock_file, masked_command

    argv = ["/usr/bin/tgmae", "describe-classes", "--api-key", "SECRET1", "--model", "m", "--auth-token=SECRET2",
            "--out", "x.json"]
    assert masked_command(argv) == "tgmae describe-classes --api-key *** --model m --auth-token=*** --out x.json"
    monkeypatch.setattr("sys.argv", argv)
    with hold(tmp_path / "out.json", "--out", folder=False):
        text = lock_file(tmp_path / "out.json").read_text()
    assert "SECRET" not in text and "--api-key ***" in json.loads(text)["command"]


def test_run_files_name_what_a_fresh_run_would_replace(tmp_path):
    """`run_files`: weights, results, a metrics.jsonl with records and step folders count (config.yaml
    named beside them); a run stopped before its first logged step holds nothing of worth."""
    from tgmae.locks import RunFolderError, refuse_holding_run, run_files

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("train: {}\n")
    (run / "metrics.jsonl").write_text("")
    assert run_files(run) == []
    refuse_holding_run(run, "train.output_dir", "x")  # nothing to refuse
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "checkpoints" / "step_00000001").mkdir()
    (run / "model.safetensors").write_bytes(b"w")
    assert run_files(run) == ["config.yaml", "model.safetensors", "metrics.jsonl", "1 step folder in checkpoints/"]
    with pytest.raises(RunFolderError, match=r"run \(train.output_dir\): holds a run \(config.yaml, model"):
        refuse_holding_run(run, "train.output_dir", "has no checkpoint")


def stopped_run(folder: Path, marker: bool = True) -> dict[str, bytes]:
    """The folder of a run killed before its first checkpoint (a pretraining's: config.yaml, its loss
    records, the `NO_CHECKPOINT_YET` marker; marker=False: one written before runs wrote it);
    returns its files' contents, for the check that a refusal left them as they were."""
    from tgmae.config import RunConfig, save_config
    from tgmae.locks import NO_CHECKPOINT_YET

    folder.mkdir(parents=True)
    save_config(RunConfig(), folder / "config.yaml")
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss_mse": 0.9}\n')
    if marker:
        (folder / NO_CHECKPOINT_YET).write_text("this run has written no checkpoint yet\n")
    return files_of(folder)


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative name -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_stopped_before_its_first_checkpoint_is_refused_to_writers_outside_the_loop(tmp_path):
    """Re-trial 32A S4: `stopped_run_files` sees a run killed before its first checkpoint (its
    metrics records beside the marker, or beside config.yaml alone when written before the marker);
    a run with a step folder, results beside no marker, or no records yet is not one."""
    from tgmae.locks import NO_CHECKPOINT_YET, RunFolderError, refuse_stopped_run, stopped_run_files

    run = tmp_path / "pk"
    kept = stopped_run(run)
    assert stopped_run_files(run) == ["config.yaml", "metrics.jsonl"]
    with pytest.raises(RunFolderError, match=rf"^{run} \(train.output_dir\): holds a run \(config.yaml, metrics.jsonl\) "
                       rf"that stopped before its first checkpoint \({NO_CHECKPOINT_YET}\).*not a k-NN probe;") as e:
        refuse_stopped_run(run, "train.output_dir", "a k-NN probe")
    assert "\n" not in str(e.value) and files_of(run) == kept
    (run / "probe_results.json").write_text("{}")  # results written beside it before this fix: still its folder
    assert stopped_run_files(run) == ["config.yaml", "probe_results.json", "metrics.jsonl"]
    stopped_run(tmp_path / "old", marker=False)
    assert stopped_run_files(tmp_path / "old") == ["config.yaml", "metrics.jsonl"]
    finished = tmp_path / "ft"  # checkpoints/ deleted to free disk: results beside the run, no marker
    stopped_run(finished, marker=False)
    (finished / "finetune_results.json").write_text("{}")
    stopped_run(tmp_path / "ck")
    (tmp_path / "ck" / "checkpoints" / "step_1").mkdir(parents=True)  # killed between its save and the unlink
    for other in (finished, tmp_path / "ck", tmp_path / "none"):
        assert stopped_run_files(other) == []
        refuse_stopped_run(other, "train.output_dir", "evaluate")
    (run / "metrics.jsonl").write_text("")  # stopped before its first logged step: nothing of worth
    assert stopped_run_files(run) == []


@pytest.mark.parametrize("command", ["evaluate", "retrieve"])
@pytest.mark.parametrize("marker", [True, False])
def test_evaluate_and_retrieve_refuse_a_run_stopped_before_its_first_checkpoint(tmp_path, capsys, command, marker):
    """Re-trial 32A S4: results that belong beside a run were written beside a killed run's metrics
    and marker (it has no weights they could be of), and its rerun, which starts it afresh, beside
    them; now one line naming the folder and what it holds, exit 2, nothing written."""
    from tgmae.cli import main

    run = tmp_path / "pk"
    kept = stopped_run(run, marker)
    assert main([command, f"train.output_dir={run}", "model.pretrained=x.safetensors"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tgmae {command}: {run} (train.output_dir): holds a run"), err
    assert f"stopped before its first checkpoint (.no_checkpoint_yet): only a rerun of its own command " \
           f"continues it, not {command}" in err[0]
    assert files_of(run) == kept


def test_the_folders_made_for_a_lock_go_with_it_unless_the_run_wrote_into_them(tmp_path):
    """Re-trial 25 L2: `export-hf ... full/p/q/hf` (also visualize, extract, probe, retrieve) on a full
    disk left full/p and full/p/q, made to hold the output's lock file: an empty output tree that
    looked started. The last release removes the folders made for the lock while they are empty."""
    failed = tmp_path / "p" / "q" / "hf"
    with pytest.raises(OSError):
        with hold(failed, "--out"):
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []
    done = tmp_path / "a" / "b" / "out"
    with hold(done, "--out"):
        with hold(done, "--out"):  # re-entrant: the inner release keeps them
            pass
        assert lock_file(done).exists()
        done.mkdir()
    assert done.is_dir() and not lock_file(done).exists()
