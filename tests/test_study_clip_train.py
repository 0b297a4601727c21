"""`tgmae train-clip`'s output folder and settings (issue #28): a run's folder, the synthetic set
or any other non-empty folder is never written over without --overwrite, and a schedule without
steps is refused before anything is written."""

from __future__ import annotations

import pytest

from tgmae.cli import main as cli_main


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny synthetic set: what train-clip would train on if the refusals let it."""
    from tgmae.data.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("synth"), num_videos=8, frames=8, size=32).root


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_steps_below_one_are_refused_before_writing(root, tmp_path, capsys):
    out = tmp_path / "clip"
    assert cli_main(["train-clip", "--root", str(root), "--out", str(out), "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "steps" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_holding_a_run_is_refused(root, tmp_path, capsys, overwrite):
    run = tmp_path / "runs" / "ptv"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("train: {}\n")
    (run / "model.safetensors").write_bytes(b"the run's encoder + decoder")
    before = _files(run)
    argv = ["train-clip", "--root", str(root), "--out", str(run), "--steps", "2"] + (["--overwrite"] if overwrite else [])
    assert cli_main(argv) == 2
    assert str(run) in capsys.readouterr().err
    assert _files(run) == before


def test_a_non_empty_folder_needs_overwrite_and_the_set_itself_is_refused(root, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert cli_main(["train-clip", "--root", str(root), "--out", str(mine), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert str(mine) in err and "--overwrite" in err
    assert _files(mine) == {(mine / "notes.txt").relative_to(mine): b"keep"}
    assert cli_main(["train-clip", "--root", str(root), "--out", str(root), "--steps", "2", "--overwrite"]) == 2
    assert str(root) in capsys.readouterr().err


@pytest.mark.parametrize("inside", ["checkpoints", "checkpoints/clip", "checkpoints/step_2"])
def test_a_folder_inside_a_run_is_refused_even_with_overwrite(root, tmp_path, capsys, inside):
    """Issue 28: `--out RUN/checkpoints --overwrite` wrote the CLIP among the run's checkpoints."""
    run = tmp_path / "runs" / "ptv"
    (run / "checkpoints" / "step_2").mkdir(parents=True)
    (run / "checkpoints" / "step_2" / "model.safetensors").write_bytes(b"the run's weights")
    (run / "checkpoints" / "step_2" / "state.pt").write_bytes(b"its state")
    (run / "checkpoints" / "latest").write_text("step_2")
    (run / "config.yaml").write_text("train: {}\n")
    before = _files(run)
    argv = ["train-clip", "--root", str(root), "--out", str(run / inside), "--steps", "2", "--overwrite"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run / inside) in err[0] and "--out" in err[0]
    assert _files(run) == before and (inside != "checkpoints/clip" or not (run / inside).exists())


def _train_clip_under_a_file_size_limit(root, out, *extra):
    """`tgmae train-clip` in a child process under `ulimit -f 4` (RLIMIT_FSIZE 4 KiB): config.json
    fits, the weights do not. Returns (exit code, stderr)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    argv = ["train-clip", "--root", str(root), "--out", str(out), "--steps", "1", "--width", "32", "--layers", "1",
            "--embed-dim", "16", "--image-size", "32", "--patch-size", "16", "--no-progress", *extra]
    code = ("import resource, sys\nfrom tgmae.cli import main\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))\n"
            f"sys.exit(main({argv!r}))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    return run.returncode, run.stderr


@pytest.mark.skipif(__import__("sys").platform != "linux", reason="RLIMIT_FSIZE is Linux's")
def test_a_save_that_fails_is_one_line_and_leaves_the_folder_as_it_was(root, tmp_path, capsys):
    """Issue 28 (re-trial 11, T2): under `ulimit -f 4` safetensors' `SafetensorError ... File too
    large (os error 27)` was a traceback, and --out kept only config.json, so the retry was refused
    as "not empty". Now one line naming --out (exit 2); the CLIP is written aside and moved in, so
    a fresh --out stays empty and an earlier CLIP under --overwrite stays whole."""
    fresh = tmp_path / "fresh"
    rc, err = _train_clip_under_a_file_size_limit(root, fresh)
    lines = [line for line in err.splitlines() if line.startswith("tgmae") or "Error" in line]
    assert rc == 2 and len(lines) == 1 and str(fresh) in lines[0] and "file too large" in lines[0], err[-2000:]
    assert not fresh.exists() or not any(fresh.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fresh.") and p.name.endswith(".tmp")]

    earlier = tmp_path / "earlier"
    small = ["--steps", "1", "--width", "32", "--layers", "1", "--embed-dim", "16", "--image-size", "32",
             "--patch-size", "16", "--no-progress"]
    assert cli_main(["train-clip", "--root", str(root), "--out", str(earlier), *small]) == 0
    before = _files(earlier)
    rc, err = _train_clip_under_a_file_size_limit(root, earlier, "--overwrite")
    assert rc == 2 and str(earlier) in err, err[-2000:]
    assert _files(earlier) == before


@pytest.mark.parametrize("image, patch", [(60, 8), (32, 0), (0, 8), (32, 64)])
def test_an_image_size_the_patch_does_not_tile_is_refused_at_set_up(root, tmp_path, capsys, image, patch):
    """Issue 28 (re-trial 18, B1): `--image-size 60 --patch-size 8` trained anyway (or failed
    later); one line naming both flags, before anything is written."""
    out = tmp_path / "clip"
    argv = ["train-clip", "--root", str(root), "--out", str(out), "--steps", "1",
            "--image-size", str(image), "--patch-size", str(patch), "--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--image-size" in err[0] and "--patch-size" in err[0], err
    assert not out.exists() or not any(out.iterdir())
