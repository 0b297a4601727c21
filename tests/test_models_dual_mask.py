"""tgmae.models.dual_mask and dual masking in the model: VideoMAEv2's running-cell pattern, the
decoded subset of every encoder mask, and loss and gradients against a direct implementation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tgmae.config import ConfigError, ContrastiveConfig, MaskingConfig, ModelConfig
from tgmae.masking import MaskContext, RandomMask, TubeMask
from tgmae.models import build_pretraining_model, build_video_text_model
from tgmae.models.dual_mask import decoder_tokens, indices_to_mask, running_cell_decoded

GRID = (4, 4, 4)  # 8 frames, image 32, patch 8, tubelet 2


def videomae_v2_running_cell(grid: tuple[int, int, int], decoder_mask_ratio: float) -> torch.Tensor:
    """OpenGVLab/VideoMAEv2 RunningCellMaskingGenerator's 4 maps, [4, N] bool, True = decoder-masked:
    a queue of int(4 * ratio) ones then zeros, the pointer set to the map's start and advanced
    once before each frame, the 2x2 cell read at (queue index + pointer) % 4 and tiled."""
    t_n, h_n, w_n = grid
    m = int(4 * decoder_mask_ratio)
    queue = [1] * m + [0] * (4 - m)
    maps = []
    for start in range(4):
        ptr, frames = start, []
        for _ in range(t_n):
            ptr += 1
            unit = [queue[(i + ptr) % 4] for i in range(4)]  # reshape(2, 2): unit[2 * row + col]
            frames.append([[unit[2 * (h % 2) + w % 2] for w in range(w_n)] for h in range(h_n)])
        maps.append(torch.tensor(frames).flatten())
    return torch.stack(maps).bool()


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_running_cell_pattern_is_videomae_v2s(ratio):
    ours = running_cell_decoded(GRID, ratio, torch.arange(4))
    assert torch.equal(ours, ~videomae_v2_running_cell(GRID, 1 - ratio))  # decoded = their decoder-visible
    assert float(ours.float().mean()) == ratio


@pytest.mark.parametrize("pattern", ["running_cell", "random"])
def test_decoded_tokens_are_a_subset_of_every_encoder_mask(pattern):
    ctx, g = MaskContext(grid=GRID), torch.Generator().manual_seed(0)
    for gen in (TubeMask(0.9), RandomMask(0.75), TubeMask(0.5)):
        mask = torch.stack([gen(ctx, g) for _ in range(6)])  # [6, 64]
        n_masked = int(mask[0].sum())
        idx = decoder_tokens(mask, 0.5, pattern, GRID, torch.Generator().manual_seed(1))
        assert idx.shape == (6, round(0.5 * n_masked)) and (idx.diff(dim=1) > 0).all()
        decoded = indices_to_mask(idx, 64)
        assert not (decoded & ~mask).any()
        if pattern == "random":
            continue
        maps = running_cell_decoded(GRID, 0.5, torch.arange(4))  # [4, N]
        for row, m in zip(decoded, mask):  # the pattern's masked tokens first, then others
            fits = [(row <= (p & m)).all() if int((p & m).sum()) >= idx.shape[1] else ((p & m) <= row).all()
                    for p in maps]
            assert any(fits)


def test_random_subset_is_uniform_over_the_masked_tokens():
    mask = TubeMask(0.75)(MaskContext(grid=GRID), torch.Generator().manual_seed(0)).expand(4000, -1)
    g = torch.Generator().manual_seed(2)
    freq = indices_to_mask(decoder_tokens(mask, 0.5, "random", GRID, g), 64).float().mean(dim=0)
    assert (freq[~mask[0]] == 0).all()
    assert (freq[mask[0]] - 0.5).abs().max() < 0.05  # 4000 draws: 5 standard deviations is 0.04


def direct_loss(model, video: torch.Tensor, mask: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """VideoMAEv2's pretraining forward written out: Conv3d embedding of all tokens, boolean
    indexing, every decoder block on all tokens, the last n_dec outputs, the norm-pix target."""
    a, enc, B = model.arch, model.encoder, video.shape[0]
    t, p = a.tubelet_size, a.patch_size
    x = F.conv3d(video, enc.patch_embed.proj.weight, enc.patch_embed.proj.bias, stride=(t, p, p))
    x = x.flatten(2).transpose(1, 2) + enc.pos_embed  # [B, N, D]
    x_vis = x[~mask].reshape(B, -1, a.embed_dim)
    for blk in enc.blocks:
        x_vis = blk(x_vis)
    x_vis = model.encoder_to_decoder(enc.norm(x_vis))
    pos = model.decoder_pos_embed.expand(B, -1, -1)
    d = a.decoder_dim
    x_full = torch.cat([x_vis + pos[~mask].reshape(B, -1, d), model.mask_token + pos[decoded].reshape(B, -1, d)], 1)
    for blk in model.decoder.blocks:
        x_full = blk(x_full)
    n_dec = int(decoded[0].sum())
    pred = model.decoder.head(model.decoder.norm(x_full[:, -n_dec:]))
    mean = torch.tensor(a.pixel_mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(a.pixel_std).view(1, 3, 1, 1, 1)
    pix = video * std + mean
    gt, gh, gw = a.grid
    patches = pix.reshape(B, 3, gt, t, gh, p, gw, p).permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, gt * gh * gw, -1, 3)
    norm = (patches - patches.mean(dim=-2, keepdim=True)) / (patches.var(dim=-2, keepdim=True).sqrt() + 1e-6)
    labels = norm.flatten(2)[decoded].reshape(B, n_dec, -1)
    return F.mse_loss(pred, labels)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("pattern", ["running_cell", "random"])
def test_dual_masking_loss_and_gradients_equal_a_direct_implementation(pattern):
    torch.manual_seed(0)
    model = build_pretraining_model(ModelConfig(preset="micro", patch_size=8), 8, 32, decoder_ratio=0.5,
                                    decoder_mask=pattern).train()
    video = torch.randn(3, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(3)
    mask = torch.stack([TubeMask(0.75)(MaskContext(grid=GRID), g) for _ in range(3)])
    torch.manual_seed(5)
    out = model(video, mask)
    torch.manual_seed(5)  # the model draws its subset from the default generator
    want = indices_to_mask(decoder_tokens(mask, 0.5, pattern, GRID), 64)
    assert torch.equal(out.decoded, want) and out.pred.shape == (3, 24, model.arch.patch_dim)
    out.loss.backward()
    ours = grads(model)
    model.zero_grad()
    ref = direct_loss(model, video, mask, out.decoded)
    ref.backward()
    torch.testing.assert_close(out.loss, ref, rtol=0, atol=1e-6)
    theirs = grads(model)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6, msg=name)


def test_eval_mode_and_ratio_one_decode_every_masked_token():
    torch.manual_seed(0)
    model = build_pretraining_model(ModelConfig(preset="micro", patch_size=8), 8, 32, decoder_ratio=0.5)
    mask = TubeMask(0.75)(MaskContext(grid=GRID), torch.Generator().manual_seed(0))[None]
    video = torch.randn(1, 3, 8, 32, 32)
    full = model.eval()(video, mask)  # figures and validation: the full reconstruction
    assert full.decoded is mask and full.pred.shape[1] == int(mask.sum())
    torch.manual_seed(0)
    off = build_pretraining_model(ModelConfig(preset="micro", patch_size=8), 8, 32, decoder_ratio=1.0).train()
    assert off(video, mask).decoded is mask
    torch.testing.assert_close(off.eval()(video, mask).loss, full.loss)


def test_dual_masking_with_the_contrastive_objective_and_the_config_keys():
    torch.manual_seed(0)
    cfg = ContrastiveConfig(objective="mae+contrastive", proj_dim=16, text_projection=True)
    model = build_video_text_model(ModelConfig(preset="micro", patch_size=8), cfg, 8, 32, text_dim=24,
                                   decoder_ratio=0.25, decoder_mask="random").train()
    mask = torch.stack([TubeMask(0.75)(MaskContext(grid=GRID), torch.Generator().manual_seed(i)) for i in range(4)])
    out = model(torch.randn(4, 3, 8, 32, 32), mask, F.normalize(torch.randn(4, 24), dim=-1))
    assert out.pred.shape[1] == 12 and not (out.decoded & ~mask).any()
    out.loss.backward()
    assert MaskingConfig(decoder_ratio=0.5).decoder_mask == "running_cell"
    for bad in ({"decoder_ratio": 0.0}, {"decoder_ratio": 1.5}, {"decoder_mask": "cells"}):
        with pytest.raises(ConfigError, match="masking.decoder_"):
            MaskingConfig(**bad)


def test_the_pretraining_task_builds_the_model_with_the_run_options():
    from tgmae.config import load_config
    from tgmae.train.pretrain import PretrainTask

    cfg = load_config(overrides=["model.preset=micro", "masking.decoder_ratio=0.5", "masking.decoder_mask=random",
                                 "train.grad_checkpoint=true"])
    model = PretrainTask(cfg).build_model()
    assert (model.decoder_ratio, model.decoder_mask) == (0.5, "random")
    assert model.encoder.grad_checkpoint and model.decoder.grad_checkpoint
