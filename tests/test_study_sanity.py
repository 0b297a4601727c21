"""tgmae.study.sanity and tgmae.study.recon_check: the harness's pieces, and the fast learning checks (issue 14).

The fuller checks (CPU-minute budgets, figures) are benchmarks/sanity.py -> docs/sanity.md.
Fast checks use the micro preset on 48 px clips of the four "move" classes and fixed step
counts (not CPU budgets), so they are deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tgmae.study.recon_check import reconstruction_config, reconstruction_data
from tgmae.config import ConfigError
from tgmae.masking import TubeMask
from tgmae.models.factory import build_pretraining_model
from tgmae.study.sanity import (ORACLE_CAPTIONS, ClipSet, class_text_table, copy_mse, linear_probe, mae_errors, make_data, make_masks,
                                patch_mean_mse, pixel_mse, pretrain, render_clips, sanity_config, to_input,
                                train_supervised, visible_mean_mse, zero_shot_retrieval)


def config(*overrides, num_train=64, frames=4, size=32, steps=10, warmup_steps=5, **kw):
    return sanity_config(list(overrides), num_train=num_train, frames=frames, size=size, steps=steps,
                         warmup_steps=warmup_steps, **kw)


def mae_of(cfg):
    return build_pretraining_model(cfg.model, cfg.data.num_frames, cfg.data.image_size, cfg.data.mean, cfg.data.std)


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


def test_sanity_config_is_a_run_config_with_the_step_plan():
    cfg = config("optim.lr=3e-3", "train.batch_size=8", "model.patch_size=16", num_train=100, steps=30, warmup_steps=6)
    # 12 steps per epoch: 3 epochs cut at 30 steps; warmup 6 steps; constant lr after it
    assert (cfg.train.max_steps, cfg.train.epochs, cfg.train.log_every) == (30, 3, 3)
    assert cfg.optim.warmup_epochs == pytest.approx(0.5) and cfg.optim.min_lr == cfg.optim.lr == 3e-3
    assert cfg.model.preset == "micro" and cfg.model.norm_pix_loss is False and cfg.optim.clip_grad is None
    with pytest.raises(ConfigError, match="masking.ratio"):
        config("model.patch_size=16", "masking.ratio=0")
    with pytest.raises(ConfigError, match="captions.file"):  # InfoNCE needs the oracle texts' stand-in
        config("model.patch_size=16", "contrastive.objective=contrastive")


def test_clip_set_items_are_seeded_by_seed_epoch_and_index():
    clips, labels = render_clips(4, frames=4, size=32, classes=[1, 2])
    cfg = config("model.patch_size=16")
    a, b = ClipSet(clips, labels, shift=2, masking=cfg), ClipSet(clips, labels, shift=2, masking=cfg)
    first = a[1]
    assert first["video"].shape == (3, 4, 32, 32) and first["mask"].shape == (8,) and first["mask"].sum() == 6
    assert first["label"] == first["caption_id"] == 2 and first["index"] == 1
    assert torch.equal(first["video"], b[1]["video"]) and torch.equal(first["mask"], b[1]["mask"])
    b.set_epoch(1)
    assert not torch.equal(first["video"], b[1]["video"]) or not torch.equal(first["mask"], b[1]["mask"])
    assert torch.equal(ClipSet(clips, labels)[1]["video"], to_input(clips[1:2])[0])  # no shift: the clip as is
    assert isinstance(TubeMask(0.5), type(ClipSet(clips, labels, masking=cfg).make_mask))


def test_masks_of_the_config_and_the_patch_mean_baseline():
    g = torch.Generator().manual_seed(0)
    cfg = config("model.patch_size=8", frames=4, size=32)  # 2 x 4 x 4 tokens, tube .75
    m = make_masks(cfg, 3, g)
    assert m.shape == (3, 32) and (m.sum(1) == 24).all() and torch.equal(m[:, :16], m[:, 16:])
    cfg = config("model.patch_size=16", frames=4, size=32)
    mae = mae_of(cfg)
    video = to_input(torch.randint(0, 256, (3, 4, 32, 32, 3), dtype=torch.uint8, generator=g))
    mask = make_masks(cfg, 3, g)
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
    r = make_masks(config("model.patch_size=8", "masking.name=random", "masking.ratio=0.5"), 3, g)
    assert r.shape == (3, 32) and (r.sum(1) == 16).all() and not torch.equal(r[:, :16], r[:, 16:])
    cfg = config("model.patch_size=16", "masking.name=random", "masking.ratio=0.5")
    errs = mae_errors(mae, torch.randint(0, 256, (5, 4, 32, 32, 3), dtype=torch.uint8, generator=g), cfg, batch=2)
    assert set(errs) == {"mse", "patch_mean_mse", "visible_mean_mse", "copy_mse"}
    assert errs["patch_mean_mse"] <= errs["visible_mean_mse"]  # the oracle mean is the best constant per token


def test_copy_baseline_copies_from_the_nearest_slice():
    # 2 clips of 8 frames (4 slices of 2x2 tokens), every frame the same picture: copying a masked
    # token from the same place in another slice is exact, except where that place is masked in
    # every slice (token 0 here), which gets the clip's visible mean colour
    g = torch.Generator().manual_seed(0)
    mae = mae_of(config("model.patch_size=16", frames=8, size=32))
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
    tube = make_masks(config("model.patch_size=16", "masking.ratio=0.5", frames=8, size=32), 2, g)
    assert copy_mse(mae, video, tube) == pytest.approx(visible_mean_mse(mae, video, tube), rel=1e-5)


def test_pixel_mse_compares_a_normalized_target_in_pixels():
    # norm_pix_loss: a zero prediction is each patch's true mean in pixels, so its pixel MSE is the
    # patch-mean baseline; without it a zero prediction is black, missing each pixel by its value
    g = torch.Generator().manual_seed(0)
    video = to_input(torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8, generator=g))
    mask = make_masks(config("model.patch_size=16", "masking.name=random", "masking.ratio=0.5"), 2, g)
    for norm in (True, False):
        mae = mae_of(config("model.patch_size=16", f"model.norm_pix_loss={str(norm).lower()}")).eval()
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
    assert "masking.name=random" in rec["settings"]["run"] and rec["settings"]["data"]["static_camera"] is True
    assert (tmp_path / rec["figure"]).stat().st_size > 5000
    assert 0 < rec["cpu_s"] and rec["ratio"] == pytest.approx(rec["mse"] / rec["patch_mean_mse"])
    # the baselines are the harness's, on the recipe's held-out clips and masks
    cfg = recon_check.reconstruction_config(steps=3)
    assert cfg.train.max_steps == 3 and cfg.masking.name == "random" and cfg.masking.ratio == 0.5
    want = sanity.mae_errors(sanity.pretrain(recon_check.reconstruction_data(), cfg)["mae"],
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
    (measured: train 96.9%; held-out 43.8% - 64 clips are too few to generalise from)."""
    res = train_supervised(moves, config(num_train=64, frames=8, size=48, steps=200))
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
    return train_supervised(learnable, config(num_train=400, frames=8, size=48, steps=600, warmup_steps=20))


@pytest.mark.slow
def test_supervised_generalises_on_the_learnable_set(supervised_600):
    """(c): 400 clips of all 10 classes without distractors, 600 steps: held-out top-1 well above
    chance (10%; measured 56.5% on the library's loop, the first harness 45.5%; benchmarks/sanity.py:
    60.5% at 900 steps)."""
    assert supervised_600["steps"] == 600 and supervised_600["val_top1"] >= 0.35, supervised_600


def test_contrastive_with_oracle_text_fits_its_captions(moves):
    """(a), fast: InfoNCE alone against distinct class texts falls well under its chance level
    and the frozen encoder separates the training clips' classes (measured: InfoNCE 1.23 vs
    chance 1.97, probe train 96.9%). Held-out: see docs/sanity.md (not reached)."""
    res = pretrain(moves, config("contrastive.objective=contrastive", "contrastive.proj_dim=32",
                                 f"captions.file={ORACLE_CAPTIONS}", num_train=64, frames=8, size=48, steps=150))
    # chance with 4 distinct captions in a batch of 16: (log 4 + log 13) / 2
    chance = 0.5 * (np.log(4) + np.log(13))
    assert res["loss_nce"] < 0.75 * chance, res["loss_nce"]
    assert linear_probe(res["mae"].encoder, moves)["train_top1"] >= 0.9
    # ... and the trained heads retrieve the training clips' class texts zero-shot (a random
    # ranking's band over 64 clips and the 4 classes' texts is 14-36%)
    table = class_text_table(moves.num_classes, 32)
    r = zero_shot_retrieval(res["model"], moves.train, moves.train_labels, table[:4])
    assert r.video_to_text[1] >= 0.6 and not r.at_chance("video_to_text", 1), r.summary()


@pytest.fixture(scope="module")
def contrastive_unmasked(learnable):
    """InfoNCE alone against distinct class texts on the unmasked clip (contrastive.view_ratio=0),
    400 clips of all 10 classes, 600 steps on the library's loop: (model, its linear probe, the
    class texts [K, 64] it was trained against)."""
    torch.set_num_threads(1)
    table = class_text_table(learnable.num_classes, 64)  # at the harness's contrastive.proj_dim
    res = pretrain(learnable, config("contrastive.objective=contrastive", "contrastive.view_ratio=0",
                                     f"captions.file={ORACLE_CAPTIONS}", num_train=400, frames=8, size=48, steps=600,
                                     warmup_steps=20), table)
    return res["model"], linear_probe(res["mae"].encoder, learnable), table


@pytest.mark.slow
def test_contrastive_with_oracle_text_learns_the_class_unmasked(contrastive_unmasked, supervised_600):
    """(a), at the ratio where it holds, with the issue's bar: InfoNCE alone against distinct class
    texts on the unmasked clip (contrastive.view_ratio=0: InfoNCE pools a pass over the whole
    clip), 400 clips of all 10 classes, 600 steps (~22 CPU-s, 1 thread): the linear probe reaches
    at least half the held-out top-1 of supervised training on the same clips at the same 600
    steps (~16 CPU-s). Measured on the library's loop: probe 33% (train 91.8%) vs supervised 56.5%,
    0.58x (the first harness: 0.56x, seeds 1 / 2 0.56x / 0.77x). At mask ratio .75 the probe stays
    near chance (docs/sanity.md). The guard sits at 0.45x, under the issue's 0.5x: another CPU's
    float order changes the trajectory, and 0.58x is 8 held-out clips above 0.5x."""
    _, probe, _ = contrastive_unmasked
    assert probe["train_top1"] >= 0.8, probe
    assert probe["val_top1"] >= 0.45 * supervised_600["val_top1"], (probe, supervised_600["val_top1"])


@pytest.mark.slow
def test_zero_shot_retrieval_reads_what_the_contrastive_branch_learnt(contrastive_unmasked, learnable):
    """The retrieval check (issue 27), at the budget of the check above (600 steps, ~16 CPU-s): the
    trained heads retrieve the 200 held-out clips' class texts beyond a random ranking's 95% band
    (6.0-14.5%) and no more than 5 points below the linear probe of the same frozen encoder (the
    study's target relation). Measured on the library's loop: V->T R@1 28.0%, probe 33.0%: exactly
    at the 5-point bar, so the guard allows one held-out clip (0.5 points) of float-order slack
    (the first harness: R@1 27.0%, probe 25.5%)."""
    model, probe, table = contrastive_unmasked
    r = zero_shot_retrieval(model, learnable.val, learnable.val_labels, table)
    assert not r.at_chance("video_to_text", 1) and r.video_to_text[1] > r.chance["video_to_text"][1].hi, r.summary()
    assert r.video_to_text[1] >= probe["val_top1"] - 0.05 - 1 / len(learnable.val_labels), (r.video_to_text, probe)


@pytest.mark.slow
def test_mae_reconstructs_more_than_patch_means_on_a_static_background():
    """(b): on clips whose background is the same in every frame (static_camera) under random
    masks, a masked token shows at the same place in another time slice; MAE learns to use it and
    its held-out masked MSE goes clearly below the oracle that predicts every masked token's true
    mean colour. 200 clips at 40 px, 10 px patches (4x4 tokens per slice), the micro encoder (64
    wide, 2 blocks) and a 1-block 64-wide decoder (4 heads), batch 8, lr 3e-3, ratio .5, 3,200
    steps (~55 CPU-s, 1 thread; no per-step baselines). Measured on the library's loop: held-out
    0.0122 vs patch means 0.0148 (0.82x); seeds 1 / 2 (same data): 0.75x / 0.77x (the first
    harness, 1-block encoder: 0.75x, 0.86x / 0.79x; at 2,000 / 2,600 steps 0.92x / 0.83x - the
    plateau at the visible mean lasts ~1,500 steps, which is why this check cannot be shorter).
    Asserted: <= 0.9x the patch means (every seed measured passes; the plateau's end moves with
    tiny numeric differences) and below the visible-mean baseline."""
    torch.set_num_threads(1)
    data = reconstruction_data()  # the recipe `reconstruction_check` (and so `tgmae study`) runs
    cfg = reconstruction_config(steps=3200)
    res = pretrain(data, cfg)
    assert res["steps"] == 3200
    errs = mae_errors(res["mae"], data.val, cfg)
    assert errs["mse"] <= 0.9 * errs["patch_mean_mse"] and errs["mse"] < errs["visible_mean_mse"], errs


def test_repeated_sampling_gives_k_views_per_clip_on_the_loop(moves):
    """data.num_sample=4: a ClipSet item is 4 views of one clip (own shift and mask; view 0 = the
    k = 1 item), batches of 4 clips are 16 rows, and a run trains on the library's loop."""
    clips, labels = moves.train[:4], moves.train_labels[:4]
    geo = dict(frames=8, size=48)
    one = ClipSet(clips, labels, shift=2, masking=config("masking.ratio=0.5", **geo))
    four = ClipSet(clips, labels, shift=2, masking=config("masking.ratio=0.5", "data.num_sample=4", **geo))
    item = four[1]
    assert len(item["video"]) == len(item["mask"]) == 4 and four.num_sample == 4
    assert torch.equal(item["video"][0], one[1]["video"]) and torch.equal(item["mask"][0], one[1]["mask"])
    assert len({tuple(m.tolist()) for m in item["mask"]}) > 1  # 4 masks, not one repeated
    batch = four.collate([four[i] for i in range(4)])
    assert batch["video"].shape[0] == 16 and batch["index"].tolist() == [i for i in range(4) for _ in range(4)]
    res = pretrain(moves, config("data.num_sample=2", steps=3, **geo))
    assert res["steps"] == 3 and np.isfinite(res["loss_mse"])
