"""tgmae.study.sanity and tgmae.study.recon_check: the harness's pieces, and the fast learning checks (issue 14).

The fuller checks (CPU-minute budgets, figures) are benchmarks/sanity.py -> docs/sanity.md.
Fast checks use a smaller model on 48 px clips of the four "move" classes and fixed step
counts (not CPU budgets), so they are deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tgmae.study.recon_check import reconstruction_config, reconstruction_data
from tgmae.study.sanity import (SanityRun, copy_mse, linear_probe, mae_errors, make_arch, make_data, patch_mean_mse,
                                pixel_mse, pretrain, random_masks, render_clips, to_input, train_supervised, tube_masks,
                                visible_mean_mse)
from tgmae.models.pretrainer import VideoMAEPretrainer

MICRO = dict(embed_dim=64, depth=2, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=1)
FAST = dict(budget_s=1e9, patch_size=12, arch=MICRO, batch_size=16, shift=2, warmup_steps=5)


@pytest.fixture(scope="module")
def moves():
    torch.set_num_threads(1)
    return make_data(64, 32, size=48, frames=8, classes=[0, 1, 2, 3])


def test_render_clips_is_deterministic_and_follows_the_knobs():
    a, la = render_clips(6, frames=4, size=48, seed=1, classes=[2, 5])
    b, lb = render_clips(6, frames=4, size=48, seed=1, classes=[2, 5])
    assert a.shape == (6, 4, 48, 48, 3) and a.dtype == torch.uint8
    assert torch.equal(a, b) and lb.tolist() == [2, 5, 2, 5, 2, 5]
    hard, _ = render_clips(6, frames=4, size=48, seed=1, classes=[2, 5], distractors=2)
    assert not torch.equal(a, hard)  # some of these scenes draw distractors, which the easy set drops


def test_tube_masks_and_patch_mean_baseline():
    g = torch.Generator().manual_seed(0)
    m = tube_masks(3, (2, 4, 4), 0.75, g)
    assert m.shape == (3, 32) and (m.sum(1) == 24).all() and torch.equal(m[:, :16], m[:, 16:])
    cfg = SanityRun(patch_size=16, arch=MICRO)
    mae = VideoMAEPretrainer(make_arch(cfg, 4, 32))
    video = to_input(torch.randint(0, 256, (3, 4, 32, 32, 3), dtype=torch.uint8, generator=g))
    mask = tube_masks(3, mae.arch.grid, 0.75, g)
    # by hand: pixels in [0, 1], each masked token's values per channel minus their mean
    pix = video.permute(0, 2, 3, 4, 1) * 0.25 + 0.5  # [B, T, H, W, C]
    tok = pix.reshape(3, 2, 2, 2, 16, 2, 16, 3).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(3, 8, -1, 3)
    sel = tok[mask]  # [B * N_masked, t*p*p, C]
    want = float(((sel - sel.mean(1, keepdim=True)) ** 2).mean())
    assert patch_mean_mse(video, mask, mae.arch) == pytest.approx(want, rel=1e-4)
    # visible-mean baseline: every masked pixel predicted as the clip's visible tokens' mean colour
    colour = torch.stack([tok[b][~mask[b]].mean(dim=(0, 1)) for b in range(3)])  # [B, C]
    want = float(((tok - colour[:, None, None, :]) ** 2)[mask].mean())
    assert visible_mean_mse(mae, video, mask) == pytest.approx(want, rel=1e-4)
    r = random_masks(3, (2, 4, 4), 0.5, g)
    assert r.shape == (3, 32) and (r.sum(1) == 16).all() and not torch.equal(r[:, :16], r[:, 16:])
    cfg = SanityRun(patch_size=16, arch=MICRO, mask_kind="random", mask_ratio=0.5)
    errs = mae_errors(mae, torch.randint(0, 256, (5, 4, 32, 32, 3), dtype=torch.uint8, generator=g), cfg, batch=2)
    assert set(errs) == {"mse", "patch_mean_mse", "visible_mean_mse", "copy_mse"}
    assert errs["patch_mean_mse"] <= errs["visible_mean_mse"]  # the oracle mean is the best constant per token


def test_copy_baseline_copies_from_the_nearest_slice():
    # 2 clips of 8 frames (4 slices of 2x2 tokens), every frame the same picture: copying a masked
    # token from the same place in another slice is exact, except where that place is masked in
    # every slice (token 0 here), which gets the clip's visible mean colour
    g = torch.Generator().manual_seed(0)
    cfg = SanityRun(patch_size=16, arch=MICRO)
    mae = VideoMAEPretrainer(make_arch(cfg, 8, 32))
    still = torch.randint(0, 256, (2, 1, 32, 32, 3), dtype=torch.uint8, generator=g).expand(-1, 8, -1, -1, -1)
    video = to_input(still)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :, 0] = True  # place 0 masked in all 4 slices
    mask[:, 0, 1:] = True  # places 1-3 masked in slice 0 only: copied from slice 1
    mask[:, 2, 1] = True  # and place 1 in slice 2: slice 1 and 3 are equally near
    mask = mask.reshape(2, 16)
    pix = video.permute(0, 2, 3, 4, 1) * 0.25 + 0.5  # [B, T, H, W, C] in [0, 1]
    tok = pix.reshape(2, 4, 2, 2, 16, 2, 16, 3).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(2, 16, -1, 3)
    colour = torch.stack([tok[b][~mask[b]].mean(dim=(0, 1)) for b in range(2)])  # [B, C]
    err = torch.zeros(2, 16, tok.shape[2], 3)
    err[:, 0::4] = (tok[:, 0::4] - colour[:, None, None]) ** 2  # place 0 of each slice
    want = float(err[mask].mean())
    assert copy_mse(mae, video, mask) == pytest.approx(want, rel=1e-4)
    # a tube mask leaves no copy: the rule falls back to the visible-mean baseline
    tube = tube_masks(2, mae.arch.grid, 0.5, g)
    assert copy_mse(mae, video, tube) == pytest.approx(visible_mean_mse(mae, video, tube), rel=1e-5)


def test_pixel_mse_compares_a_normalized_target_in_pixels():
    # norm_pix_loss: a zero prediction is each patch's true mean in pixels, so its pixel MSE is the
    # patch-mean baseline; without it a zero prediction is black, missing each pixel by its value
    g = torch.Generator().manual_seed(0)
    video = to_input(torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8, generator=g))
    mask = random_masks(2, (2, 2, 2), 0.5, g)
    for norm in (True, False):
        mae = VideoMAEPretrainer(make_arch(SanityRun(patch_size=16, arch=MICRO, norm_pix_loss=norm), 4, 32)).eval()
        torch.nn.init.zeros_(mae.decoder.head.weight)
        torch.nn.init.zeros_(mae.decoder.head.bias)
        pixels = video * 0.25 + 0.5  # [B, C, T, H, W] in [0, 1]
        tok = pixels.permute(0, 2, 3, 4, 1).reshape(2, 2, 2, 2, 16, 2, 16, 3).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(2, 8, -1)
        want = patch_mean_mse(video, mask, mae.arch) if norm else float((tok[mask] ** 2).mean())
        assert pixel_mse(mae, video, mask) == pytest.approx(want, rel=1e-4)


def test_reconstruction_check_writes_its_numbers_reuses_them_and_refuses_other_settings(tmp_path, monkeypatch):
    import json

    from tgmae.config import ConfigError
    from tgmae.study import recon_check, sanity

    torch.set_num_threads(1)
    rec = recon_check.reconstruction_check(tmp_path, steps=3)
    saved = json.loads((tmp_path / "reconstruction_check.json").read_text())
    assert saved == rec and rec["steps"] == 3 and rec["settings"]["steps"] == 3 and rec["settings"]["seed"] == 0
    assert rec["settings"]["run"]["mask_kind"] == "random" and rec["settings"]["data"]["static_camera"] is True
    assert (tmp_path / rec["figure"]).stat().st_size > 5000
    assert 0 < rec["cpu_s"] and rec["ratio"] == pytest.approx(rec["mse"] / rec["patch_mean_mse"])
    # the baselines are the harness's, on the recipe's held-out clips and masks
    cfg = recon_check.reconstruction_config(steps=3)
    assert cfg.max_steps == 3 and cfg.mask_kind == "random" and cfg.mask_ratio == 0.5
    want = sanity.mae_errors(sanity.pretrain(recon_check.reconstruction_data(), cfg)["model"].mae,
                             recon_check.reconstruction_data().val, cfg)
    assert {k: rec[k] for k in want} == pytest.approx(want, rel=1e-4)
    # a rerun with the same settings reads the JSON and trains nothing
    monkeypatch.setattr(sanity, "pretrain", lambda *a, **k: pytest.fail("retrained"))
    assert recon_check.reconstruction_check(tmp_path, steps=3) == rec
    assert recon_check.reconstruction_check(tmp_path, steps=np.int64(3), seed=np.int64(0)) == rec  # numpy integers too
    # other settings: refused, naming the key; never the other run's numbers
    with pytest.raises(ConfigError, match=r"other settings \(steps: 3 -> 4\)"):
        recon_check.reconstruction_check(tmp_path, steps=4)
    with pytest.raises(ConfigError, match=r"other settings \(seed: 0 -> 1\)"):
        recon_check.reconstruction_check(tmp_path, steps=3, seed=1)
    with pytest.raises(ValueError, match="steps=0"):
        recon_check.reconstruction_check(tmp_path / "new", steps=0)
    for bad in (2.5, True, "50"):  # not silently rounded or compared as text
        with pytest.raises(ValueError, match=r"steps=.*must be an integer >= 1"):
            recon_check.reconstruction_check(tmp_path / "new", steps=bad)
    with pytest.raises(ValueError, match="seed=-1"):
        recon_check.reconstruction_check(tmp_path / "new", steps=3, seed=-1)
    assert not (tmp_path / "new").exists()


def test_supervised_fits_a_small_set(moves):
    """(c), fast: cross-entropy from scratch fits 64 clips of the four "move" classes in 200 steps
    (measured: train 100%; held-out 28% - 64 clips are too few to generalise from)."""
    res = train_supervised(moves, SanityRun(**FAST, max_steps=200))
    assert res["steps"] == 200 and res["train_top1"] >= 0.9, res


@pytest.fixture(scope="module")
def learnable():
    """400 / 200 clips of all 10 classes without distractors (the benchmark's learnable set)."""
    torch.set_num_threads(1)
    return make_data(400, 200, size=48, frames=8)


@pytest.fixture(scope="module")
def supervised_600(learnable):
    """Cross-entropy from scratch, 600 steps (~15 CPU-s, 1 thread): the bar of two slow checks."""
    torch.set_num_threads(1)
    return train_supervised(learnable, SanityRun(**(FAST | {"warmup_steps": 20}), max_steps=600))


@pytest.mark.slow
def test_supervised_generalises_on_the_learnable_set(supervised_600):
    """(c): 400 clips of all 10 classes without distractors, 600 steps: held-out top-1 well above
    chance (10%; measured 45.5%, seeds 1 / 2: 52% / 41.5%; benchmarks/sanity.py: 52.5% at 900
    steps)."""
    assert supervised_600["steps"] == 600 and supervised_600["val_top1"] >= 0.35, supervised_600


def test_contrastive_with_oracle_text_fits_its_captions(moves):
    """(a), fast: InfoNCE alone against distinct class texts falls well under its chance level
    and the frozen encoder separates the training clips' classes (measured: InfoNCE 1.24 vs
    chance 1.97, probe train 98%). Held-out: see docs/sanity.md (not reached)."""
    res = pretrain(moves, SanityRun(**FAST, max_steps=150, objective="contrastive", proj_dim=32))
    # chance with 4 distinct captions in a batch of 16: (log 4 + log 13) / 2
    chance = 0.5 * (np.log(4) + np.log(13))
    assert res["loss_nce"] < 0.75 * chance, res["loss_nce"]
    assert linear_probe(res["model"].mae.encoder, moves)["train_top1"] >= 0.9


@pytest.mark.slow
def test_contrastive_with_oracle_text_learns_the_class_unmasked(learnable, supervised_600):
    """(a), at the ratio where it holds, with the issue's bar: InfoNCE alone against distinct class
    texts on unmasked clips (mask ratio 0), 400 clips of all 10 classes, 600 steps (~16 CPU-s,
    1 thread): the linear probe reaches at least half the held-out top-1 of supervised training
    on the same clips at the same 600 steps (~15 CPU-s, the same budget). Measured: probe 25.5%
    (train 96.5%) vs supervised 45.5%, 0.56x; seeds 1 / 2 of init and order: 29% vs 52% (0.56x),
    32% vs 41.5% (0.77x). At mask ratio .75 the probe stays near chance (docs/sanity.md).
    The guard sits at 0.45x, under the issue's 0.5x, which all three seeds meet: another CPU's
    float order changes the trajectory, and 0.56x is 5 held-out clips above 0.5x."""
    torch.set_num_threads(1)
    res = pretrain(learnable, SanityRun(**(FAST | {"warmup_steps": 20}), max_steps=600, objective="contrastive",
                                        mask_ratio=0.0))
    probe = linear_probe(res["model"].mae.encoder, learnable)
    assert probe["train_top1"] >= 0.8, probe
    assert probe["val_top1"] >= 0.45 * supervised_600["val_top1"], (probe, supervised_600["val_top1"])


@pytest.mark.slow
def test_mae_reconstructs_more_than_patch_means_on_a_static_background():
    """(b): on clips whose background is the same in every frame (static_camera) under random
    masks, a masked token shows at the same place in another time slice; MAE learns to use it and
    its held-out masked MSE goes clearly below the oracle that predicts every masked token's true
    mean colour. 200 clips at 40 px, 10 px patches (4x4 tokens per slice), a 1-block 64-wide
    encoder and a 1-block 64-wide decoder (4 heads), batch 8, lr 3e-3, ratio .5, 3,200 steps
    (~50 CPU-s, 1 thread; the harness's per-step baselines are off). Measured: held-out 0.0110 vs
    patch means 0.0147 (0.75x; 2,000 / 2,600 steps: 0.92x / 0.83x - the plateau at the visible
    mean lasts ~1,500 steps, which is why this check cannot be shorter); seeds 1 / 2 (same data):
    0.86x / 0.79x. Asserted: <= 0.9x the patch means (every seed measured passes; the plateau's
    end moves with tiny numeric differences) and below the visible-mean baseline."""
    torch.set_num_threads(1)
    data = reconstruction_data()  # the recipe `reconstruction_check` (and so `tgmae study`) runs
    cfg = reconstruction_config(steps=3200)
    res = pretrain(data, cfg)
    assert res["steps"] == 3200
    errs = mae_errors(res["model"].mae, data.val, cfg)
    assert errs["mse"] <= 0.9 * errs["patch_mean_mse"] and errs["mse"] < errs["visible_mean_mse"], errs


def test_repeated_sampling_takes_a_quarter_of_the_clips_each_k_times(moves, monkeypatch):
    """num_sample=4: a step's 16 clips come 4 times each (64 rows, each view its own shift and
    mask), as the training loop counts its batch in videos: the same views in a quarter of the passes."""
    from tgmae.study import sanity

    seen = []
    real = sanity.to_input

    def spy(clips, shift=0, generator=None):
        seen.append(clips.clone())
        return real(clips, shift, generator)

    monkeypatch.setattr(sanity, "to_input", spy)
    res = sanity.pretrain(moves, SanityRun(**FAST, max_steps=3, num_sample=4, objective="mae", baselines=False))
    assert res["steps"] == 3 and [c.shape[0] for c in seen] == [64, 64, 64]
    for clips in seen:  # rows 4v..4v+3 are one clip
        groups = clips.reshape(16, 4, *clips.shape[1:])
        assert all(torch.equal(g[0], g[j]) for g in groups for j in range(1, 4))
        assert len({g[0].sum().item() for g in groups}) > 1
    with pytest.raises(ValueError, match="num_sample=0"):
        SanityRun(**FAST, num_sample=0)
