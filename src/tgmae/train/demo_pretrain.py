"""`tgmae demo-pretrain` (what `make demo-pretrain` runs): synthetic set -> tiny pretraining -> figures.

Everything lands in one folder: the data set, the run (metrics log, checkpoints, model,
loss curve, reconstruction figure) and a short summary printed at the end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "pretrain_demo.yaml"
OUTPUTS = ("metrics.jsonl", "loss_curve.png", "reconstruction.png", "reconstruction.gif",
           "model.safetensors", "config.yaml", "checkpoints")


def demo_pretrain(out: Path, num_videos: Optional[int] = None, quick: bool = False,
                  config: str | Path = DEFAULT_CONFIG, overrides: Sequence[str] = ()) -> Path:
    """Write a synthetic set of `num_videos` videos under out/data (default 240; 32 with `quick`),
    pretrain on it with `config` + `overrides` into out/pretrain (`quick`: 2 epochs of batch 8),
    print what was made; returns the run folder. A set already there is kept when it is of these
    settings (a rerun), and refused naming them when not (`generate_synthetic_dataset`: another
    --num-videos is another set). ConfigError names a bad key."""
    from tgmae.config import load_config
    from tgmae.data.synthetic import generate_synthetic_dataset
    from tgmae.train.pretrain import pretrain

    data_dir = out / "data"
    t0 = time.perf_counter()
    n = num_videos or (32 if quick else 240)
    info = generate_synthetic_dataset(data_dir, num_videos=n, seed=0, workers=0)
    print(f"synthetic set: {info.num_videos} videos ({info.num_train} train) in {info.seconds:.1f}s -> {data_dir}")
    base = [f"data.root={data_dir}", f"train.output_dir={out / 'pretrain'}"]
    if quick:
        base += ["train.epochs=2", "train.batch_size=8", "checkpoint.every_steps=2"]
    run_dir = pretrain(load_config(str(config), base + list(overrides)))
    minutes = (time.perf_counter() - t0) / 60
    print(f"\ndemo-pretrain finished in {minutes:.1f} min. Outputs in {run_dir}:")
    for name in OUTPUTS:
        path = run_dir / name
        print(f"  {'ok ' if path.exists() else 'MISSING'} {path}")
    return run_dir
