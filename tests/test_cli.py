"""The command table: every entry resolves, shows help, and errors are messages, not traces."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

from tgmae.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_resolves_to_a_callable(name):
    module, func = COMMANDS[name][0].split(":")
    assert callable(getattr(importlib.import_module(module), func))


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"data", "visualize"}))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_report_help_says_what_it_writes_in_whole_sentences(capsys):
    """`tgmae report --help` ended mid-sentence ("... findings and figures from"): its description is
    the docstring's first paragraph, naming the files it writes."""
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "figures from finished study runs" in help_text and "report.md and report.html" in help_text


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"data", "visualize"}))  # those two list their tools
def test_every_commands_help_says_what_it_does_in_whole_sentences(command, capsys):
    """Most commands' --help gave their docstring's first line, which ended mid-sentence ("...
    Recall@K with the"): `commands.args.Parser` takes the first paragraph."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    description = " ".join(out.split("\n\n")[1].split())
    assert description.endswith((".", ".)")), description


def test_top_level_help_and_unknown_command(capsys):
    assert main([]) == 0
    assert "pretrain" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_config_error_is_a_message(capsys):
    assert main(["pretrain", "masking.ratio=1.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tgmae pretrain: config error: masking.ratio=1.5")


@pytest.mark.parametrize("name", ["TGMAE_AUTOTUNE", "TGMAE_DEBUG"])
def test_a_switch_of_no_known_value_is_refused_before_the_command_runs(name, capsys, monkeypatch):
    """Re-trial 26B M5: `TGMAE_AUTOTUNE=bogus tgmae pretrain ...` measured as if it were on, with no
    word (and TGMAE_DEBUG, read only when an error is reported, ignored a typo alike). Every
    command refuses it in one line naming the variable and its values, exit 2, before it runs."""
    monkeypatch.setenv(name, "bogus")
    assert main(["config", "show"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"tgmae config show: {name}='bogus': expected on or off (1/0, true/false, yes/no)\n")


# ------------------------------------------------------------------ bad input: one line, exit 2
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny synthetic set, a config for it and a pretraining model file."""
    import torch
    import yaml

    from tgmae.captions.tiny import save_tiny_clip
    from tgmae.data.synthetic import generate_synthetic_dataset
    from tgmae.models import VideoMAEArch, VideoMAEPretrainer
    from tgmae.weights.pretraining import save_pretraining_model

    root = tmp_path_factory.mktemp("cli")
    generate_synthetic_dataset(root / "synth", num_videos=14, frames=12, size=32, gop=6, seed=4, val_fraction=0.3)
    config = {"data": {"format": "csv", "root": str(root / "synth"), "train_annotations": "train.csv",
                       "val_annotations": "val.csv", "num_frames": 4, "frame_stride": 2, "image_size": 64,
                       "num_workers": 0},
              "model": {"patch_size": 8, "preset": "tiny"},
              "train": {"batch_size": 2, "epochs": 1, "precision": "fp32", "device": "cpu",
                        "output_dir": str(root / "run")},
              "log": {"progress": False, "tensorboard": False}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(config))
    save_tiny_clip(root / "clip", dim=16)
    torch.manual_seed(0)
    arch = VideoMAEArch(embed_dim=32, depth=1, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4,
                        image_size=32, decoder_dim=16, decoder_depth=1, decoder_heads=1)
    model = save_pretraining_model(VideoMAEPretrainer(arch), root / "pt.safetensors")
    return root, str(root / "cfg.yaml"), model


def _fails(capsys, argv, *expected):
    """`tgmae ARGV` exits 2 with one line naming what is wrong."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err, err
    line = err.splitlines()[-1]  # (a model load may print progress bars before it)
    assert line.startswith(f"tgmae {argv[0]}"), err
    for text in expected:
        assert text in line, (text, err)
    return line


def test_bad_input_is_one_line_and_exit_2(data, capsys, tmp_path):
    root, cfg, model = data
    out = f"train.output_dir={tmp_path / 'out'}"
    _fails(capsys, ["pretrain", "-c", cfg, out, "masking.name=bogus"], "tgmae pretrain: config error: masking.name='bogus': expected one of random, tube, tgm, mgm")
    _fails(capsys, ["pretrain", "-c", cfg, out, "model.preset=bogus"], "model.preset='bogus': expected one of micro, tiny, small, base, large")
    # contrastive settings that used to pass the config and fail at step 1 (or later) with a traceback
    joint = ["contrastive.objective=mae+contrastive", f"captions.file={tmp_path / 'c.jsonl'}", "masking.ratio=0.5"]
    for command in (["pretrain", "-c", cfg, out], ["config", "show", "-c", cfg]):
        _fails(capsys, command + joint + ["contrastive.view_ratio=0.75"], "contrastive.view_ratio=0.75 masks",
               "masking.ratio=0.5", "MASKED fraction of the InfoNCE view (0 = whole clip)")
        _fails(capsys, command + joint + ["contrastive.weight=-1"], "contrastive.weight=-1.0: must be >= 0")
    _fails(capsys, ["pretrain", "-c", cfg, out, "data.train_annotations=nope.csv"],
           "nope.csv: annotation file or folder not found", str(root / "synth" / "nope.csv"))
    _fails(capsys, ["pretrain", "-c", cfg, out, f"captions.file={tmp_path / 'nope.jsonl'}"],
           f"caption file not found: {tmp_path / 'nope.jsonl'}")
    _fails(capsys, ["pretrain", "-c", cfg, out, "masking.name=tgm", f"masking.cache_dir={tmp_path / 'nope'}",
                    f"captions.file={root / 'synth' / 'captions.jsonl'}", f"captions.clip_model={root / 'clip'}",
                    f"captions.embedding_cache={tmp_path / 'emb.safetensors'}", "contrastive.proj_dim=16"],
           f"{tmp_path / 'nope'} is not a similarity cache")
    missing = tmp_path / "nope.safetensors"
    for command in ("probe", "finetune", "evaluate", "retrieve", "pretrain"):
        _fails(capsys, [command, "-c", cfg, out, f"model.pretrained={missing}"], f"checkpoint not found: {missing}")
    for argv in (["visualize", "recon", str(missing), "-c", cfg], ["visualize", "attention", str(missing), "-c", cfg],
                 ["export-hf", str(missing), str(tmp_path / "hf")], ["convert", str(missing), str(tmp_path / "o.safetensors")]):
        _fails(capsys, argv, f"checkpoint not found: {missing}")
    _fails(capsys, ["pretrain", "-c", cfg, out, "train.batch_size=64"], "too few for train.batch_size=64")
    _fails(capsys, ["export-hf", str(model), str(tmp_path / "hfc"), "--classifier"], "not a finetuned classifier")
    _fails(capsys, ["evaluate", "-c", cfg, out, f"model.pretrained={model}"],
           "not a finetuned classifier", "classifier.safetensors of a `tgmae finetune` run")
    _fails(capsys, ["data", "check", "--format", "csv", "--root", str(tmp_path / "nope"), "val.csv"],
           f"data root {tmp_path / 'nope'}: no such folder")
    err = _fails(capsys, ["data", "check", "--format", "csv", "--root", str(root / "synth"), "synth/nope.csv"],
                 "tgmae data check: synth/nope.csv: annotation file or folder not found")
    assert "synth/synth/nope.csv and" not in err  # the path as given comes first, not the root joined twice


def test_cuda_without_cuda_is_a_message(data, capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _fails(capsys, ["pretrain", "-c", data[1], f"train.output_dir={tmp_path}", "train.device=cuda"],
           "train.device='cuda' but CUDA is not available", "train.device=cpu")
    _fails(capsys, ["pretrain", "-c", data[1], f"train.output_dir={tmp_path}", "train.precision=fp16"],
           "train.precision='fp16' needs a CUDA device")


def test_a_missing_local_model_folder_is_named_at_once(data, capsys, tmp_path, monkeypatch):
    root = data[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # `runs/clip`: a path here (its folder exists), not a hub id
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the path check comes before any hub call
    _fails(capsys, ["masks", "--format", "csv", "--root", str(root / "synth"), "annotations.csv", "--captions",
                    str(root / "synth" / "captions.jsonl"), "--clip", "runs/clip", "--out", str(tmp_path / "c")],
           "'runs/clip': no such file or directory")


def test_visualize_masks_without_clip_works_offline(data, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    png = tmp_path / "m.png"
    assert main(["visualize", "masks", "--root", str(data[0] / "synth"), "--out", str(png), "--image-size", "32",
                 "--num-frames", "4"]) == 0
    assert png.is_file()


def test_data_help(capsys):
    assert main(["data", "--help"]) == 0
    out = capsys.readouterr().out
    assert "tgmae data check" in out and "check" in out.split("tools:")[1]
    assert main(["data"]) == 2


@pytest.mark.parametrize("kind", ["recon", "attention"])
def test_visualize_takes_overrides_after_the_config(data, kind, tmp_path, capsys):
    # the config says image_size 64; the override after `-c` (after the checkpoint) makes it 32
    root, cfg, model = data
    out = tmp_path / "fig"
    assert main(["visualize", kind, str(model), "-c", cfg, "data.image_size=32", "--out", str(out)]) == 0
    assert any(out.glob("*.png"))
    _fails(capsys, ["visualize", kind, str(model), "-c", cfg, "data.image_size=oops"],
           "config error: data.image_size")


def test_stale_or_foreign_caches_stop_training_with_one_line(data, capsys, tmp_path):
    """A text-embedding cache built with other weights of the same CLIP folder, or with another
    CLIP folder, and a similarity cache of other weights: exit 2 with the way out, no traceback."""
    import shutil

    from tgmae.captions.embed import embed_texts
    from tgmae.captions.tiny import save_tiny_clip
    from tgmae.masking.cache import CacheManifest, write_manifest_or_check

    root, cfg, _ = data
    clip = tmp_path / "clip"
    shutil.copytree(root / "clip", clip)
    cache = tmp_path / "emb.safetensors"
    embed_texts(["a red square"], str(clip), cache)
    save_tiny_clip(clip, dim=16, seed=1)  # new weights into the same folder
    run = ["pretrain", "-c", cfg, f"train.output_dir={tmp_path / 'out'}", "masking.name=tgm",
           f"captions.file={root / 'synth' / 'captions.jsonl'}", f"captions.embedding_cache={cache}"]
    _fails(capsys, run + [f"captions.clip_model={clip}", f"masking.clip_model={clip}"], "stale", "--rebuild")
    other = tmp_path / "emb_other.safetensors"
    embed_texts(["a red square"], str(clip), other)  # the new weights: another CLIP than root/clip's
    run[-1] = f"captions.embedding_cache={other}"
    _fails(capsys, run + [f"captions.clip_model={root / 'clip'}", f"masking.clip_model={root / 'clip'}"],
           str(other), "--rebuild")  # another folder and weights (the same files elsewhere: one model)
    sims = tmp_path / "sims"
    write_manifest_or_check(sims, CacheManifest(str(clip.resolve()), "0" * 16, "dense", "", "", 2, 64, 8, 1, None, 16))
    _fails(capsys, ["pretrain", "-c", cfg, f"train.output_dir={tmp_path / 'out'}", "masking.name=tgm",
                    f"captions.file={root / 'synth' / 'captions.jsonl'}", f"masking.clip_model={clip}",
                    f"masking.cache_dir={sims}"], "other weights of CLIP", "--rebuild")


def test_checkpoint_pointer_and_geometry_everywhere_a_checkpoint_meets_a_config(data, capsys, tmp_path):
    """`checkpoints/latest` is followed by every loader; a config whose geometry differs from the
    checkpoint's is refused by evaluate and visualize as by probe/finetune/pretrain."""
    import torch

    from tgmae.config import load_config, to_dict
    from tgmae.weights.classifier import build_classifier, save_classifier
    from tgmae.models import build_pretraining_model
    from tgmae.weights.checkpoint import TrainPosition, save_checkpoint

    root, cfg, model = data
    run_cfg = load_config(cfg, [])
    pt = build_pretraining_model(run_cfg.model, 4, 64)
    ckpts = tmp_path / "run" / "checkpoints"
    save_checkpoint(ckpts, pt, torch.optim.SGD(pt.parameters(), lr=0.1), None, TrainPosition(2, 1, 0), to_dict(run_cfg))
    out = f"train.output_dir={tmp_path / 'out'}"
    latest = f"model.pretrained={ckpts / 'latest'}"
    _fails(capsys, ["evaluate", "-c", cfg, out, latest], "not a finetuned classifier")
    err = _fails(capsys, ["retrieve", "-c", cfg, out, latest], "no contrastive video head")
    assert err.count("model.safetensors") == 1  # the checkpoint is named once
    assert main(["probe", "-c", cfg, out, latest, "train.epochs=1"]) == 0
    clf = save_classifier(build_classifier(model, 3), tmp_path / "classifier.safetensors", ["a", "b", "c"])
    for key in ("model.tubelet_size=4", "model.patch_size=16"):
        _fails(capsys, ["evaluate", "-c", cfg, out, f"model.pretrained={clf}", key], f"{key} but the checkpoint")
    _fails(capsys, ["visualize", "recon", str(ckpts / "latest"), "-c", cfg, "model.tubelet_size=4"],
           "model.tubelet_size=4 but the checkpoint")
    _fails(capsys, ["visualize", "attention", str(model), "-c", cfg, "model.patch_size=16"],
           "model.patch_size=16 but the checkpoint")


def test_index_device_and_encoding_mistakes_are_one_line(data, capsys, tmp_path):
    """`visualize --index` past the set, `embed-captions --device` this machine cannot use, and a
    config file that is not UTF-8 text: exit 2 with one line, not an IndexError / RuntimeError /
    UnicodeDecodeError traceback."""
    root, cfg, model = data
    val = sum(1 for _ in open(root / "synth" / "val.csv")) - 1
    for kind in ("recon", "attention"):
        for index in (val, -1):
            _fails(capsys, ["visualize", kind, str(model), "-c", cfg, "data.image_size=32", "--index", str(index)],
                   f"--index {index}: the val set has {val} clip(s): use 0 to {val - 1}")
    (root / "captions.jsonl").write_text('{"video_id": "a", "captions": ["a red square"]}\n')
    for device in ("mps", "meta", "cuda:x"):
        _fails(capsys, ["embed-captions", "--captions", str(root / "captions.jsonl"), "--clip", str(root / "clip"),
                        "--out", str(tmp_path / "e.safetensors"), "--device", device], f"--device {device}")
    assert not (tmp_path / "e.safetensors").exists()
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00train:")
    for argv in (["pretrain", "-c", str(binary)], ["study", "-c", str(binary)]):
        _fails(capsys, argv, f"{binary}:1: not UTF-8 (byte 0xff at column 1); save it as UTF-8")
    _fails(capsys, ["pretrain", "-c", str(tmp_path)], "config file not found", "(a directory)")


def _unwritable() -> str:
    """A folder that refuses new files even to root (/sys); the test is skipped where none is."""
    from pathlib import Path

    try:
        Path("/sys/tgmae_cli_test").mkdir()
    except OSError:
        return "/sys/tgmae_cli_test"
    pytest.skip("no folder here refuses writes")


def test_every_writer_names_the_path_it_cannot_write(data, capsys, tmp_path):
    """Full disks and read-only folders (issue 28): every writer gives one line naming the path,
    exit 2 (`atomic.write_failure` at the one boundary)."""
    root, cfg, model = data
    bad = _unwritable()
    synth, clip = root / "synth", root / "clip"
    captions = str(synth / "captions.jsonl")
    from tgmae.models.classifier import VideoClassifier, classifier_arch
    from tgmae.weights.classifier import save_classifier
    from tgmae.weights.sources import load_encoder_source

    names = (synth / "classes.txt").read_text().splitlines()
    clf = save_classifier(VideoClassifier(classifier_arch(load_encoder_source(model).arch), len(names)),
                          tmp_path / "clf.safetensors", names)
    commands = [
        ["evaluate", "-c", cfg, "data.image_size=32", f"model.pretrained={clf}", f"train.output_dir={bad}/ev"],
        ["synth", f"{bad}/set", "--num-videos", "2", "--frames", "8", "--size", "32"],
        ["pretrain", "-c", cfg, f"train.output_dir={bad}/run"],
        ["pretrain", "-c", cfg, f"train.output_dir={tmp_path / 'run'}", "data.cache=disk", f"data.cache_dir={bad}/c"],
        ["caption", "--format", "csv", "--root", str(synth), "--oracle", "--out", f"{bad}/c.jsonl", "train.csv"],
        ["masks", "--format", "csv", "--root", str(synth), "train.csv", "--captions", captions, "--clip", str(clip),
         "--out", f"{bad}/maps", "--image-size", "32", "--patch-size", "8", "--no-progress"],
        ["embed-captions", "--captions", captions, "--clip", str(clip), "--out", f"{bad}/e.safetensors",
         "--no-progress"],
        ["export-hf", str(model), f"{bad}/hf"],
        ["visualize", "attention", str(model), "-c", cfg, "--out", f"{bad}/fig", "--subset", "train"],
        ["data", "check", "--format", "csv", "--root", str(synth), "train.csv", "--out", f"{bad}/r.json"],
    ]
    for argv in commands:
        line = _fails(capsys, argv, bad).lower()
        assert "operation not permitted" in line or "permission denied" in line or "read-only" in line, line


@pytest.mark.parametrize("error, line", [
    ("masking.ratio=2", "tgmae pretrain: config error: masking.ratio"),
    ("data.train_annotations=nope.csv", "tgmae pretrain: nope.csv: annotation file or folder not found")])
def test_under_torchrun_the_ranks_that_wait_for_rank_0_are_stopped_silently(tmp_path, error, line):
    """Re-trial 25 T1 (a regression of the SIGTERM handling): rank 1, waiting for rank 0 to print a
    config error, got torchrun's SIGTERM as `lifetime.Terminated` inside the error handling and
    printed a traceback repeating the message. The wait restores SIGTERM's default: rank 1 ends by
    the signal (-15 in torchrun's summary), and the one line is rank 0's. Re-trial 26A M2: an input
    error found later (a missing annotation file) was printed by every rank: another rank now
    waits for rank 0 before printing any error."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "tgmae.cli",
                           "pretrain", error, "train.device=cpu", f"train.output_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and out.count(line) == 1 and out.count("tgmae pretrain") == 1, out
    assert "tgmae.lifetime" not in out and "Terminated" not in out and "-15" in out, out


def test_under_torchrun_a_mistake_rank_0_did_not_make_is_printed_after_the_wait(capsys, monkeypatch):
    """Re-trial 26A M2: a rank's own mistake (rank 0 runs on: torchrun does not stop the wait) is
    printed after the wait for rank 0, naming the rank; rank 0 prints at once."""
    import time

    from tgmae.errors import UserError
    from tgmae.lifetime import RANK0_GRACE_S

    def failing(rest):
        raise UserError("videos/x.mp4: cannot be read")

    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    monkeypatch.setattr(importlib.import_module("tgmae.commands.pretrain"), "main", failing)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, shown in (("1", "tgmae pretrain (rank 1): "), ("0", "tgmae pretrain: ")):
        monkeypatch.setenv("RANK", rank)
        assert main(["pretrain"]) == 2
        assert capsys.readouterr().err == f"{shown}videos/x.mp4: cannot be read\n"
    assert waits == [RANK0_GRACE_S]  # rank 1 only


@pytest.mark.parametrize("argv", [[command, "masking.ratio=2"] for command in ("pretrain", "finetune", "probe")])
def test_a_config_error_under_torchrun_is_printed_by_rank_0_alone(argv, capsys, rank0_waits, tmp_path):
    """Issue 28 (re-trial 18, B5): `torchrun --nproc_per_node=2 -m tgmae.cli pretrain masking.ratio=2`
    printed the one line once per rank (re-trial 26A M2, a missing annotation file, under a real
    torchrun: `test_under_torchrun_the_ranks_that_wait_for_rank_0_are_stopped_silently`). Rank 0
    prints it; another rank waits for rank 0 first (exiting first, it would have torchrun stop
    rank 0 before it prints), and torchrun stops it there."""
    from conftest import StoppedByTorchrun

    argv = [*argv, f"train.output_dir={tmp_path / 'run'}", "train.device=cpu"]
    rank0_waits(1)
    with pytest.raises(StoppedByTorchrun):
        main(argv)
    assert capsys.readouterr().err == ""
    rank0_waits(0)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "masking.ratio" in err[0], err


@pytest.mark.parametrize("argv", [["pretrain", "--no-such-flag"], ["masks", "--no-such-flag"],
                                  ["caption"], ["extract", "--no-such-flag"], ["config", "shw"]])
def test_a_usage_error_under_torchrun_is_printed_by_rank_0_alone(argv, capsys, rank0_waits):
    """Session 13's left item: argparse's usage error (an unknown flag, a missing argument) was
    printed by every torchrun rank. Every command's parser (`commands.args.Parser`) lets rank 0
    print it; another rank waits for rank 0 first, and torchrun stops it there."""
    from conftest import StoppedByTorchrun

    rank0_waits(1)
    with pytest.raises(StoppedByTorchrun):
        main(argv)
    assert capsys.readouterr().err == ""
    rank0_waits(0)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "error:" in capsys.readouterr().err


def test_every_command_parses_through_the_shared_parser():
    """One home for the usage-error rule: no command builds a bare argparse.ArgumentParser."""
    src = Path(__file__).resolve().parents[1] / "src" / "tgmae" / "commands"
    bare = [p.name for p in src.glob("*.py") if "argparse.ArgumentParser(" in p.read_text()]
    assert bare == [], bare


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """Re-trial 19A: `tgmae synth ... | head -1` ended in a BrokenPipeError traceback. The reader
    left: the command ends at once with the shell's SIGPIPE code and no traceback."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "tgmae.cli", "synth", str(tmp_path / "s"), "--num-videos", "12",
                             "--frames", "4", "--size", "32"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # as `head` does once it has its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err


@pytest.mark.parametrize("argv, shown", [(["data", "prepare", "--format", "csv"], "tgmae data prepare"),
                                         (["visualize", "masks"], "tgmae visualize masks"),
                                         (["data", "nope"], "tgmae data")])
def test_a_stop_line_names_the_tool_of_a_command_with_tools(argv, shown, capsys, monkeypatch):
    """Re-trial 25 M3: Ctrl-C in `tgmae data prepare` said "tgmae data: stopped". A command with
    tools (`TOOLS`: data, visualize, config) is named with the tool run, in stop and error lines."""
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]][0].split(":")[0])

    def interrupted(rest):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "main", interrupted)
    assert main(argv) == 130
    assert capsys.readouterr().err.strip() == (f"{shown}: stopped (SIGINT); what it finished is kept: "
                                               "rerun the same command to go on")


def test_a_stop_after_the_results_were_said_keeps_exit_0(capsys, monkeypatch):
    """Re-trial 29A M1: a Ctrl-C / SIGTERM 1-4 ms after `run directory: ...` (in the command's
    teardown: locks, DataLoader workers) made a finished pretrain / evaluate / probe exit 130 / 143,
    saying "rerun the same command to go on". Once `say` has printed the results, a stop ends it
    with 0 and no stop line; one before them is still a stop, and the next command starts unmarked."""
    import importlib

    from tgmae.commands.args import say
    from tgmae.lifetime import Terminated

    module = importlib.import_module("tgmae.commands.convert")

    def finished_then_stopped(rest):
        say("wrote out.safetensors")
        raise Terminated

    monkeypatch.setattr(module, "main", finished_then_stopped)
    assert main(["convert"]) == 0
    out, err = capsys.readouterr()
    assert out == "wrote out.safetensors\n" and "stopped" not in err, err

    def stopped(rest):
        raise Terminated

    monkeypatch.setattr(module, "main", stopped)
    assert main(["convert"]) == 143
    assert "tgmae convert: stopped (SIGTERM)" in capsys.readouterr().err


def test_a_stop_while_the_results_line_prints_keeps_exit_0(capsys, monkeypatch):
    """Re-trial 31A M1: `say` printed the results line, then marked it said; a SIGTERM landing
    inside the print (the line out, the mark not yet set) ended caption / masks / evaluate with 143
    and "rerun the same command to go on". Stops are held across the print and the mark: one that
    came meanwhile is one after the results (exit 0, no stop line)."""
    import signal

    import tgmae.commands.args as args_module

    module = importlib.import_module("tgmae.commands.convert")

    def print_then_stopped(*args, **kwargs):
        print(*args, **kwargs)  # the builtin: the line is out
        signal.raise_signal(signal.SIGTERM)  # the stop lands before `print` returns

    monkeypatch.setattr(args_module, "print", print_then_stopped, raising=False)
    monkeypatch.setattr(module, "main", lambda rest: args_module.say("9 videos, 9 captions -> out.jsonl"))
    assert main(["convert"]) == 0
    out, err = capsys.readouterr()
    assert out == "9 videos, 9 captions -> out.jsonl\n" and "stopped" not in err, err


def test_a_progress_bar_is_closed_before_the_stop_line(capsys, monkeypatch):
    """Re-trial 25 M3: a bar open when Ctrl-C came was drawn again at exit, below the stop line."""
    import importlib

    from tqdm import tqdm

    bars = []

    def interrupted(rest):
        bars.append(tqdm(total=10, desc="captioning"))
        bars[0].update(3)
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("tgmae.commands.caption"), "main", interrupted)
    assert main(["caption"]) == 130
    assert bars[0].disable  # closed by the CLI, not later by the garbage collector
    err = capsys.readouterr().err
    assert err.rstrip().splitlines()[-1].startswith("tgmae caption: stopped (SIGINT)")


def test_a_stop_while_the_command_imports_is_one_line(tmp_path):
    """Re-trial 26A T1: Ctrl-C or SIGTERM in a command's first second (while torch imports) gave two
    tracebacks and exit 1: the command's import ran outside the CLI's handling, and the stop line
    imported torch again (half-imported: RuntimeError / AttributeError). The import is handled,
    and the stop line needs no torch."""
    import subprocess
    import textwrap

    (tmp_path / "stopped_on_import.py").write_text("raise KeyboardInterrupt\n")
    script = textwrap.dedent("""
        import sys
        import tgmae.cli as cli

        class HalfImported:  # torch stopped mid-import: importing it again fails
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError("torch is half-imported")

        sys.meta_path.insert(0, HalfImported())
        cli.COMMANDS["pretrain"] = ("stopped_on_import:main", "")
        sys.exit(cli.main(["pretrain"]))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                         str(tmp_path)])}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == ("tgmae pretrain: stopped (SIGINT); what it finished is kept: "
                                   "rerun the same command to go on"), proc.stderr


def test_python_dash_m_tgmae_runs_the_cli():
    """Re-trial 26B M7: `python -m tgmae --help` failed (no tgmae.__main__); only `-m tgmae.cli`
    worked. `python -m tgmae` is the CLI, its exit status included."""
    import subprocess

    from tgmae import __version__

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-m", "tgmae", "--version"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"tgmae {__version__}"), proc.stderr
    proc = subprocess.run([sys.executable, "-m", "tgmae", "frobnicate"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2 and "unknown command 'frobnicate'" in proc.stderr


def test_a_stop_swallowed_inside_an_import_still_stops_the_command(tmp_path):
    """Re-trial 27A T1: a Ctrl-C landing while numpy imported (0.3-0.9 s into a command) was
    swallowed there; the command went on (once training to its end) and failed later. Stops are
    held during the command's imports and raised after them: one line, exit 130."""
    import subprocess
    import textwrap

    (tmp_path / "swallows_a_stop.py").write_text(textwrap.dedent("""
        import os, signal, time
        try:  # a C extension's import that swallows KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        except KeyboardInterrupt:
            pass

        def main(rest):
            print("the command ran")
            return 0
    """))
    script = textwrap.dedent("""
        import sys
        import tgmae.cli as cli

        cli.COMMANDS["pretrain"] = ("swallows_a_stop:main", "")
        sys.exit(cli.main(["pretrain"]))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                         str(tmp_path)])}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                          preexec_fn=lambda: __import__("signal").signal(2, __import__("signal").SIG_DFL))
    assert proc.returncode == 130 and "the command ran" not in proc.stdout, (proc.stdout, proc.stderr)
    assert proc.stderr.strip().endswith("tgmae pretrain: stopped (SIGINT); what it finished is kept: "
                                        "rerun the same command to go on"), proc.stderr


def test_a_rank_whose_peer_ended_first_waits_for_rank_0_and_says_no_traceback(capsys, monkeypatch, rank0_waits):
    """Re-trial 27B T1: a full disk at a checkpoint under torchrun: rank 0 said its line, and rank 1,
    waiting in the checkpoint's barrier, printed gloo's "Connection closed by peer" as a 40-line
    traceback. A collective failed by a peer that ended is a stop, not a bug: the rank waits for
    rank 0 (torchrun stops it there), else says one line."""
    from conftest import StoppedByTorchrun

    def barrier_broke(rest):
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:44721. "
                           "This is typically caused by a remote worker crashing.")

    monkeypatch.setattr(importlib.import_module("tgmae.commands.pretrain"), "main", barrier_broke)
    rank0_waits(1)
    with pytest.raises(StoppedByTorchrun):
        main(["pretrain"])
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(importlib.import_module("time"), "sleep", lambda s: None)  # rank 0 runs on
    assert main(["pretrain"]) == 2
    assert capsys.readouterr().err == ("tgmae pretrain (rank 1): stopped: another rank ended first "
                                       "(Connection closed by peer [127.0.0.1]:44721)\n")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(RuntimeError):  # one process: no peer, a bug's traceback
        main(["pretrain"])


@pytest.mark.parametrize("gloo_says,said", [
    ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:2722: Connection "
     "reset by peer. This is typically caused by a remote worker hanging or bugs in the application. Check the logs "
     "of the remote worker for more details.", "Read error [127.0.0.1]:2722: Connection reset by peer"),
    ("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:44721. This is "
     "typically caused by a remote worker crashing.\nException raised from ...",
     "Connection closed by peer [127.0.0.1]:44721"),
])
def test_a_rank_whose_peer_ended_first_quotes_what_happened_not_gloos_path_or_advice(
        gloo_says, said, capsys, monkeypatch, rank0_waits):
    """Re-trial 33A M3: rank 0's "stopped: another rank ended first (...)" quoted gloo's error cut at
    200 characters, mid-word in its advice (`bugs in the applica)`), with its build path. It quotes
    gloo's sentence saying what happened."""
    def barrier_broke(rest):
        raise RuntimeError(gloo_says)

    monkeypatch.setattr(importlib.import_module("tgmae.commands.pretrain"), "main", barrier_broke)
    rank0_waits(0)
    assert main(["pretrain"]) == 2
    assert capsys.readouterr().err == f"tgmae pretrain: stopped: another rank ended first ({said})\n"


_STOPPED = "tgmae pretrain: stopped (SIGTERM); what it finished is kept: rerun the same command to go on"

_STOPPED_FROM_OUTSIDE = '''
"""`tgmae pretrain ORDER`, stopped from outside as a scheduler or torchrun stops it: it reads batches
through 2 DataLoader workers (`map_dataset`), says `ready` once each has given one, and waits for the
test's signals."""
import time

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from tgmae.evaluate.sharded import map_dataset


class Items(Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, i):
        return {"label": i, "x": torch.zeros(2)}


def say(word):
    print(word, flush=True)


def wait():
    time.sleep(300)  # the test's SIGTERM ends it, as Terminated


def main(rest):
    order = rest[0]
    if order != "alone":
        dist.init_process_group("gloo")

    batches = []

    def fn(batch):
        batches.append(batch)
        if len(batches) == 1:  # the second batch is worker 1's: both workers have started (their init run)
            return {"y": batch["x"]}
        say("ready")
        if order == "alone" or dist.get_rank() == 1:
            wait()
        elif order == "peer gone, then the stop":
            try:
                dist.barrier()  # rank 1 never comes: the test kills it (-9)
            except RuntimeError:
                say("peer gone")
                wait()  # torchrun's SIGTERM lands while gloo's error is handled
        else:  # the stop, then the peer gone
            try:
                wait()
            finally:
                dist.barrier()  # a collective in the stop's clean-up; rank 1 is gone
        return {"y": batch["x"]}

    map_dataset(Items(), fn, batch_size=1, device=torch.device("cpu"), num_workers=2)
'''


def _start_ranks(tmp_path, order: str, world: int, port: int) -> list:
    """`world` processes running `tgmae pretrain ORDER` as torchrun starts its ranks (each in a
    session of its own, its DataLoader workers with it), once each has said `ready`."""
    import subprocess

    (tmp_path / "stopped_from_outside.py").write_text(_STOPPED_FROM_OUTSIDE)
    script = ("import sys, tgmae.cli as cli\n"
              "cli.COMMANDS['pretrain'] = ('stopped_from_outside:main', '')\n"
              "sys.exit(cli.main(['pretrain', sys.argv[1]]))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                         str(tmp_path)]), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TGMAE_DEBUG"):
        env.pop(key, None)
    ranks = []
    for rank in range(world):
        launch = {} if world == 1 else {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        ranks.append(subprocess.Popen([sys.executable, "-c", script, order], env={**env, **launch}, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
    for proc in ranks:
        assert proc.stdout.readline() == "ready\n", proc.communicate(timeout=60)
    return ranks


def test_sigterm_to_the_process_group_stops_in_one_line_its_dataloader_workers_quiet(tmp_path):
    """Re-trial 29B T3: a scheduler's SIGTERM to the whole process group (`kill -TERM -- -PGID`)
    killed the DataLoader workers too, and torch's SIGCHLD handler raised "DataLoader worker (pid N)
    is killed by signal: Terminated" into the stop's clean-up ("Exception ignored in ..." before the
    one line). The workers ignore the stop (`loader_worker_init`); their parent shuts them down."""
    import signal

    (proc,) = _start_ranks(tmp_path, "alone", 1, 0)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip() == _STOPPED, err


def test_every_dataloader_with_workers_has_them_leave_a_stop_to_their_parent():
    """Every DataLoader the project makes with worker processes is a `data.dataset.Loader`: its
    workers' init leaves a stop to the parent (re-trial 29B T3), and they start with stops held
    (re-trial 30A T1)."""
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "tgmae"
    missing = []
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "DataLoader":
                if "num_workers" in {k.arg for k in node.keywords}:
                    missing.append(f"{path.name}:{node.lineno}")
    assert missing == [], missing


@pytest.mark.parametrize("order", ["peer gone, then the stop", "the stop, then the peer gone"])
def test_under_torchrun_a_rank_whose_peer_was_killed_stops_in_one_line(tmp_path, free_port, order):
    """Re-trial 29B T3: under torchrun, rank 1 killed (-9) while rank 0 was in a collective: rank 0
    got gloo's "Connection closed by peer", then torchrun's SIGTERM to its session while that was
    handled, and printed the chain (gloo's error, `Terminated`, its DataLoader workers killed) as a
    110-line traceback, exit 1. Whatever the order (a collective in the stop's clean-up failing
    too), a rank that was signalled stops in its one line, exit 143."""
    import signal

    rank0, rank1 = _start_ranks(tmp_path, order, 2, free_port)
    os.killpg(rank1.pid, signal.SIGKILL)  # rank 1 and its workers
    rank1.communicate(timeout=60)
    if order == "peer gone, then the stop":
        assert rank0.stdout.readline() == "peer gone\n", rank0.communicate(timeout=60)
    os.killpg(rank0.pid, signal.SIGTERM)  # torchrun stops the ranks left, each with its workers
    out, err = rank0.communicate(timeout=60)
    assert rank0.returncode == 143 and err.strip() == _STOPPED, err


@pytest.mark.parametrize("rank", [0, 1])
def test_a_collective_failing_in_a_stops_clean_up_ends_as_the_stop(capsys, monkeypatch, rank0_waits, rank):
    """Re-trial 29B T3: a rank stopped by torchrun whose clean-up ran a collective after another
    rank had ended got gloo's "Connection closed by peer" there and said "another rank ended first",
    exit 2 (another rank waited for rank 0 first). It ends as the stop: exit 143, the line on rank 0
    alone, no wait. Any other error raised in a stop's clean-up is said as ever (a bug: its
    traceback)."""
    from tgmae.lifetime import Terminated

    def clean_up_fails(error):
        def command(rest):
            try:
                raise Terminated()
            finally:
                raise error
        return command

    gone = RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:44721.")
    pretrain = importlib.import_module("tgmae.commands.pretrain")
    monkeypatch.setattr(pretrain, "main", clean_up_fails(gone))
    rank0_waits(rank)  # a wait for rank 0 would raise StoppedByTorchrun
    assert main(["pretrain"]) == 143
    assert capsys.readouterr().err.strip() == ("" if rank else _STOPPED)
    monkeypatch.setattr(pretrain, "main", clean_up_fails(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["pretrain"])


def test_every_command_leaves_the_process_group_when_it_returns(capsys, monkeypatch):
    """Re-trial 27B T2: `torchrun ... extract` finished its work, then rank 1 sometimes aborted
    ("terminate called without an active exception", exit -6), failing torchrun: extract never left
    the group. The CLI leaves it (`distributed.cleanup`: a barrier, then destroy) after any command."""
    import tgmae.distributed

    left = []
    monkeypatch.setattr(tgmae.distributed, "cleanup", lambda: left.append(True))
    monkeypatch.setattr(importlib.import_module("tgmae.commands.extract"), "main", lambda rest: 0)
    assert main(["extract"]) == 0 and left == [True]


@pytest.mark.parametrize("command", ["caption", "pretrain", "data"])
@pytest.mark.parametrize("env,said", [({"RANK": "abc", "WORLD_SIZE": "2"}, "RANK='abc'"),
                                      ({"WORLD_SIZE": "-1"}, "WORLD_SIZE='-1'"),
                                      ({"LOCAL_RANK": "1.5"}, "LOCAL_RANK='1.5'")])
def test_a_bad_torchrun_variable_is_one_line_for_every_command(command, env, said, capsys, monkeypatch):
    """Re-trial 29B T4: `RANK=abc tgmae caption ...` ended in a 25-line ValueError traceback. Every
    command refuses it before it runs, in one line naming the variable (exit 2), and the error
    report itself (which asks for the rank) does not fail on it."""
    called = []
    module, func = COMMANDS[command][0].split(":")
    monkeypatch.setattr(importlib.import_module(module), func, lambda rest: called.append(rest) or 0)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main([command, "--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tgmae {command}: {said}: expected a whole number") and err.count("\n") == 1, err
    assert called == []


class _KillsItsWorker:
    """A data set whose item `at` kills the DataLoader worker reading it (SIGKILL, as the OOM
    killer does)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        import signal

        import torch

        if i == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.zeros(2)


_WORKER_KILLED = (r"tgmae pretrain{rank}: a data loader worker \(pid \d+\) was killed \(SIGKILL; out of memory\?\); "
                  r"what it finished is kept: rerun the same command to go on, or lower data.num_workers")


@pytest.mark.parametrize("rank", [None, 1])
def test_a_dataloader_worker_killed_is_one_line_exit_2(capsys, monkeypatch, rank0_waits, rank):
    """Re-trial 33A T1: a DataLoader worker killed (-9, the OOM killer) mid-training ended the run
    in torch's traceback ("DataLoader worker (pid N) is killed by signal: Killed.", raised by its
    SIGCHLD handler wherever the main process was, or "exited unexpectedly" from the queue), exit 1.
    It is one line, exit 2; under a group the rank's line follows the rank rules (it waits for
    rank 0 first)."""
    import re

    from conftest import StoppedByTorchrun

    from tgmae.data.dataset import Loader

    def reads_all(rest):
        for _ in Loader(_KillsItsWorker(at=1), batch_size=1, num_workers=2):  # worker 1 reads item 1
            pass

    monkeypatch.setattr(importlib.import_module("tgmae.commands.pretrain"), "main", reads_all)
    if rank is None:
        monkeypatch.delenv("WORLD_SIZE")
        monkeypatch.delenv("RANK")
    else:
        rank0_waits(rank)
        with pytest.raises(StoppedByTorchrun):  # torchrun stops it in its wait once rank 0 has ended
            main(["pretrain"])
        assert capsys.readouterr().err == ""
        monkeypatch.setattr(importlib.import_module("time"), "sleep", lambda s: None)  # rank 0 runs on
    assert main(["pretrain"]) == 2
    err = capsys.readouterr().err
    said = _WORKER_KILLED.format(rank="" if rank is None else rf" \(rank {rank}\)")
    assert re.fullmatch(said, err.strip()) and "Traceback" not in err, err


@pytest.mark.parametrize("torch_says,said", [
    ("DataLoader worker (pid 8160) is killed by signal: Killed. ", "(pid 8160) was killed (SIGKILL; out of memory?)"),
    ("DataLoader worker (pid 7) is killed by signal: Bus error. It is possible that dataloader's workers are out "
     "of shared memory. Please try to raise your shared memory limit.",
     "(pid 7) was killed (SIGBUS; out of shared memory? /dev/shm is too small)"),
    ("DataLoader worker (pid 7) is killed by signal: Segmentation fault. ", "(pid 7) was killed (SIGSEGV)"),
    ("DataLoader worker (pid 7) exited unexpectedly with exit code 1. Details are lost due to multiprocessing. "
     "Rerunning with num_workers=0 may give better error trace.", "(pid 7) ended with exit code 1"),
    ("DataLoader worker (pid(s) 7, 9) exited unexpectedly", "(pids 7, 9) ended (killed? out of memory?)"),
])
def test_each_of_torchs_worker_deaths_is_said_in_one_line(torch_says, said, capsys, monkeypatch):
    """Re-trial 33A T1: every text torch gives a dead DataLoader worker (its SIGCHLD handler's, the
    queue's) is one line naming the worker and, where torch says it, the signal; the queue's
    "exited unexpectedly" names the signal its cause holds. Any other RuntimeError is a bug's
    traceback."""
    def worker_died(rest):
        raise RuntimeError(torch_says)

    def queue_failed(rest):
        try:
            worker_died(rest)
        except RuntimeError as e:
            raise RuntimeError("DataLoader worker (pid(s) 8160) exited unexpectedly") from e

    pretrain = importlib.import_module("tgmae.commands.pretrain")
    for command in (worker_died,) + ((queue_failed,) if "pid(s)" not in torch_says else ()):
        monkeypatch.setattr(pretrain, "main", command)
        assert main(["pretrain"]) == 2
        err = capsys.readouterr().err
        worker = "data loader workers" if "," in said else "a data loader worker"
        assert err == (f"tgmae pretrain: {worker} {said}; what it finished is kept: rerun the same command "
                       "to go on, or lower data.num_workers\n"), err
    def other(rest):
        raise RuntimeError("DataLoader worker (pid 7) is stopped")

    monkeypatch.setattr(pretrain, "main", other)
    with pytest.raises(RuntimeError, match="is stopped"):
        main(["pretrain"])
