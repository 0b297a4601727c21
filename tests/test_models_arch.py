"""tgmae.models.arch: every preset's size against the peers' published parameter counts, and any
patch side (ViT-g's 14 included) end to end: masks, TGM maps, model, target and figures."""

from __future__ import annotations

import pytest
import torch

from tgmae.config import MaskingConfig, ModelConfig, load_config
from tgmae.mask_contract import CropParams, MaskContext
from tgmae.masking import build_mask_generator
from tgmae.masking.resample import resample_to_tokens
from tgmae.masking.select import select_per_slice
from tgmae.models import build_pretraining_model, patchify, reconstruct_video
from tgmae.viz.reconstruction import reconstruction_rows

# Encoder parameters in millions as published: VideoMAE (Tong et al. 2022) Table 6 / MODEL_ZOO.md
# ViT-S 22M, ViT-B 87M (86M without the classifier), ViT-L 305M (304M), ViT-H 633M (632M);
# VideoMAEv2 (Wang et al. 2023) Table 1: ViT-g 1011M. Finetuned counts include a classifier head
# (D x classes), so each published number is matched within 1% of the pretraining encoder's.
PUBLISHED_ENCODER_M = {"small": 22, "base": 86.5, "large": 304, "huge": 632, "giant": 1011}


@pytest.mark.parametrize("preset", sorted(PUBLISHED_ENCODER_M))
def test_encoder_parameter_count_matches_the_published_one(preset):
    with torch.device("meta"):  # shapes only: a 1B model costs no memory
        model = build_pretraining_model(ModelConfig(preset=preset), 16, 224)
    count = sum(p.numel() for p in model.encoder.parameters()) / 1e6
    assert count == pytest.approx(PUBLISHED_ENCODER_M[preset], rel=0.01), count


def test_patch_14_end_to_end_masks_tgm_maps_model_and_figure():
    cfg = load_config(overrides=["model.preset=micro", "model.patch_size=14", "data.image_size=42",
                                 "data.num_frames=4"])
    grid = cfg.token_grid
    assert grid == (2, 3, 3)
    torch.manual_seed(0)
    model = build_pretraining_model(cfg.model, cfg.data.num_frames, cfg.data.image_size)
    assert model.arch.patch_dim == 2 * 14 * 14 * 3 and model.arch.grid == grid
    ctx = MaskContext(grid=grid)
    masks = [build_mask_generator(MaskingConfig(name=n, ratio=0.6))(ctx, torch.Generator().manual_seed(1))
             for n in ("random", "tube")]
    # a cached similarity map (one frame, 8x8 over a 64-pixel source) carried to the 3x3 token grid
    sim = torch.zeros(1, 8, 8)
    sim[0, :4, :4] = 1.0  # the caption matches the top-left quarter
    crop = CropParams(0.0, 0.0, 64.0, 64.0, False, 64, 64)
    scores = resample_to_tokens(sim, torch.tensor([0]), torch.zeros(4, dtype=torch.long), crop, grid)
    assert scores.shape == grid
    tgm = select_per_slice(scores.reshape(2, 9), 0.4, "top", torch.Generator().manual_seed(0))
    assert tgm.view(2, 3, 3)[:, 0, 0].all()  # the top-left token scores highest in both slices
    video = torch.randn(1, 3, 4, 42, 42, generator=torch.Generator().manual_seed(2))
    for mask in masks + [tgm]:
        mask = mask.view(1, -1)
        out = model(video, mask)
        assert out.pred.shape == (1, int(mask.sum()), model.arch.patch_dim) and torch.isfinite(out.loss)
        out.loss.backward()
        recon = reconstruct_video(video, out.pred.detach(), mask, model.arch)
        visible = ~mask[0]
        assert torch.equal(patchify(recon, 2, 14)[0, visible], patchify(video, 2, 14)[0, visible])
        rows = reconstruction_rows(video[0], recon[0], mask[0], grid, 2, 14, cfg.data.mean, cfg.data.std)
        assert rows["masked"].shape == (4, 42, 42, 3)


def test_checkpoint_model_keys_are_taken_only_where_the_user_set_none():
    """Re-trial 23B m1: commands that test or draw given weights take their architecture's model keys
    (`with_checkpoint_model`); a key the user set is kept, for `check_checkpoint_geometry` to refuse."""
    from tgmae.config import ConfigError
    from tgmae.models.arch import VideoMAEArch, check_checkpoint_geometry, checkpoint_model_keys, with_checkpoint_model

    micro4 = VideoMAEArch(embed_dim=64, depth=2, num_heads=4, patch_size=8, tubelet_size=2)  # micro's size, 4 heads
    assert checkpoint_model_keys(micro4) == {"patch_size": 8, "tubelet_size": 2, "preset": "micro", "num_heads": 4}
    odd = VideoMAEArch(embed_dim=48, depth=3, num_heads=3, patch_size=16, tubelet_size=2)  # no preset's size
    assert checkpoint_model_keys(odd) == {"patch_size": 16, "tubelet_size": 2}
    model, note = with_checkpoint_model(ModelConfig(), micro4, given=set())
    assert note == "model.patch_size=8, model.preset=micro, model.num_heads=4, as its weights are"
    assert (model.preset, model.patch_size, model.num_heads) == ("micro", 8, 4)
    check_checkpoint_geometry(model, micro4, "ckpt")
    assert with_checkpoint_model(ModelConfig(), micro4, given=None) == (ModelConfig(), None)
    model, note = with_checkpoint_model(ModelConfig(preset="tiny"), micro4, given={"model.preset"})
    assert "model.preset" not in note and model.patch_size == 8
    with pytest.raises(ConfigError, match=r"^model\.preset='tiny' but the checkpoint ckpt has 'micro'"):
        check_checkpoint_geometry(model, micro4, "ckpt")
