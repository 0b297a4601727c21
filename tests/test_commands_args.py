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
