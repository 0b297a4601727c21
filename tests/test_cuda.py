"""CUDA paths: the model, autocast (bf16 / fp16 with a GradScaler), training, resume and the
evaluation commands on a GPU. Skipped without CUDA; run on a GPU machine with
`python -m pytest tests/test_cuda.py` (the rest of the suite runs there on CUDA too, since
`train.device=auto` picks the GPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tgmae.config import ModelConfig, load_config
from tgmae.data.synthetic import generate_synthetic_dataset
from tgmae.models import build_pretraining_model
from tgmae.weights.pretraining import load_pretraining_model
from tgmae.weights import checkpoint as ckpt
from tgmae.train.metrics import read_metrics
from tgmae.train.pretrain import pretrain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SMALL = [
    "data.format=csv", "data.train_annotations=train.csv", "data.val_annotations=val.csv", "data.num_frames=4",
    "data.frame_stride=2", "data.image_size=32", "data.flip=false", "data.num_workers=0", "model.preset=tiny",
    "model.patch_size=8", "masking.name=tube", "masking.ratio=0.75", "train.batch_size=4", "train.epochs=2",
    "train.device=cuda", "train.log_every=1", "log.progress=false", "log.tensorboard=false",
    "optim.base_lr=1e-3", "checkpoint.every_steps=2",
]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_dataset(root, num_videos=16, frames=12, size=64, seed=3, val_fraction=0.25)
    return root


def model_and_inputs(seed: int = 0):
    torch.manual_seed(seed)
    model = build_pretraining_model(ModelConfig(preset="tiny", patch_size=8), 4, 32).eval()
    g = torch.Generator().manual_seed(1)
    video = torch.randn(2, 3, 4, 32, 32, generator=g)
    n = model.arch.num_tokens
    mask = torch.zeros(2, n, dtype=torch.bool)
    for b in range(2):
        mask[b, torch.randperm(n, generator=g)[: 3 * n // 4]] = True
    return model, video, mask


def test_cuda_forward_matches_cpu_in_fp32():
    model, video, mask = model_and_inputs()
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # exact fp32 products
    try:
        with torch.no_grad():
            cpu = model(video, mask)
            gpu = model.cuda()(video.cuda(), mask.cuda())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev
    assert (gpu.loss.cpu() - cpu.loss).abs().item() <= 1e-5
    assert (gpu.pred.cpu() - cpu.pred).abs().max().item() <= 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_loss_and_grads_on_cuda(dtype):
    """Half-precision autocast stays within its rounding of fp32 and gives finite gradients."""
    model, video, mask = model_and_inputs()
    model = model.cuda().train()
    video, mask = video.cuda(), mask.cuda()
    ref = model(video, mask).loss.item()
    with torch.autocast("cuda", dtype=dtype):
        out = model(video, mask)
    assert out.loss.dtype == torch.float32  # the loss is computed in fp32
    assert abs(out.loss.item() - ref) <= 2e-2 * abs(ref)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_pretrain_on_cuda_trains_resumes_and_loads_on_cpu(synth_root, tmp_path, precision):
    def cfg(out: Path):
        return load_config(None, SMALL + [f"data.root={synth_root}", f"train.output_dir={out}",
                                          f"train.precision={precision}"])

    ref = pretrain(cfg(tmp_path / "ref"))
    records = read_metrics(ref / "metrics.jsonl")
    assert len(records) == 6 and all(math.isfinite(r["loss"]) and r["load_failures"] == 0 for r in records)

    class Killed(Exception):
        pass

    def kill(state):
        if state.position.step == 3:
            raise Killed()

    with pytest.raises(Killed):
        pretrain(cfg(tmp_path / "killed"), hooks=[kill])
    state = ckpt.load_checkpoint(ckpt.find_latest(tmp_path / "killed" / "checkpoints"))
    if precision == "fp16":
        assert state.scaler_state, "fp16 checkpoints carry the GradScaler"
    resumed = pretrain(cfg(tmp_path / "killed"))
    a = ckpt.load_checkpoint(ckpt.find_latest(ref / "checkpoints")).model_state
    b = ckpt.load_checkpoint(ckpt.find_latest(resumed / "checkpoints")).model_state
    # CUDA kernels (atomics in backward) are not bitwise deterministic: the resumed run must agree
    # to within what two uninterrupted runs differ by, far below one step's update.
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-3, worst
    model = load_pretraining_model(ref / "model.safetensors")  # CUDA-trained weights load on CPU
    assert next(model.parameters()).device.type == "cpu"


def test_probe_finetune_evaluate_commands_on_cuda(synth_root, tmp_path):
    from tgmae.cli import main

    run = pretrain(load_config(None, SMALL + [f"data.root={synth_root}", f"train.output_dir={tmp_path / 'pre'}",
                                              "train.precision=bf16"]))
    common = ["data.format=csv", f"data.root={synth_root}", "data.train_annotations=train.csv",
              "data.val_annotations=val.csv", "data.num_frames=4", "data.frame_stride=2", "data.image_size=32",
              "data.num_workers=0", "model.preset=tiny", "model.patch_size=8", "train.device=cuda",
              "train.precision=bf16", "log.progress=false", "log.tensorboard=false"]
    assert main(["probe", f"model.pretrained={run / 'model.safetensors'}", *common, "train.epochs=2",
                 f"train.output_dir={tmp_path / 'probe'}"]) == 0
    assert main(["finetune", f"model.pretrained={run / 'model.safetensors'}", *common, "train.epochs=1", "train.batch_size=4",
                 "data.test_temporal_views=2", "data.test_spatial_views=1",
                 f"train.output_dir={tmp_path / 'ft'}"]) == 0
    assert (tmp_path / "ft" / "classifier.safetensors").is_file()
    assert main(["evaluate", *common, f"model.pretrained={tmp_path / 'ft' / 'classifier.safetensors'}",
                 "data.test_temporal_views=2", "data.test_spatial_views=1",
                 f"train.output_dir={tmp_path / 'eval'}"]) == 0
