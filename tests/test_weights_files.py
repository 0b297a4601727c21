"""`tgmae.weights.files.write_safetensors`: the one writer of our safetensors weights files."""

import errno
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from tgmae.atomic import OutputError, temp_path
from tgmae.weights.files import read_safetensors, write_safetensors


def test_a_read_only_folder_is_an_output_error_naming_the_file(tmp_path, monkeypatch):
    """`tgmae convert X /ro/x.safetensors` showed safetensors' own error (not an OSError) as a
    traceback: `SafetensorError: ... Read-only file system (os error 30)`."""
    import safetensors.torch
    from safetensors import SafetensorError

    def read_only(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: Read-only file system (os error 30)")

    monkeypatch.setattr(safetensors.torch, "save_file", read_only)
    target = tmp_path / "x.safetensors"
    with pytest.raises(OutputError, match=rf"^{target}: read-only file system; choose a folder you can write to$"):
        write_safetensors({"w": torch.zeros(2)}, target, {"format": "t"})
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_safetensors_is_an_output_error(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OutputError, match=r"x.safetensors: no space left on device; free some space") as e:
        write_safetensors({"w": torch.zeros(2)}, tmp_path / "x.safetensors", {})
    assert e.value.errno == errno.ENOSPC


def test_a_killed_write_leaves_nothing_the_next_write_does_not_remove(tmp_path):
    """safetensors' save_file writes its own `.tmpXXXXXX` (0600) beside the file, then renames: a
    kill -9 mid-write left it in the user's folder forever (1.2 GB). It now lives in our temp folder,
    which the next write into the folder removes (its writer's pid has ended)."""
    target = tmp_path / "model.safetensors"
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import safetensors.torch, torch
        from tgmae.weights.files import write_safetensors

        def killed(tensors, filename, metadata=None):  # as save_file does: its temp beside the file
            (Path(filename).parent / ".tmpAb12Cd").write_bytes(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)

        safetensors.torch.save_file = killed
        write_safetensors({{"w": torch.zeros(2)}}, {str(target)!r}, {{}})
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert target.name not in os.listdir(tmp_path) and len(os.listdir(tmp_path)) == 1  # the killed write's folder
    write_safetensors({"w": torch.ones(2)}, target, {"format": "t"})
    assert os.listdir(tmp_path) == ["model.safetensors"]
    state, meta = read_safetensors(target)
    assert torch.equal(state["w"], torch.ones(2)) and meta == {"format": "t"}


def test_a_stale_temp_folder_of_a_dead_writer_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    mine = temp_path(tmp_path / "model.safetensors")
    killed = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{dead}-"))
    killed.mkdir()
    (killed / ".tmpXyZ123").write_bytes(b"x" * 100)
    write_safetensors({"w": torch.zeros(2)}, tmp_path / "other.safetensors", {})
    assert os.listdir(tmp_path) == ["other.safetensors"]


def test_the_file_gets_the_mode_open_gives(tmp_path):
    old = os.umask(0o027)
    try:
        path = write_safetensors({"w": torch.zeros(2)}, tmp_path / "a.safetensors", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize("name", ["model.safetensors", "classifier.safetensors"])
def test_detect_format_names_the_file_of_a_tgmae_run_folder(tmp_path, name):
    """Issue #28 re-trial 11, M1: `tgmae convert RUN` / pretrain model.pretrained=RUN said "a directory
    without config.json is not a Hugging Face model": now it says the folder is a tgmae run and
    names the file to pass."""
    from tgmae.weights.files import CheckpointError, detect_format

    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(CheckpointError, match="tgmae run folder.*" + name.replace(".", r"\.")):
        detect_format(tmp_path)


def test_a_hub_id_as_a_checkpoint_says_weights_are_read_locally(tmp_path, monkeypatch, capsys):
    """Re-trial 16B: `model.pretrained=MCG-NJU/videomae-base` said only "checkpoint not found"; the
    line now says hub ids are not downloaded and how to pass one (a path keeps the plain message)."""
    from tgmae.cli import main as cli_main

    monkeypatch.chdir(tmp_path)
    assert cli_main(["evaluate", "model.pretrained=MCG-NJU/videomae-base", f"train.output_dir={tmp_path / 'e'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint not found: MCG-NJU/videomae-base" in err and "hub id" in err and "\n" not in err, err
    assert cli_main(["evaluate", f"model.pretrained={tmp_path / 'none.safetensors'}",
                     f"train.output_dir={tmp_path / 'e'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint not found" in err and "hub id" not in err, err


class _Code:
    """Pickles as a call of os.system (what a hostile .pth holds: `posix.system` on Linux)."""

    def __init__(self, flag):
        self.flag = str(flag)

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def _hostile(tmp_path, how: str):
    """A file whose pickle calls os.system: torch.save (zip / legacy) or a bare pickle (protocol 4)."""
    import pickle

    path, code = tmp_path / f"{how}.pth", _Code(tmp_path / "PWNED")
    obj = {"model": {"w": torch.zeros(2)}, "evil": code}
    if how == "raw":
        path.write_bytes(pickle.dumps(obj, protocol=4))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=how == "zip")
    return path


@pytest.mark.parametrize("how, named", [("zip", "posix.system"), ("legacy", "posix.system"),
                                        ("raw", "torch.storage._load_from_bytes, posix.system")])
def test_a_pth_with_pickled_code_names_the_global_not_torchs_advice(tmp_path, capsys, how, named):
    """Re-trial 31A M2: `tgmae convert evil.pth` passed on torch's UnpicklingError, cut mid-sentence and
    advising `weights_only=False` (no tgmae option). One line: the file holds objects other than tensors
    (the pickled global, from torch's refusal or read from the pickle's opcodes), tgmae reads weights only;
    nothing is run. A bare pickle's tensors are pickled globals too (torch cannot parse it: named from the scan)."""
    from tgmae.cli import main

    src = _hostile(tmp_path, how)
    assert main(["convert", str(src), str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err == (f"tgmae convert: {src}: holds pickled objects other than tensors and plain containers "
                   f"({named}); tgmae reads weights only and does not load them\n"), err
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "o.safetensors").exists()


def test_a_run_checkpoint_whose_state_holds_code_says_the_same(tmp_path):
    """Re-trial 31A M2, the other torch.load of a user's file: a step folder's state.pt (a resume, or
    `checkpoint.resume=PATH` naming a folder from elsewhere)."""
    from tgmae.weights.checkpoint import load_checkpoint, read_extra
    from tgmae.weights.files import CheckpointError

    step = tmp_path / "step_3"
    step.mkdir()
    write_safetensors({"w": torch.zeros(2)}, step / "model.safetensors", {"format": "t"})
    torch.save({"position": {"step": 3}, "evil": _Code(tmp_path / "PWNED")}, step / "state.pt")
    said = f"^{step / 'state.pt'}: holds pickled objects other than tensors and plain containers \\(posix.system\\)"
    for read in (load_checkpoint, read_extra):
        with pytest.raises(CheckpointError, match=said):
            read(step)
    assert not (tmp_path / "PWNED").exists()
