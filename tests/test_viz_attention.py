"""Attention maps recomputed from hooks (no change to the models), figures, `tgmae visualize`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from tgmae.models import VideoMAEArch, VideoMAEPretrainer
from tgmae.weights.pretraining import save_pretraining_model
from tgmae.models.attention import Attention
from tgmae.viz.attention import (
    attention_figures,
    attention_rows,
    attention_video,
    centre_query,
    encoder_attention,
    query_box,
)

ARCH = VideoMAEArch(embed_dim=32, depth=2, num_heads=4, patch_size=8, tubelet_size=2, num_frames=4,
                    image_size=32, decoder_dim=16, decoder_depth=1, decoder_heads=1)


def model() -> VideoMAEPretrainer:
    torch.manual_seed(0)
    m = VideoMAEPretrainer(ARCH)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def test_recomputed_attention_reproduces_the_module_output():
    torch.manual_seed(1)
    attn = Attention(32, 4)
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    x = torch.randn(2, 10, 32)
    probs = attention_rows(attn, x)  # [B, H, N, N]
    assert probs.shape == (2, 4, 10, 10)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 10), atol=1e-5)
    _, _, w_v = attn.qkv.weight.chunk(3, dim=0)
    v = F.linear(x, w_v, attn.v_bias).view(2, 10, 4, 8).transpose(1, 2)
    rebuilt = attn.proj((probs @ v).transpose(1, 2).reshape(2, 10, 32))
    with torch.no_grad():
        assert torch.allclose(rebuilt, attn(x), atol=1e-5)
    rows = attention_rows(attn, x, torch.tensor([3, 7]))
    assert torch.allclose(rows, probs[:, :, [3, 7]], atol=1e-6)


def test_encoder_attention_hooks_capture_each_block_input():
    m = model()
    video = torch.randn(1, 3, 4, 32, 32)
    maps = encoder_attention(m.encoder, video)
    grid = ARCH.grid  # (2, 4, 4)
    assert maps.query == centre_query(grid) == 1 * 16 + 2 * 4 + 2
    assert maps.weights.shape == (2, 1, 4, 32)
    assert torch.allclose(maps.weights.sum(-1), torch.ones(2, 1, 4), atol=1e-5)
    with torch.no_grad():  # block 0's attention input is norm1 of the embedded tokens
        x0 = m.encoder.embed(video)
        want = attention_rows(m.encoder.blocks[0].attn, m.encoder.blocks[0].norm1(x0), torch.tensor([maps.query]))
    assert torch.allclose(maps.weights[0], want[:, :, 0], atol=1e-5)
    assert not any(blk.attn._forward_pre_hooks for blk in m.encoder.blocks)  # hooks removed
    heat = attention_video(maps, ARCH.tubelet_size, ARCH.image_size)
    assert heat.shape == (4, 32, 32) and float(heat.min()) == 0.0 and float(heat.max()) == pytest.approx(1.0)
    frames, y0, x0_ = query_box(maps.query, grid, 2, 8)
    assert list(frames) == [2, 3] and (y0, x0_) == (16, 16)


def test_attention_figures_png_and_gif(tmp_path):
    m = model()
    video = torch.randn(3, 4, 32, 32)
    out = attention_figures(m.encoder, video, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), tmp_path, name="a")
    assert out["attention"].name == "a.png" and Image.open(out["attention"]).size[0] > 100
    gif = Image.open(out["attention_gif"])
    assert gif.n_frames == 4 and gif.size == (64, 32)  # frames | overlay, side by side


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from tgmae.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_dataset(root, num_videos=12, frames=12, size=32, gop=6, seed=5, val_fraction=0.25)
    return root


def test_visualize_cli(synth, tmp_path, capsys):
    from tgmae.commands.visualize import main

    ckpt = save_pretraining_model(model(), tmp_path / "pt.safetensors")
    cfg = {"data": {"format": "csv", "root": str(synth), "train_annotations": "train.csv",
                    "val_annotations": "val.csv", "num_frames": 4, "frame_stride": 2, "image_size": 32},
           "model": {"patch_size": 8}, "masking": {"name": "tube", "ratio": 0.75},
           "train": {"output_dir": str(tmp_path / "run")}}
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["attention", str(ckpt), "-c", str(path), "--layer", "0"]) == 0
    assert main(["recon", str(ckpt), "-c", str(path), "--subset", "train", "--index", "1"]) == 0
    video = next((synth / "videos").glob("*.mp4"))
    assert main(["attention", str(ckpt), "-c", str(path), "--video", str(video), "--out", str(tmp_path / "one")]) == 0
    # a checkpoint outside any run: figures/ beside it (`-c`'s train.output_dir is not the run drawn)
    assert not (tmp_path / "run").exists()
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    recon = [f for f in figures if f.startswith("recon_synth_00001-")]  # named by the clip drawn (+ hash)
    assert len(recon) == 2 and {f[-4:] for f in recon} == {".png", ".gif"}
    assert any(f.startswith("attention_") and f.endswith(".png") for f in figures)
    assert len(list((tmp_path / "one").glob(f"attention_videos__{video.stem}-*.gif"))) == 1  # its id under data.root
    assert main(["nonsense"]) == 2
    assert "unknown figure" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:  # `masks` goes to tgmae.viz.masks with its own arguments
        main(["masks", "--help"])
    assert done.value.code == 0 and "visualize masks" in capsys.readouterr().out
