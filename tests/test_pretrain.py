"""Pretraining end to end on real (synthetic) H.264 videos: the demo path, outputs, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tgmae.config import load_config
from tgmae.data.synthetic import generate_synthetic_dataset
from tgmae.weights import checkpoint as ckpt
from tgmae.train.metrics import read_metrics
from tgmae.train.pretrain import pretrain
from tgmae.weights.model_card import run_config
from conftest import once

SMALL = [
    "data.format=csv", "data.train_annotations=train.csv", "data.num_frames=4", "data.frame_stride=2",
    "data.image_size=32", "data.flip=false", "data.num_workers=0", "model.preset=tiny",
    "masking.name=tube", "masking.ratio=0.75", "train.batch_size=4", "train.epochs=2",
    "train.precision=fp32", "train.log_every=1", "log.progress=false", "log.tensorboard=false",
    "optim.base_lr=1e-3", "checkpoint.every_steps=2",
]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_dataset(root, num_videos=12, frames=12, size=64, seed=3, val_fraction=0.0)
    return root


def cfg_for(synth_root: Path, out: Path, *extra: str):
    return load_config(None, SMALL + [f"data.root={synth_root}", f"train.output_dir={out}", *extra])


def pretrain_killed_at(cfg, step: int) -> None:
    """Pretrain `cfg` and stop it as a kill would, as step `step` begins (its checkpoints kept)."""
    from conftest import Killed, kill_at

    with pytest.raises(Killed):
        pretrain(cfg, hooks=[kill_at(step)])


def test_pretrain_writes_model_metrics_and_figures(synth_root, tmp_path):
    from tgmae.weights.pretraining import load_pretraining_model

    run = pretrain(cfg_for(synth_root, tmp_path / "run"))
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # 12 videos / batch 4 x 2 epochs
    assert all(r["load_failures"] == 0 and r["loss"] > 0 for r in records)
    for name in ("loss_curve.png", "reconstruction.png", "reconstruction.gif", "config.yaml"):
        assert (run / name).stat().st_size > 1000, name
    model = load_pretraining_model(run / "model.safetensors")
    latest = ckpt.load_checkpoint(ckpt.find_latest(run / "checkpoints"))
    assert latest.position.step == 6
    for k, v in model.state_dict().items():
        assert torch.equal(v, latest.model_state[k]), k
    # re-trial 24B S3: the clip settings it was trained at travel with the file, out of its run and
    # through `tgmae convert` (evaluate, visualize and export-hf read them where no run folder is)
    from tgmae.weights.convert import convert
    from tgmae.weights.model_card import recorded_settings, section_settings

    shutil.copy(run / "model.safetensors", tmp_path / "copied.safetensors")
    convert(tmp_path / "copied.safetensors", tmp_path / "converted.safetensors")
    for name in ("copied", "converted"):
        settings, where = recorded_settings(tmp_path / f"{name}.safetensors")
        assert settings == section_settings("data", run_config(run)[0].data) and where.endswith(f"{name}.safetensors")
        # re-trial 30B S3: and the masking it was trained under (`visualize recon` of the file draws it)
        assert recorded_settings(tmp_path / f"{name}.safetensors", "masking")[0] == section_settings("masking", 
            run_config(run)[0].masking)


@pytest.mark.parametrize("views", [[], ["data.num_sample=4"], ["data.num_sample=4", "data.repeat_mode=clips"]],
                         ids=["k1", "k4_views", "k4_clips"])
def test_pretrain_resume_after_kill_matches_uninterrupted(synth_root, tmp_path, views):
    """Video decode, augmentation and masks (k views per video too) are re-drawn identically
    after a resume: bit-identical weights."""
    ref = pretrain(cfg_for(synth_root, tmp_path / "ref", *views))
    cfg = cfg_for(synth_root, tmp_path / "killed", *views)
    pretrain_killed_at(cfg, 3)
    assert ckpt.find_latest(tmp_path / "killed" / "checkpoints").name == "step_00000002"
    resumed = pretrain(cfg)
    a = ckpt.load_checkpoint(ckpt.find_latest(ref / "checkpoints")).model_state
    b = ckpt.load_checkpoint(ckpt.find_latest(resumed / "checkpoints")).model_state
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_views_count_for_lr_logs_and_effective_epochs(synth_root, tmp_path):
    """data.num_sample=2: batches hold 2 x 4 views, the lr is scaled for 8 clips per step, the
    records give effective epochs (passes x 2) and views per second; figures draw view 0."""
    run = pretrain(cfg_for(synth_root, tmp_path / "run", "data.num_sample=2", "optim.warmup_epochs=0"))
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # the batch stays 4 videos
    assert records[0]["lr"] == pytest.approx(1e-3 * 8 / 256)
    assert records[2]["effective_epoch"] == pytest.approx(2.0) and records[-1]["effective_epoch"] == pytest.approx(4.0)
    assert (run / "reconstruction.png").stat().st_size > 1000


def test_corrupt_video_is_counted_not_fatal(synth_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    victim = sorted((root / "videos").glob("*.mp4"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated file
    run = pretrain(cfg_for(root, tmp_path / "run", "train.epochs=1"))
    records = read_metrics(run / "metrics.jsonl")
    assert records[-1]["load_failures"] >= 1


@pytest.mark.parametrize("objective,views", [("mae", 1), ("mae+contrastive", 1), ("contrastive", 1),
                                             ("mae+contrastive", 2)])
def test_pretrain_with_captions_logs_infonce(synth_root, tmp_path, objective, views):
    """Captions -> cached CLIP text embeddings -> InfoNCE logged in every objective (Figure 4);
    with 2 views per video (one caption each video: views are not each other's negatives)."""
    from tgmae.captions.tiny import save_tiny_clip
    from tgmae.weights.pretraining import load_pretraining_model

    clip_dir = save_tiny_clip(tmp_path / "clip")
    cfg = cfg_for(synth_root, tmp_path / "run", "train.epochs=1", f"data.num_sample={views}",
                  f"captions.file={synth_root / 'captions.jsonl'}", f"captions.clip_model={clip_dir}",
                  f"contrastive.objective={objective}", "contrastive.text_projection=true",
                  "contrastive.proj_dim=32", "contrastive.monitor_nce=true")
    run = pretrain(cfg)
    records = read_metrics(run / "metrics.jsonl")
    assert all(r["loss_nce"] > 0 for r in records)
    if objective == "contrastive":
        assert all("loss_mse" not in r for r in records)
        assert records[0]["loss"] == pytest.approx(records[0]["loss_nce"])
    elif objective == "mae":
        assert records[0]["loss"] == pytest.approx(records[0]["loss_mse"])
    else:
        assert records[0]["loss"] == pytest.approx(records[0]["loss_mse"] + records[0]["loss_nce"], rel=1e-5)
    assert load_pretraining_model(run / "model.safetensors").arch.num_frames == 4


def test_batch_mask_generator_runs_in_step(synth_root, tmp_path):
    """A batch generator (online TGM on a GPU) bypasses the workers and masks in `step`."""
    from tgmae.masking import MaskContext, TubeMask
    from tgmae.train.pretrain import PretrainTask

    class BatchTube:
        batched, ratio = True, 0.5
        calls = 0

        def __call__(self, video, text, grid, generator=None):
            BatchTube.calls += 1
            tube = TubeMask(self.ratio)
            return torch.stack([tube(MaskContext(grid=grid), generator) for _ in range(video.shape[0])])

    cfg = cfg_for(synth_root, tmp_path / "run", "train.epochs=1")
    task = PretrainTask(cfg)
    dataset = task.train_dataset()
    task.batch_masker = BatchTube()
    dataset.mask_generator = None
    batch = torch.utils.data.default_collate([dataset[i] for i in range(4)])
    assert "mask" not in batch
    out = task.step(task.build_model(), batch)
    assert BatchTube.calls == 1 and torch.isfinite(out.loss)
    again = task._batch_mask(batch)
    assert torch.equal(again, task._batch_mask(batch))  # seeded by the batch's sample indices
    assert int(again[0].sum()) == int(again[1].sum())


def test_batch_mask_generator_masks_every_view(synth_root, tmp_path):
    """Online (batch) masking with 2 views per video: one mask per view row of the flattened batch."""
    from tgmae.masking import MaskContext, TubeMask
    from tgmae.train.pretrain import PretrainTask

    shapes = []

    class BatchTube:
        batched, ratio = True, 0.5

        def __call__(self, video, text, grid, generator=None):
            shapes.append(tuple(video.shape))
            return torch.stack([TubeMask(self.ratio)(MaskContext(grid=grid), generator) for _ in range(video.shape[0])])

    task = PretrainTask(cfg_for(synth_root, tmp_path / "run", "data.num_sample=2"))
    dataset = task.train_dataset()
    task.batch_masker, dataset.mask_generator = BatchTube(), None
    batch = dataset.collate([dataset[i] for i in range(4)])
    out = task.step(task.build_model(), batch)
    assert shapes == [(8, 3, 4, 32, 32)] and torch.isfinite(out.loss)


def test_tgm_with_the_mae_objective_builds_no_contrastive_head(synth_root, tmp_path, capsys):
    """TGM, MAE only (Table 1): captions guide the masks; no video-text head is built or checked,
    whatever contrastive.proj_dim says. Under mae+contrastive a width mismatch is a config error."""
    from tgmae.captions.tiny import save_tiny_clip
    from tgmae.cli import main
    from tgmae.train.pretrain import PretrainTask

    clip_dir = save_tiny_clip(tmp_path / "clip")
    tgm = [f"captions.file={synth_root / 'captions.jsonl'}", f"captions.clip_model={clip_dir}",
           "masking.name=tgm", f"masking.clip_model={clip_dir}", "masking.ratio=0.6"]
    cfg = cfg_for(synth_root, tmp_path / "run", "train.epochs=1", *tgm)  # proj_dim 256 != text width
    task = PretrainTask(cfg)
    assert task.captions.embeddings.shape[1] != cfg.contrastive.proj_dim
    assert not any(k.startswith(("video_head", "nce", "text_proj")) for k in task.build_model().state_dict())
    records = read_metrics(pretrain(cfg) / "metrics.jsonl")
    assert records and all("loss_nce" not in r and r["loss"] > 0 for r in records)

    args = once(["pretrain", *SMALL, f"data.root={synth_root}", f"train.output_dir={tmp_path / 'both'}", "train.epochs=1",
                 *tgm, "contrastive.objective=mae+contrastive"])
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading bars
    assert last.startswith("tgmae pretrain: ") and "contrastive.proj_dim=256" in last and "text_projection=true" in last


def test_pretraining_from_a_checkpoint_of_other_geometry_is_a_config_error(synth_root, tmp_path):
    """Was a raw `size mismatch for encoder.patch_embed.proj.weight` traceback."""
    from safetensors.torch import load_file

    from tgmae.config import ConfigError, ModelConfig
    from tgmae.models import build_pretraining_model
    from tgmae.weights.pretraining import save_pretraining_model
    from tgmae.train.pretrain import PretrainTask

    torch.manual_seed(0)
    source = save_pretraining_model(build_pretraining_model(ModelConfig(preset="tiny"), 4, 32), tmp_path / "pt.safetensors")
    for override, message in [("model.tubelet_size=4", r"model\.tubelet_size=4 but the checkpoint .* has 2"),
                              ("model.decoder_depth=3", r"model\.decoder_depth=3 but the checkpoint .* has 2"),
                              ("model.preset=small", r"model\.preset='small' but the checkpoint .* has 'tiny'")]:
        cfg = cfg_for(synth_root, tmp_path / "run", f"model.pretrained={source}", override)
        with pytest.raises(ConfigError, match=message):
            PretrainTask(cfg).build_model()
    model = PretrainTask(cfg_for(synth_root, tmp_path / "run", f"model.pretrained={source}")).build_model()
    stored = load_file(str(source))
    assert all(torch.equal(v, stored[k]) for k, v in model.state_dict().items())  # same geometry: loaded


def test_pretraining_from_a_run_folder_loads_its_weights_file(synth_root, tmp_path, capsys):
    """Issue #28 re-trial 11, M1: model.pretrained=RUN refused a run folder ("pass RUN/model.safetensors")
    that finetune / probe read. Now it reads the file finetune does (`files.resolve_weights`); a finetune
    run's classifier holds no decoder: one line naming that file."""
    from safetensors.torch import load_file

    from tgmae.cli import main
    from tgmae.config import ModelConfig
    from tgmae.models import build_pretraining_model
    from tgmae.weights.classifier import build_classifier, save_classifier
    from tgmae.weights.pretraining import save_pretraining_model
    from tgmae.train.pretrain import PretrainTask

    torch.manual_seed(0)
    run = tmp_path / "pt"
    run.mkdir()
    source = save_pretraining_model(build_pretraining_model(ModelConfig(preset="tiny"), 4, 32), run / "model.safetensors")
    from_folder = PretrainTask(cfg_for(synth_root, tmp_path / "r1", f"model.pretrained={run}")).build_model()
    from_file = PretrainTask(cfg_for(synth_root, tmp_path / "r2", f"model.pretrained={source}")).build_model()
    stored = load_file(str(source))
    assert from_folder.state_dict().keys() == from_file.state_dict().keys()
    assert all(torch.equal(v, stored[k]) and torch.equal(v, from_file.state_dict()[k])
               for k, v in from_folder.state_dict().items())

    ft = tmp_path / "ft"
    ft.mkdir()
    save_classifier(build_classifier(source, num_classes=3), ft / "classifier.safetensors", ["a", "b", "c"])
    args = ["pretrain", *SMALL, f"data.root={synth_root}", f"train.output_dir={tmp_path / 'r3'}", f"model.pretrained={ft}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(ft / "classifier.safetensors") in err and "decoder" in err


def test_pretrain_into_a_finished_run_with_other_settings_exits_2(synth_root, tmp_path, capsys):
    """Was: 'resumed at step 3', trained nothing, kept the tube weights, rewrote config.yaml."""
    from tgmae.cli import main

    args = once(["pretrain", *SMALL, f"data.root={synth_root}", f"train.output_dir={tmp_path / 'run'}", "train.epochs=1"])
    assert main(args) == 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    capsys.readouterr()
    assert main(once([*args, "masking.name=random", "optim.lr=5e-4"])) == 2
    err = capsys.readouterr().err
    assert "  masking.name: 'tube' -> 'random'" in err and "  optim.lr: None -> 0.0005" in err
    assert "checkpoint.resume=ignore_config" in err and "Traceback" not in err
    assert (tmp_path / "run" / "config.yaml").read_text() == saved


def test_a_learning_rate_that_diverges_is_one_line(synth_root, tmp_path, capsys):
    """issue 28: optim.base_lr=1e12 ended in a 25-line traceback of NonFiniteLossError."""
    from tgmae.cli import main

    assert main(once(["pretrain", *SMALL, f"data.root={synth_root}", f"train.output_dir={tmp_path / 'run'}",
                      "train.epochs=1", "optim.base_lr=1e12", "optim.clip_grad=null"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite loss" in err[0] and "optim.base_lr" in err[0]


def test_a_clip_longer_than_every_video_leaves_no_run_folder(synth_root, tmp_path, capsys):
    """issue 28: refused by its data (16 frames asked, 12 in every video), a new run left its
    folder holding a config.yaml of settings that never ran."""
    from tgmae.cli import main

    out = tmp_path / "run"
    assert main(["pretrain", *SMALL, f"data.root={synth_root}", f"train.output_dir={out}", "data.num_frames=16",
                 "log.tensorboard=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.num_frames=16" in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_config_errors_of_the_data_come_before_the_precision_measurement(synth_root, tmp_path, monkeypatch):
    """precision=auto measures the machine (seconds); a data setting that cannot work must fail first."""
    from tgmae.config import ConfigError
    from tgmae.train import precision

    def measured():
        raise AssertionError("the precision was measured before the data settings were checked")

    monkeypatch.setattr(precision, "cpu_prefers_bf16", measured)
    with pytest.raises(ConfigError, match="data.cache"):
        pretrain(cfg_for(synth_root, tmp_path / "run", "train.precision=auto", "train.device=cpu",
                         "data.cache=disk", "masking.name=mgm"))


@pytest.mark.parametrize("norm_pix", [False, True])
def test_reconstruction_title_gives_the_patch_mean_oracle(tmp_path, monkeypatch, norm_pix):
    """The run's reconstruction figure says whether the clip is reconstructed beyond each patch's
    mean colour: in pixels, the masked MSE next to the patch-mean oracle; with norm_pix_loss (drawn
    with the true patch mean and std, so a pixel comparison would flatter an untrained model) the
    loss on the normalized target, where each patch's mean scores 1.0."""
    import re

    from tgmae.models import build_pretraining_model
    from tgmae.models.target import pixel_target
    from tgmae.models.tokens import mask_to_indices
    from tgmae.train.pretrain import write_pretrain_figures
    from tgmae.viz import reconstruction

    cfg = load_config(None, SMALL + [f"model.norm_pix_loss={str(norm_pix).lower()}", "model.patch_size=16"])
    torch.manual_seed(0)
    model = build_pretraining_model(cfg.model, 4, 32, pixel_mean=tuple(cfg.data.mean), pixel_std=tuple(cfg.data.std))
    g = torch.Generator().manual_seed(0)
    video = torch.randn(3, 4, 32, 32, generator=g)
    assert cfg.token_grid == (2, 2, 2)
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[0, 3, 4, 6, 7]] = True
    titles = []
    save = reconstruction.save_reconstruction_figure
    monkeypatch.setattr(reconstruction, "save_reconstruction_figure",
                        lambda rows, path, **kw: titles.append(kw["title"]) or save(rows, path, **kw))
    write_pretrain_figures(model, [{"video": video, "mask": mask, "video_id": "clip"}], cfg, tmp_path)
    with torch.no_grad():
        out = model.eval()(video[None], mask[None])
    if not norm_pix:
        mse, oracle = map(float, re.fullmatch(r"clip \(tube mask, ratio 0.75; 4 frames x 32 px \(stride \d+, tubelet 2, patch 16\)\)"
                                              r"; masked 5/8 tokens \(0.62, configured ratio 0.75\): masked MSE (\S+) vs patch-mean oracle (\S+) \(pixels\)",
                                              titles[0]).groups())
        # by hand: the masked tokens' pixels, each minus its own per-channel mean
        pix = pixel_target(video[None], model.arch, mask_to_indices(mask[None], 8).masked)  # [1, 5, C, t*p*p]
        assert oracle == pytest.approx(float((pix - pix.mean(-1, keepdim=True)).pow(2).mean()), abs=1e-4)
        assert mse == pytest.approx(float(out.loss), abs=1e-4)  # the model's own loss is already in pixels
        assert mse > oracle  # an untrained model is worse than each patch's mean colour
    else:
        pattern = (r"clip \(.*\): masked MSE (\S+) on the normalized target \(each patch's mean: ~1\.0\); "
                   r"drawn with the true patch means and stds")
        assert float(re.fullmatch(pattern, titles[0]).group(1)) == pytest.approx(float(out.loss), abs=1e-3)
        torch.nn.init.zeros_(model.decoder.head.weight)  # a zero prediction is each patch's mean: 1.0
        torch.nn.init.zeros_(model.decoder.head.bias)
        titles.clear()
        write_pretrain_figures(model, [{"video": video, "mask": mask, "video_id": "clip"}], cfg, tmp_path)
        assert float(re.fullmatch(pattern, titles[0]).group(1)) == pytest.approx(1.0, abs=0.01)  # up to the std estimator and eps


@pytest.mark.parametrize("objective", ["mae+contrastive", "contrastive"])
def test_loss_figure_plots_each_term_and_a_contrastive_run_draws_no_reconstruction(tmp_path, monkeypatch, objective):
    """The loss curve has a panel per logged term (MSE, InfoNCE) and names the objective; a
    contrastive-only run never trains its decoder, so no reconstruction is drawn (issue 28)."""
    import json

    from tgmae.models import build_pretraining_model
    from tgmae.train.pretrain import write_pretrain_figures
    from tgmae.viz import curves

    cfg = load_config(None, SMALL + ["model.patch_size=16", "captions.file=captions.jsonl",
                                     f"contrastive.objective={objective}", "contrastive.weight=0.5"])
    terms = {"loss_nce": 2.0} | ({"loss_mse": 0.8} if objective != "contrastive" else {})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0, "lr": 1e-3, **terms}) + "\n"
                                                    for s in (1, 2)))
    plotted = []
    plot = curves.plot_curves
    monkeypatch.setattr(curves, "plot_curves", lambda runs, keys, path, **kw: plotted.append((keys, kw["title"]))
                        or plot(runs, keys, path, **kw))
    torch.manual_seed(0)
    model = build_pretraining_model(cfg.model, 4, 32, pixel_mean=tuple(cfg.data.mean), pixel_std=tuple(cfg.data.std))
    sample = {"video": torch.randn(3, 4, 32, 32), "mask": torch.arange(8) % 2 == 0, "video_id": "clip"}
    out = write_pretrain_figures(model, [sample], cfg, tmp_path)
    keys, title = plotted[0]
    if objective == "contrastive":
        assert keys == ["loss", "loss_nce", "lr"] and "objective contrastive (loss = loss_nce)" in title
        assert set(out) == {"loss_curve"} and not (tmp_path / "reconstruction.png").exists()
    else:
        assert keys == ["loss", "loss_mse", "loss_nce", "lr"]
        assert "objective mae+contrastive (loss = loss_mse + 0.5 x loss_nce)" in title and "tube mask" in title
        assert (tmp_path / "reconstruction.png").is_file()


def test_a_clip_longer_than_every_video_is_one_line_from_the_workers(synth_root, tmp_path, capsys, monkeypatch):
    """data.num_frames beyond every video, read by 2 DataLoader workers: one line naming the key,
    exit 2 (issue 28: a traceback from the worker). (The set-up check, `tgmae.data.lengths`, is
    off here: this is the workers' refusal, for videos whose length headers do not tell.)"""
    from tgmae.cli import main

    monkeypatch.setattr("tgmae.data.dataset.check_clip_fits", lambda *a: None)

    args = [f"{k}" for k in SMALL if not k.startswith(("data.num_workers", "data.num_frames"))]
    code = main(["pretrain", *args, f"data.root={synth_root}", f"train.output_dir={tmp_path / 'run'}",
                 "data.num_frames=16", "data.num_workers=2", "data.max_load_retries=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("tgmae pretrain: data.num_frames=16: the video of index"), err
    assert "replacement draws (data.max_load_retries=3) were all too short for a clip of 16 frames" in err[-1], err
    assert "draws ran out" in err[-1] and not any("Traceback" in line for line in err)
    last = err[-1].split("; last: ")[1].split(" | ")
    assert len(last) == len(set(last))  # each reason once


def test_a_pretrain_killed_while_drawing_its_figures_is_not_done_and_its_rerun_redraws_them(synth_root, tmp_path,
                                                                                            monkeypatch):
    """issue 28 (a study killed during the figure phase lost one reconstruction.png for good): the
    model file, which says the run is done (`pretrain_done`), is written after the figures; a rerun
    draws them again and removes the killed write's temp."""
    import os
    import subprocess
    import sys

    import tgmae.viz.reconstruction as reconstruction
    from tgmae.atomic import temp_path
    from tgmae.train.pretrain import pretrain_done

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed()

    cfg = cfg_for(synth_root, tmp_path / "run")
    monkeypatch.setattr(reconstruction, "save_reconstruction_figure", killed)
    with pytest.raises(Killed):
        pretrain(cfg)
    run = tmp_path / "run"
    assert not (run / "model.safetensors").exists() and not pretrain_done(cfg)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # an ended writer's pid
    proc.wait()
    mine = temp_path(run / "reconstruction.png")
    stale = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{proc.pid}-"))
    stale.write_bytes(b"half a png")
    monkeypatch.undo()
    pretrain(cfg)
    assert (run / "reconstruction.png").stat().st_size > 1000 and not stale.exists() and pretrain_done(cfg)
    (run / "reconstruction.png").unlink()  # a run finished before the files came last: not done either
    assert not pretrain_done(cfg)
    pretrain(cfg)
    assert pretrain_done(cfg) and [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_a_run_says_once_how_many_videos_are_shorter_than_the_clip(synth_root, tmp_path, caplog):
    """Issue #28 re-trial 11, m1: 12-frame videos under a clip of 4 frames 4 apart (span 13) were read
    with a smaller stride without a word; now the dataset says it for the first video and the loop
    gives the count after the first epoch, once."""
    import logging

    with caplog.at_level(logging.WARNING):
        pretrain(cfg_for(synth_root, tmp_path / "run", "data.frame_stride=4", "train.epochs=2"))
    counts = [r.getMessage() for r in caplog.records if "videos are shorter than a clip" in r.getMessage()]
    assert len(counts) == 1 and counts[0].startswith("12 of 12 videos") and "data.frame_stride=4" in counts[0]
    firsts = [r.getMessage() for r in caplog.records if "shorter than a clip's 13" in r.getMessage()]
    assert len(firsts) == 1


def test_a_figure_title_gives_the_stride_its_columns_were_read_at():
    """Re-trial 17B (N3): a 3-frame video drawn at data.frame_stride=4 is read at stride 2 (frames
    0 and 2), but the title said "stride 4"; the stride used is given, with the one asked."""
    from tgmae.config import load_config
    from tgmae.train.pretrain import describe_run

    cfg = load_config(None, ["data.frame_stride=4", "data.num_frames=2"])
    assert "(stride 2 (4 asked: a short video)," in describe_run(cfg, [0, 2])
    assert "(stride 4," in describe_run(cfg, [0, 4]) and "(stride 4," in describe_run(cfg)
    cfg4 = load_config(None, ["data.frame_stride=2", "data.num_frames=4"])  # re-trial 18: 5 frames, uneven
    assert "(frames 0, 1, 3, 4: a short video, stride 2 asked," in describe_run(cfg4, [0, 1, 3, 4])
    tsn = load_config(None, ["data.sampling=tsn", "data.num_frames=4"])  # segments: uneven by design
    assert "(4 TSN segments," in describe_run(tsn, [3, 40, 78, 115]) and "stride" not in describe_run(tsn, [3, 40, 78, 115])


def test_pretrain_refuses_a_similarity_cache_of_another_image_size(synth_root, tmp_path, capsys):
    """issue 28 (re-trial 17A S6): a TGM cache built for 32 px was used by a 64 px run without a word
    (its maps resampled 2 x 2 -> 4 x 4); `tgmae masks --image-size 64` into it is refused, and so
    is the run, at set-up, naming data.image_size and masking.cache_dir."""
    from tgmae.captions.tiny import save_tiny_clip
    from tgmae.cli import main

    clip_dir = save_tiny_clip(tmp_path / "clip")
    cache = tmp_path / "mc"
    assert main(["masks", "--format", "csv", "--root", str(synth_root), str(synth_root / "train.csv"),
                 "--captions", str(synth_root / "captions.jsonl"), "--clip", str(clip_dir), "--out", str(cache),
                 "--image-size", "32", "--patch-size", "16", "--mode", "dense", "--frame-stride", "4",
                 "--no-progress"]) == 0
    capsys.readouterr()
    args = once(["pretrain", *SMALL, f"data.root={synth_root}", f"train.output_dir={tmp_path / 'run'}",
                 "train.epochs=1", f"captions.file={synth_root / 'captions.jsonl'}", "masking.name=tgm",
                 f"masking.cache_dir={cache}", "masking.ratio=0.6", "data.image_size=64"])
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("tgmae pretrain: ") and "data.image_size" in last and "masking.cache_dir" in last, last
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_a_resume_after_the_captions_were_edited_is_refused_naming_them(synth_root, tmp_path, capsys):
    """Re-trial 24A S2: a mae+contrastive pretraining killed, its captions.file edited, then rerun,
    went on training on the other captions without a word. The checkpoints keep a fingerprint of
    the captions (and the text model's files); a resume on others is refused, naming captions.file,
    and goes on under checkpoint.resume=ignore_config."""
    import shutil

    from tgmae.captions.tiny import save_tiny_clip
    from tgmae.cli import main

    clip_dir = save_tiny_clip(tmp_path / "clip")
    captions = tmp_path / "captions.jsonl"
    shutil.copy(synth_root / "captions.jsonl", captions)
    extra = [f"captions.file={captions}", f"captions.clip_model={clip_dir}",
             "contrastive.objective=mae+contrastive", "contrastive.proj_dim=16"]
    pretrain_killed_at(cfg_for(synth_root, tmp_path / "run", *extra), 2)
    lines = captions.read_text().splitlines()
    first = json.loads(lines[0])
    first["captions"] = ["a video of a purple elephant dancing"]
    captions.write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    argv = ["pretrain", *SMALL, f"data.root={synth_root}", f"train.output_dir={tmp_path / 'run'}", *extra]
    capsys.readouterr()
    assert main(argv) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("tgmae")]  # not the model's loading bars
    assert len(err) == 1 and "captions.file's captions changed" in err[0] and "ignore_config" in err[0], err
    assert "text model" not in err[0], err  # re-trial 25 M2: the part that changed, not "captions or model"
    assert main([*argv, "checkpoint.resume=ignore_config"]) == 0


def test_a_run_records_its_data_paths_resolved_and_resumes_them_however_spelled(synth_root, tmp_path, monkeypatch,
                                                                                capsys):
    """Re-trial 31A S4 / M4: `data.root=A` was recorded as typed, so a figure of the run from another
    folder drew that folder's `A/` as the run's items, and a resume with `./A`, `A/`, the absolute
    path or `../ds/A` was refused as "trained with other settings: data.root: 'A' -> './A'"."""
    from tgmae.cli import main
    from tgmae.evaluate.visualize import figure_config

    ds = tmp_path / "ds"
    shutil.copytree(synth_root, ds / "A")
    monkeypatch.chdir(ds)
    run = tmp_path / "run"
    args = once(["pretrain", *SMALL, "data.root=A", f"train.output_dir={run}", "train.epochs=1"])
    assert main(args) == 0
    saved = run_config(run)[0]
    assert saved.data.root == str(ds / "A") and saved.data.train_annotations == str(ds / "A" / "train.csv")
    assert ckpt.load_checkpoint(ckpt.find_latest(run / "checkpoints")).config["data"]["root"] == str(ds / "A")
    capsys.readouterr()
    # the other spellings (A/, absolute): test_config_differences_compare_path_keys_resolved
    for epochs, spelling in ((2, "./A"), (3, "../ds/A/")):
        assert main(once([*args, f"data.root={spelling}", f"train.epochs={epochs}"])) == 0, capsys.readouterr().err
        assert "other settings" not in capsys.readouterr().err
    shutil.copytree(synth_root, ds / "B")
    assert main(once([*args, "data.root=B", "train.epochs=4"])) == 2  # another folder is another setting
    assert "data.root: " in capsys.readouterr().err
    (tmp_path / "other" / "A").mkdir(parents=True)  # a folder of the same name elsewhere is not the run's
    monkeypatch.chdir(tmp_path / "other")
    assert figure_config(None, [], run / "model.safetensors").data.root == str(ds / "A")


def test_a_run_config_with_relative_data_paths_says_so_once_when_read(tmp_path, monkeypatch, caplog):
    """Re-trial 31A S4: a run recorded before its paths were resolved is read against the current folder
    (where it started is not known): a warning names the keys and the folder, once per run."""
    from tgmae.config import RunConfig, to_dict
    import yaml

    run = tmp_path / "old"
    run.mkdir()
    values = to_dict(RunConfig())
    values["data"].update(root="A", train_annotations="train.csv")
    (run / "config.yaml").write_text(yaml.safe_dump(values))  # as an older tgmae wrote it
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING"):
        assert run_config(run)[0].data.root == "A" and run_config(run)[0] is not None
    said = [r.getMessage() for r in caplog.records if "relative" in r.getMessage()]
    assert len(said) == 1 and "data.root='A'" in said[0] and "data.train_annotations='train.csv'" in said[0]
    assert str(tmp_path) in said[0]


def test_a_run_writes_its_id_once_and_every_weights_file_it_saves_records_it(synth_root, tmp_path):
    """Re-trial 33B S1: what proves a file in a run folder that run's. The id is written when the run
    starts, kept by its resume after a kill, and recorded by its step checkpoints and final model
    (`model_card.run_of` reads it)."""
    from tgmae.weights.model_card import folder_run_id, recorded_run_id, run_of

    cfg = cfg_for(synth_root, tmp_path / "run")
    pretrain_killed_at(cfg, 3)
    first = folder_run_id(tmp_path / "run")
    assert first is not None
    run = pretrain(cfg)
    assert folder_run_id(run) == first
    files = [run / "model.safetensors", *sorted(run.glob("checkpoints/step_*/model.safetensors"))]
    assert len(files) >= 2 and all(recorded_run_id(f)[0] == first for f in files), files
    assert all(run_of(f) == (run, "") for f in files)


def test_a_step_folder_of_another_run_moved_into_a_run_is_not_resumed(synth_root, tmp_path):
    """Re-trial 34A S1: r1's step folder copied into r4 (its own checkpoints gone; without `latest`, or
    named in it) was resumed without a word: r4's model then recorded r4's id for r1's training and its
    metrics.jsonl mixed the two runs. The resume refuses it, naming the step folder and both ids."""
    from tgmae.weights.model_card import folder_run_id

    r1, r4 = tmp_path / "r1", tmp_path / "r4"
    pretrain_killed_at(cfg_for(synth_root, r1), 3)
    pretrain_killed_at(cfg_for(synth_root, r4), 3)
    shutil.rmtree(r4 / "checkpoints")
    (r4 / "checkpoints").mkdir()
    shutil.copytree(r1 / "checkpoints" / "step_00000002", r4 / "checkpoints" / "step_00000002")
    for latest in (False, True):
        if latest:
            (r4 / "checkpoints" / "latest").write_text("step_00000002\n")
        with pytest.raises(ckpt.CheckpointError, match=rf"step_00000002: records run id {folder_run_id(r1)}, "
                                                       rf"but the run in {r4} is {folder_run_id(r4)}"):
            pretrain(cfg_for(synth_root, r4))
    assert not (r4 / "model.safetensors").exists()


def test_a_run_continued_in_a_copy_of_its_folder_saves_weights_of_its_own_id(synth_root, tmp_path):
    """Re-trial 34A S2: `cp -a runs/a runs/b` and a resume in b: b's model recorded a's id, so put into
    a's folder it passed as a's (title `final`, a's steps and loss on its card). The run in b resumes a's
    checkpoint (b's ancestry) under a new id, and b's model is not a's run's."""
    from tgmae.weights.model_card import folder_run_id, recorded_run_id, run_ids, run_of

    a, b = tmp_path / "a", tmp_path / "b"
    pretrain_killed_at(cfg_for(synth_root, a), 3)
    a_id = folder_run_id(a)
    shutil.copytree(a, b, symlinks=True)
    pretrain(cfg_for(synth_root, b))
    b_id = folder_run_id(b)
    assert b_id != a_id and run_ids(b) == [b_id, a_id] and folder_run_id(a) == a_id
    assert recorded_run_id(b / "model.safetensors")[0] == b_id and run_of(b / "model.safetensors") == (b, "")
    shutil.copy(b / "model.safetensors", a / "cont.safetensors")
    assert run_of(a / "cont.safetensors")[0] is None
