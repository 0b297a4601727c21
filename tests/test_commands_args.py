"""Shared argv parsing of the commands (`tgmae.commands.args`)."""


def test_options_and_overrides_in_any_order():
    import argparse

    from tgmae.commands.args import parse_args, parse_run_args

    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("-c", "--config")
    p.add_argument("--out")
    p.add_argument("overrides", nargs="*")
    for argv in (["CKPT", "-c", "cfg.yaml", "a.b=1", "c.d=2"], ["-c", "cfg.yaml", "CKPT", "a.b=1", "c.d=2"],
                 ["CKPT", "a.b=1", "-c", "cfg.yaml", "c.d=2"], ["CKPT", "a.b=1", "c.d=2", "-c", "cfg.yaml"]):
        args = parse_args(p, argv)
        assert (args.checkpoint, args.config, args.overrides) == ("CKPT", "cfg.yaml", ["a.b=1", "c.d=2"]), argv
    cfg, args = parse_run_args("x", ["train.epochs=3", "optim.lr=0.5"])
    assert cfg.train.epochs == 3 and cfg.optim.lr == 0.5


def test_a_key_set_twice_on_the_command_line_is_refused_naming_it(tmp_path, capsys):
    """Issue 28 (re-trial 15): `masking.ratio=0.9 ... masking.ratio=0.75` kept the last silently;
    which one was meant cannot be known, so every command refuses it in one line (exit 2)."""
    from tgmae.cli import main as cli_main

    for argv in (["pretrain", "masking.ratio=0.9", "train.epochs=1", "masking.ratio=0.75"],
                 ["config", "show", "masking.ratio=0.9", "masking.ratio=0.75"],
                 ["study", "--quick", f"out_dir={tmp_path}/s", f"out_dir={tmp_path}/t"]):
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        key = {"pretrain": "masking.ratio", "config": "masking.ratio", "study": "out_dir"}[argv[0]]
        assert key in err and "twice" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()
    # different keys (and one key in a YAML file beside an override of it) still load
    from tgmae.commands.args import parse_run_args

    (tmp_path / "c.yaml").write_text("masking:\n  ratio: 0.8\n")
    cfg, _ = parse_run_args("x", ["-c", str(tmp_path / "c.yaml"), "masking.ratio=0.75", "train.epochs=2"])
    assert (cfg.masking.ratio, cfg.train.epochs) == (0.75, 2)


def test_a_section_and_a_key_in_it_or_two_config_files_are_refused(capsys):
    """Re-trial 16B: `masking={ratio: 0.75} masking.ratio=0.9` kept the last; `-c A -c B` kept B."""
    from tgmae.cli import main as cli_main

    for argv, named in ((["config", "show", "masking={ratio: 0.75}", "masking.ratio=0.9"], "masking"),
                        (["config", "show", "-c", "configs/pretrain_demo.yaml", "-c", "configs/finetune_vitb_ssv2.yaml"],
                         "configs/finetune_vitb_ssv2.yaml"),
                        (["pretrain", "--config=configs/pretrain_demo.yaml", "-cconfigs/pretrain_demo.yaml"], "-c/--config"),
                        (["study", "-c", "a.yaml", "--quick", "-c", "b.yaml"], "a.yaml, b.yaml"),
                        (["extract", "-c", "a.yaml", "--out", "x", "-c", "b.yaml"], "a.yaml, b.yaml")):
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert named in err and len(err.splitlines()) == 1, err
    assert cli_main(["config", "show", "masking.ratio=0.9", "masking.name=tube"]) == 0  # keys side by side: fine


def test_study_list_entries_set_a_key_once_and_appends_may_repeat():
    """Re-trial 16B: `pretrain+=[masking.ratio=0.75, masking.ratio=0.5]` ran at 0.5; two `+=` appends
    extend the list as documented, and an entry over a default entry of the same key still wins."""
    import pytest

    from tgmae.config import ConfigError
    from tgmae.study.run import load_study

    with pytest.raises(ConfigError, match=r"masking.ratio: set twice in study.pretrain"):
        load_study(None, ["pretrain+=[masking.ratio=0.75, masking.ratio=0.5]"])
    with pytest.raises(ConfigError, match=r"masking.ratio: set twice in study.pretrain"):
        load_study(None, ["pretrain+=[masking.ratio=0.75]", "pretrain+=[masking.ratio=0.5]"])
    study = load_study(None, ["pretrain+=[masking.ratio=0.75]", "pretrain+=[train.epochs=3]"])
    assert study.pretrain[-2:] == ["masking.ratio=0.75", "train.epochs=3"]
    default = load_study(None).pretrain
    assert default, "the defaults carry pretrain entries"
    key = default[0].split("=")[0]
    assert load_study(None, [f"pretrain+=[{key}=1]"]).pretrain[-1] == f"{key}=1"  # over a default entry: later wins


def test_a_key_twice_inside_an_override_value_or_a_study_files_list_is_refused(tmp_path, capsys):
    """Re-trial 17A (S4): `masking={ratio: 0.75, ratio: 0.8}` kept 0.8, and a study YAML's
    `pretrain: [..., data.num_workers=0, data.num_workers=1]` trained with 1; both refused as the
    same key twice in a YAML file or on the command line is."""
    import pytest

    from tgmae.cli import main as cli_main
    from tgmae.config import ConfigError
    from tgmae.study.run import load_study

    assert cli_main(["config", "show", "masking={ratio: 0.75, ratio: 0.8}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'masking.ratio' appears twice" in err and len(err.splitlines()) == 1, err
    path = tmp_path / "study.yaml"
    path.write_text("pretrain: [model.preset=micro, data.num_workers=0, data.num_workers=1]\n")
    with pytest.raises(ConfigError, match=rf"data.num_workers: set twice in study.pretrain of {path}"):
        load_study(str(path))
    path.write_text("pretrain: [model.preset=micro, data.num_workers=0]\n")
    assert load_study(str(path)).pretrain == ["model.preset=micro", "data.num_workers=0"]


def test_closing_lines_are_said_by_rank_0_alone(capsys, monkeypatch):
    """Re-trial 20B (M2): under torchrun "run directory: ..." and the test line were printed by
    every rank."""
    from tgmae.commands.args import say

    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, shown in (("1", ""), ("0", "run directory: x\n")):
        monkeypatch.setenv("RANK", rank)
        say("run directory: x")
        assert capsys.readouterr().out == shown


def test_counts_in_messages_take_their_number():
    """Re-trial 20B (M3): "1 videos of syn", "(1 videos x 6 views)", "1 processes"."""
    from tgmae.errors import count

    assert (count(1, "video"), count(6, "view"), count(1, "process", "processes"), count(2, "process", "processes"),
            count(0, "batch", "batches")) == ("1 video", "6 views", "1 process", "2 processes", "0 batches")


def test_the_keys_a_user_set_come_from_the_one_read_of_the_config_file(tmp_path, monkeypatch):
    """Session 13 diff read: `tgmae evaluate` read the -c file a second time to learn which keys the
    user set. parse_run_args returns them (`args.given`: the file's keys, a section's mapping setting
    each key in it, and the overrides'; a recipe's are not the user's) from its one read."""
    import tgmae.config as config_module
    from tgmae.commands.args import parse_run_args

    (tmp_path / "c.yaml").write_text("data:\n  num_frames: 8\n  image_size: 32\nmasking:\n  ratio: 0.8\n")
    reads = []
    real = config_module.read_config_file
    monkeypatch.setattr(config_module, "read_config_file", lambda p: reads.append(p) or real(p))
    cfg, args = parse_run_args("x", ["-c", str(tmp_path / "c.yaml"), "train.epochs=2", "optim={lr: 0.5}"],
                               base={"eval": {"probe_folds": 3}})
    assert len(reads) == 1
    assert args.given == {"data.num_frames", "data.image_size", "masking.ratio", "train.epochs", "optim.lr"}
    assert (cfg.data.num_frames, cfg.masking.ratio, cfg.train.epochs, cfg.optim.lr, cfg.eval.probe_folds) == \
        (8, 0.8, 2, 0.5, 3)
    _, args = parse_run_args("x", ["train.epochs=2"])
    assert args.given == {"train.epochs"} and len(reads) == 1
