"""`tgmae demo-pretrain` (what `make demo-pretrain` runs): synthetic set -> tiny pretraining -> figures.

Everything lands in one folder: the data set, the run (metrics log, checkpoints, model,
loss curve, reconstruction figure) and a short summary printed at the end.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "pretrain_demo.yaml"


def main(argv: list[str]) -> int:
    from tgmae.commands.args import load_run_config, parse_args

    parser = argparse.ArgumentParser(prog="tgmae demo-pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="folder for the data set and the run")
    parser.add_argument("--num-videos", type=int, default=240, help="synthetic videos to generate")
    parser.add_argument("--quick", action="store_true", help="CI-sized: few videos, few steps")
    parser.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="pretraining config")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = parse_args(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from tgmae.data.synthetic import generate_synthetic_dataset
    from tgmae.train.pretrain import pretrain

    out = Path(args.out)
    data_dir = out / "data"
    num_videos = 32 if args.quick else args.num_videos
    t0 = time.perf_counter()
    if not (data_dir / "train.csv").is_file():
        info = generate_synthetic_dataset(data_dir, num_videos=num_videos, seed=0, workers=0)
        print(f"synthetic set: {info.num_videos} videos ({info.num_train} train) in {info.seconds:.1f}s -> {data_dir}")
    overrides = [f"data.root={data_dir}", f"train.output_dir={out / 'pretrain'}"]
    if args.quick:
        overrides += ["train.epochs=2", "train.batch_size=8", "checkpoint.every_steps=2"]
    cfg = load_run_config("demo-pretrain", args.config, overrides + list(args.overrides))
    run_dir = pretrain(cfg)
    minutes = (time.perf_counter() - t0) / 60
    print(f"\ndemo-pretrain finished in {minutes:.1f} min. Outputs in {run_dir}:")
    for name in ("metrics.jsonl", "loss_curve.png", "reconstruction.png", "reconstruction.gif",
                 "model.safetensors", "config.yaml", "checkpoints"):
        path = run_dir / name
        print(f"  {'ok ' if path.exists() else 'MISSING'} {path}")
    return 0
