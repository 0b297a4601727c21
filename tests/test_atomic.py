"""Atomic writes (`tgmae.atomic`): the target holds the old or the new content, never a part."""

import errno
from pathlib import Path

import pytest

from tgmae.atomic import (WRITE_ERRNOS, OutputError, atomic_path, atomic_write_bytes, atomic_write_text, found_output,
                          write_failure)
from tgmae.errors import UserError


def test_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.txt"  # the folder is created
    atomic_write_text(target, "one\n")
    atomic_write_text(target, "twø\n", fsync=True)
    assert target.read_text(encoding="utf-8") == "twø\n"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.bin", "sub"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".a.json.") and tmp.name.endswith(".tmp")
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_temp_names_differ_per_call(tmp_path):
    with atomic_path(tmp_path / "x") as a, atomic_path(tmp_path / "x") as b:
        assert a != b  # two threads writing one file never share a temp file
        a.write_text("a")
        b.write_text("b")
    assert (tmp_path / "x").read_text() == "a"  # b is renamed first, then a: the last rename wins


# ------------------------------------------------- full disks and folders that cannot be written
def _unwritable_folder() -> Path:
    """/sys refuses new files even to root (a read-only folder we need not make); skip elsewhere."""
    folder = Path("/sys/tgmae_test_out")
    try:
        folder.mkdir()
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            return folder
    pytest.skip("no folder here refuses writes")


def test_a_folder_that_cannot_be_written_is_an_output_error_naming_the_file():
    target = _unwritable_folder() / "results.json"
    with pytest.raises(OutputError, match=rf"^{target}: operation not permitted|^{target}: permission denied") as e:
        atomic_write_text(target, "{}")
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)


def test_a_full_disk_inside_an_atomic_write_names_the_target_and_leaves_no_temp_file(tmp_path):
    """/dev/full fails every write with ENOSPC, as a full disk does."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    target = tmp_path / "model.safetensors"
    with pytest.raises(OutputError, match=rf"^{target}: no space left on device; free some space"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            with open("/dev/full", "w") as full:
                full.write("x" * 10)
                full.flush()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_removes_the_folders_it_made_and_keeps_the_others(tmp_path):
    """Re-trial 24B L1: `tgmae report --out full/rep` and `tgmae convert SRC full/sub/c.safetensors`
    on a full disk left the empty folders they had made, which then looked like a started output.
    A failed write removes the folders it made while they are empty; folders that were there stay."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    (tmp_path / "there").mkdir()
    target = tmp_path / "there" / "new" / "deeper" / "results.json"
    with pytest.raises(OutputError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            with open("/dev/full", "w") as full:
                full.write("x" * 10)
                full.flush()
    assert [p.name for p in tmp_path.rglob("*")] == ["there"]


def test_other_errors_pass_through_unchanged(tmp_path):
    assert write_failure(ValueError("bug"), tmp_path / "x") is None
    assert write_failure(OSError(errno.ENOENT, "gone")) is None
    with pytest.raises(ValueError, match="bug"):
        with atomic_path(tmp_path / "x"):
            raise ValueError("bug")


def test_temps_of_a_killed_writer_are_removed_and_live_ones_kept(tmp_path, caplog):
    """issue 28: temp files of killed writes were never removed (650 MB in one trial)."""
    import logging
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    from tgmae.atomic import remove_stale_temps, temp_path

    code = textwrap.dedent(f"""
        import time
        from tgmae.atomic import atomic_path
        with atomic_path({str(tmp_path / 'big.u8')!r}) as tmp:
            tmp.write_bytes(b"x" * 1000)
            print(tmp, flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    killed = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    live = temp_path(tmp_path / "big.u8")  # this process's: alive
    live.write_bytes(b"y")
    other_host = tmp_path / f".big.u8.otherhost-{proc.pid}-0123abcd.tmp"  # cannot be checked: kept
    other_host.write_bytes(b"z")
    assert os.path.exists(killed)
    mine = temp_path(tmp_path / "step_00000003")  # a killed checkpoint's folder: the dead pid's name
    dead_dir = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{proc.pid}-"))
    dead_dir.mkdir()
    (dead_dir / "state.pt").write_bytes(b"s")
    with caplog.at_level(logging.INFO, logger="tgmae"):
        assert remove_stale_temps(tmp_path) == 2
    assert not os.path.exists(killed) and not dead_dir.exists() and live.exists() and other_host.exists()
    assert "removed 2 temp files of ended writers" in caplog.text and str(tmp_path) in caplog.text
    assert remove_stale_temps(tmp_path / "missing") == 0


@pytest.fixture
def umask():
    """Set the process umask for a test (restored after): `umask(0o022)`."""
    import os

    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def test_written_files_get_the_mode_a_plain_open_gives(tmp_path, umask):
    """issue 28: weights and shards came out 0600 (safetensors creates its file so), unlike every
    other file a run writes; an atomic write now leaves the mode `open()` would: 0666 minus the
    umask for a new file, the old file's mode when it replaces one."""
    import stat

    from safetensors.torch import save_file
    import torch

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    for mask, want in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        umask(mask)
        weights = tmp_path / f"w{mask:o}.safetensors"
        with atomic_path(weights) as tmp:
            save_file({"a": torch.zeros(2)}, str(tmp))
        assert mode(weights) == want, (oct(mask), oct(mode(weights)))
        atomic_write_text(tmp_path / f"t{mask:o}.txt", "x")
        assert mode(tmp_path / f"t{mask:o}.txt") == want
    umask(0o022)
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    kept.chmod(0o640)
    atomic_write_text(kept, "new")
    assert kept.read_text() == "new" and mode(kept) == 0o640  # as open(path, "w") keeps it


def test_a_file_where_a_folder_should_be_is_an_output_error_naming_the_file(tmp_path):
    """issue 28: a write under a plain file (an output folder given as a file) ended in `File
    exists` / `Not a directory` tracebacks; it names the file in one line (also at the CLI's
    boundary, which applies write_failure to any OSError)."""
    from tgmae.atomic import check_writable

    plain = tmp_path / "plain"
    plain.write_text("x")
    for write in (lambda p: atomic_write_text(p, "{}"), check_writable):
        for target in (plain / "x.json", plain / "sub" / "x.json"):
            with pytest.raises(OutputError) as e:
                write(target)
            assert str(e.value) == f"{target}: {plain} is a file, not a folder; choose another path"
    with pytest.raises(FileExistsError) as raw:
        plain.mkdir(parents=True, exist_ok=True)
    assert str(write_failure(raw.value)) == f"{plain}: is a file, not a folder; choose another path"
    with pytest.raises(FileExistsError) as raw:
        tmp_path.mkdir()  # a folder that exists: a bug of the caller, not a file in the way
    assert write_failure(raw.value) is None
    assert plain.read_text() == "x"


def test_other_writers_errors_that_carry_a_write_errno_or_tell_a_full_disk(tmp_path, monkeypatch):
    """safetensors' SafetensorError and torch.save's RuntimeError are not OSErrors: the OS error
    code in safetensors' text, and torch's short write on a (nearly) full disk, still count."""
    import tgmae.atomic as atomic

    ro = RuntimeError("Error while serializing: I/O error: Read-only file system (os error 30)")
    assert str(write_failure(ro, tmp_path / "x")) == f"{tmp_path / 'x'}: read-only file system; choose a folder you can write to"
    debug = RuntimeError('IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    assert write_failure(debug, tmp_path / "x").errno == errno.ENOSPC
    assert write_failure(RuntimeError("(os error 2)"), tmp_path / "x") is None  # not a refused write
    torch_short = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    monkeypatch.setattr(atomic, "_free_bytes", lambda path: 8 << 20)  # nearly full: torch's buffers are larger
    assert write_failure(torch_short, tmp_path / "x").errno == errno.ENOSPC
    assert write_failure(RuntimeError("bug"), tmp_path / "x") is None
    monkeypatch.setattr(atomic, "_free_bytes", lambda path: 1 << 30)
    monkeypatch.setattr(atomic, "_file_size_limited", lambda: False)
    assert write_failure(torch_short, tmp_path / "x") is None
    monkeypatch.setattr(atomic, "_file_size_limited", lambda: True)  # `ulimit -f`: room, but files capped
    assert str(write_failure(torch_short, tmp_path / "x")) == f"{tmp_path / 'x'}: file too large; free some space or write elsewhere"
    assert write_failure(RuntimeError("bug"), tmp_path / "x") is None


def test_torchs_end_of_file_write_and_a_disk_without_a_temp_folder_are_refused_writes(tmp_path, monkeypatch):
    """Re-trial 29A T1: a full disk / `ulimit -f` hitting torch.save's last write (its end-of-file
    record) raised "basic_ios::clear: iostream error", not recognised: a traceback. 29A M3: with no
    byte writable, torch's cache-folder lookup failed in tempfile ("[Errno 2] No usable temporary
    directory found in [...]", folders that exist): said as what it is, with TMPDIR as a way out."""
    import tgmae.atomic as atomic

    end = RuntimeError("basic_ios::clear: iostream error")
    monkeypatch.setattr(atomic, "_free_bytes", lambda path: 1 << 30)
    monkeypatch.setattr(atomic, "_file_size_limited", lambda: True)
    assert str(write_failure(end, tmp_path / "x")) == f"{tmp_path / 'x'}: file too large; free some space or write elsewhere"
    no_temp = FileNotFoundError(errno.ENOENT, "No usable temporary directory found in ['/tmp', '/var/tmp']")
    said = str(write_failure(no_temp))
    assert said.startswith("no folder for temporary files could be written (file too large: "), said
    assert "['/tmp', '/var/tmp']" in said and said.endswith("free some space, or set TMPDIR to a folder you can write")
    monkeypatch.setattr(atomic, "_file_size_limited", lambda: False)
    assert write_failure(end, tmp_path / "x") is None  # room and no limit: not a refused write
    monkeypatch.setattr(atomic, "_free_bytes", lambda path: 0)
    assert "(no space left on device: " in str(write_failure(no_temp))
    monkeypatch.setattr(atomic, "_free_bytes", lambda path: 1 << 30)
    assert "(not writable: " in str(write_failure(no_temp))  # read-only folders
    assert write_failure(FileNotFoundError(errno.ENOENT, "No such file or directory")) is None


def test_found_output_tells_a_users_edit_from_the_writers_file(tmp_path):
    """The one check `tgmae synth` and `tgmae data prepare` make before replacing a list: a missing
    file is no edit, the writer's is none, other bytes or an unreadable path (a folder) are one."""
    ours = lambda data: data == b"ours\n"  # noqa: E731
    assert found_output(tmp_path / "missing.csv", ours) == (None, False)
    (tmp_path / "a.csv").write_bytes(b"ours\n")
    assert found_output(tmp_path / "a.csv", ours) == (b"ours\n", False)
    (tmp_path / "a.csv").write_bytes(b"mine\n")
    assert found_output(tmp_path / "a.csv", ours) == (b"mine\n", True)
    (tmp_path / "folder.csv").mkdir()
    assert found_output(tmp_path / "folder.csv", ours) == (None, True)
