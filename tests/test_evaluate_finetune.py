"""Finetuning and multi-view testing: checkpoint sources, the classifier, the task on the shared
loop, softmax averaging over views, DDP gathering, and the CLI on real (synthetic) H.264 files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from tgmae.config import RunConfig, load_config, to_dict
from tgmae.evaluate.finetune import FinetuneTask, finetune
from tgmae.evaluate.multiview import classification_result, predict_views
from tgmae.evaluate.recipes import FINETUNE_RECIPE, with_recipe
from tgmae.evaluate.sharded import map_dataset
from tgmae.models import VideoMAEArch, VideoMAEPretrainer
from tgmae.models.arch import arch_from_config
from tgmae.models.classifier import VideoClassifier
from tgmae.weights import checkpoint as ckpt
from tgmae.weights.classifier import build_classifier, load_classifier, save_classifier
from tgmae.weights.files import CheckpointError
from tgmae.weights.layouts import fill_key_biases, hf_config, ours_to_hf
from tgmae.weights.pretraining import save_pretraining_model
from tgmae.weights.sources import load_encoder_source

ARCH = VideoMAEArch(embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4,
                    image_size=16, decoder_dim=16, decoder_depth=1, decoder_heads=1)


def pretrainer(seed: int = 0) -> VideoMAEPretrainer:
    torch.manual_seed(seed)
    model = VideoMAEPretrainer(ARCH)
    with torch.no_grad():  # non-trivial norms and biases, so a wrong mapping shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


class Clips(Dataset):
    """Separable toy clips: class c has mean brightness c (+ noise); `views` > 0 gives [V, C, T, H, W]."""

    def __init__(self, n: int = 24, k: int = 3, seed: int = 0, views: int = 0, size: int = 16):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % k
        self.video = 0.3 * torch.randn(n, 3, 4, size, size, generator=g) + self.labels.view(-1, 1, 1, 1, 1).float()
        self.views = views
        self.class_names = [f"class {i}" for i in range(k)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        v = self.video[i]
        if self.views:
            v = torch.stack([v + 0.05 * j for j in range(self.views)])
        return {"video": v, "label": int(self.labels[i]), "index": i, "video_id": f"v{i}", "load_failures": 0}


def run_cfg(tmp_path: Path, *overrides: str) -> RunConfig:
    base = ["data.num_frames=4", "data.image_size=16", "model.patch_size=8", "train.batch_size=4",
            f"train.output_dir={tmp_path / 'run'}", "train.precision=fp32", "log.progress=false",
            "log.tensorboard=false", "data.num_workers=0", "checkpoint.resume="]
    return with_recipe(FINETUNE_RECIPE, None, base + list(overrides))


# ----------------------------------------------------------------------------------- sources
def test_encoder_weights_from_every_checkpoint_kind(tmp_path):
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    model = pretrainer()
    ours = save_pretraining_model(model, tmp_path / "ours.safetensors")
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "official.pth")
    hf = VideoMAEForPreTraining(VideoMAEConfig(**hf_config(ARCH)))
    hf.load_state_dict(fill_key_biases(ours_to_hf(model.state_dict()), hf.state_dict()), strict=False)
    hf.save_pretrained(tmp_path / "hf")
    cfg = run_cfg(tmp_path, "model.preset=tiny")
    train_model = VideoMAEPretrainer(arch_from_config(cfg.model, 4, 16))  # what a tiny run trains
    opt = torch.optim.AdamW(train_model.parameters())
    step_dir = ckpt.save_checkpoint(tmp_path / "run" / "checkpoints", train_model, opt, None,
                                    ckpt.TrainPosition(3, 0, 3), to_dict(cfg))

    sources = {"tgmae": (ours, model), "official": (tmp_path / "official.pth", model),
               "hf": (tmp_path / "hf", model), "train-checkpoint": (step_dir, train_model)}
    for kind, (path, ref) in sources.items():
        src = load_encoder_source(path, num_heads=2)
        want = ref.encoder.state_dict()
        assert src.kind == kind
        assert set(src.encoder) == set(want), kind
        for k, v in want.items():
            assert torch.equal(src.encoder[k].float(), v), (kind, k)
        assert src.arch.num_heads == ref.arch.num_heads and src.arch.embed_dim == ref.arch.embed_dim
        assert src.arch.encoder_norm and not src.head
    # a run directory resolves to its latest checkpoint
    assert load_encoder_source(tmp_path / "run").kind == "train-checkpoint"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_encoder_source(empty)
    # weights that contradict their stored config are refused, not silently misread
    bad = ckpt.save_checkpoint(tmp_path / "bad", model, torch.optim.AdamW(model.parameters()), None,
                               ckpt.TrainPosition(1, 0, 1), to_dict(cfg))
    with pytest.raises(CheckpointError, match="do not match the stored config"):
        load_encoder_source(bad)


def test_classifier_keeps_only_encoder_weights_and_inits_head(tmp_path):
    model = pretrainer()
    path = save_pretraining_model(model, tmp_path / "pt.safetensors")
    clf = build_classifier(path, 5, num_frames=4, image_size=16, drop_path=0.1, head_init_scale=0.001)
    assert not clf.arch.encoder_norm and isinstance(clf.encoder.norm, nn.Identity)  # VideoMAE drops it
    assert clf.arch.drop_path == 0.1 and clf.encoder.blocks[1].drop_path.p == pytest.approx(0.1)
    for k, v in clf.encoder.state_dict().items():
        assert torch.equal(v, model.encoder.state_dict()[k])
    w = clf.head.weight.detach()  # trunc-normal(std 0.02) x 0.001, as VideoMAE (timm) initializes
    assert 0.5 * 2e-5 < float(w.std()) < 1.5 * 2e-5 and float(w.abs().max()) < 6 * 2e-5
    assert float(clf.head.bias.detach().abs().max()) == 0.0
    assert clf.fc_norm.eps == 1e-5
    # layer ids: embedding 0, block i -> i + 1, head depth + 1
    assert clf.layer_id("encoder.patch_embed.proj.weight") == 0
    assert clf.layer_id("encoder.blocks.1.attn.qkv.weight") == 2
    assert clf.layer_id("head.weight") == clf.layer_id("fc_norm.bias") == 3


def test_layer_decay_and_weight_decay_groups(tmp_path):
    cfg = run_cfg(tmp_path)  # recipe: layer decay 0.75, wd 0.05
    task = FinetuneTask(cfg, Clips(), num_classes=3)
    model = VideoClassifier(ARCH, 3)
    groups = task.param_groups(model)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert scale["encoder.patch_embed.proj.weight"] == pytest.approx(0.75 ** 3)
    assert scale["encoder.blocks.0.mlp.fc1.weight"] == pytest.approx(0.75 ** 2)
    assert scale["encoder.blocks.1.mlp.fc1.weight"] == pytest.approx(0.75)
    assert scale["head.weight"] == 1.0
    assert wd["head.weight"] == 0.05 and wd["head.bias"] == 0.0 and wd["encoder.blocks.0.attn.q_bias"] == 0.0
    assert cfg.optim.betas == (0.9, 0.999) and cfg.optim.clip_grad is None and cfg.eval.mixup == 0.8


# ---------------------------------------------------------------------------------- training
def test_finetune_task_learns_then_tests_multiview(tmp_path):
    path = save_pretraining_model(pretrainer(), tmp_path / "pt.safetensors")
    cfg = run_cfg(tmp_path, f"model.pretrained={path}", "train.epochs=4", "optim.lr=3e-3",
                  "optim.warmup_epochs=0.5", "eval.mixup=0.5", "eval.cutmix=0.5", "model.drop_path=0.1",
                  "train.log_every=1")
    result = finetune(cfg, train_data=Clips(24), val_data=Clips(12, seed=1),
                      test_data=Clips(12, seed=1, views=3))
    evals = [r for r in result.history if "val_top1" in r]
    assert len(evals) == 4  # after every epoch
    assert "mix_lambda" in result.history[0]
    assert result.test is not None and result.test.num_views == 3 and result.test.num_videos == 12
    assert result.test.top1 > 0.6  # separable classes; chance is 1/3
    out = json.loads((tmp_path / "run" / "finetune_results.json").read_text())
    assert out["test_top1"] == pytest.approx(result.test.top1)
    per_class = json.loads((tmp_path / "run" / "test_results.json").read_text())["per_class"]
    assert set(per_class) == {"class 0", "class 1", "class 2"}
    # the saved classifier reloads to the same function
    clf = load_classifier(result.classifier_path)
    assert clf.class_names == ["class 0", "class 1", "class 2"]
    video = Clips(4, seed=2).video
    assert torch.allclose(clf(video), result_model_logits(tmp_path, video), atol=1e-6)


def result_model_logits(tmp_path: Path, video: torch.Tensor) -> torch.Tensor:
    """Logits of the last training checkpoint's weights (independent of classifier.safetensors)."""
    src = load_encoder_source(ckpt.find_latest(tmp_path / "run" / "checkpoints"))
    assert src.kind == "train-checkpoint" and src.num_classes == 3
    model = build_classifier(src, keep_head=True, num_frames=4, image_size=16).eval()
    return model(video)


class ViewLogits(nn.Module):
    """Logits = [mean, -mean, 0] of the clip: a known function of each view."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, video):
        m = video.mean(dim=(1, 2, 3, 4))
        return torch.stack([m, -m, torch.zeros_like(m)], dim=1) + self.dummy


def test_multiview_averages_softmax_per_video():
    data = Clips(5, views=4)
    out = predict_views(ViewLogits(), data, batch_size=6)  # 6 clips per forward: 1 video per batch
    for i in range(5):
        views = data[i]["video"]
        want = ViewLogits()(views).softmax(-1).mean(0)
        assert torch.allclose(out["probs"][i], want, atol=1e-6)
    assert out["views"].tolist() == [4] * 5 and out["index"].tolist() == list(range(5))
    res = classification_result(torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1]]), torch.tensor([0, 0, 1]))
    assert res.top1 == pytest.approx(1 / 3) and res.per_class == [0.5, 0.0]


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        data = Clips(7, views=2)
        out = predict_views(ViewLogits(), data, batch_size=4)
        queue.put((rank, {k: v.tolist() for k, v in out.items()}))  # plain data: survives the exit
    finally:
        from tgmae.distributed import cleanup

        cleanup()


def test_ddp_gather_in_memory_equals_single_process(free_port):
    single = predict_views(ViewLogits(), Clips(7, views=2), batch_size=4)
    from conftest import run_ranks

    results = run_ranks(_ddp_worker, 2, 2, free_port)
    for rank in (0, 1):  # every rank holds every video, in dataset order, each once
        for k in ("probs", "label", "index", "views"):
            got = torch.tensor(results[rank][k]).float()
            assert torch.allclose(got, single[k].float(), atol=1e-6), (rank, k)



def test_map_dataset_checks_row_counts():
    with pytest.raises(ValueError, match="rows for a batch"):
        map_dataset(Clips(4), lambda b: {"x": torch.zeros(1)}, batch_size=2, device=torch.device("cpu"))


# ------------------------------------------------------------------------------ CLI, real files
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from tgmae.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_dataset(root, num_videos=16, frames=12, size=32, gop=6, seed=1, val_fraction=0.25)
    return root


def _finetune_yaml(tmp_path, root, views: int, **sections) -> Path:
    """A one-epoch finetune config over the synthetic csv set at `root` (views x views test)."""
    config = {"data": {"format": "csv", "root": str(root), "train_annotations": "train.csv",
                       "val_annotations": "val.csv", "num_frames": 4, "frame_stride": 2, "image_size": 32,
                       "num_workers": 0, "test_temporal_views": views, "test_spatial_views": views},
              "model": {"patch_size": 8},
              "train": {"batch_size": 4, "epochs": 1, "precision": "fp32"},
              "log": {"progress": False, "tensorboard": False}, **sections}
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_finetune_and_evaluate_cli_on_synthetic_videos(synth, tmp_path, capsys):
    from tgmae.commands.evaluate import main as evaluate_main
    from tgmae.commands.finetune import main as finetune_main

    arch = VideoMAEArch(**{**ARCH.__dict__, "image_size": 32})
    torch.manual_seed(0)
    pt = save_pretraining_model(VideoMAEPretrainer(arch), tmp_path / "pt.safetensors")
    path = _finetune_yaml(tmp_path, synth, views=2)
    run = tmp_path / "ft"
    assert finetune_main(["-c", str(path), f"model.pretrained={pt}", f"train.output_dir={run}"]) == 0
    assert "(4 videos x 4 views)" in capsys.readouterr().out  # as evaluate says it (left-out videos too)
    saved = load_config(run / "config.yaml")
    assert saved.optim.layer_decay == 0.75 and saved.model.drop_path == 0.1  # the recipe applied
    results = json.loads((run / "finetune_results.json").read_text())
    test = json.loads((run / "test_results.json").read_text())
    assert test["num_views"] == 4 and test["num_videos"] == 4 and len(test["per_class"]) == 10
    assert results["test_top1"] == test["top1"]
    out = tmp_path / "eval"
    assert evaluate_main(["-c", str(path), f"model.pretrained={run}", f"train.output_dir={out}"]) == 0
    again = json.loads((out / "test_results.json").read_text())
    assert again["top1"] == test["top1"] and again["views"] == "2x2"
    # per-video predictions of the videos evaluated: id, true label, top-5 names and scores
    import csv

    rows = list(csv.reader((out / "test_predictions.csv").open()))
    ids = {line.split(",")[0].rsplit("/", 1)[-1].rsplit(".", 1)[0]
           for line in (synth / "val.csv").read_text().splitlines()[1:]}
    names = (synth / "classes.txt").read_text().split("\n")
    assert rows[0][:4] == ["video_id", "true_label", "pred_1", "score_1"] and len(rows[0]) == 12
    assert {r[0] for r in rows[1:]} == ids and all(r[1] in names and r[2] in names for r in rows[1:])
    assert (run / "test_predictions.csv").read_text().splitlines()[0] == ",".join(rows[0])


def test_evaluate_cli_never_substitutes_an_unreadable_video(synth, tmp_path, capsys):
    import shutil

    import numpy as np

    from tgmae.cli import main
    from tgmae.data.video import write_video
    from tgmae.models.classifier import classifier_arch
    from tgmae.weights.classifier import save_classifier

    root = tmp_path / "data"
    shutil.copytree(synth, root)
    header, *rows = (root / "val.csv").read_text().strip().splitlines()
    broken, short = rows[0].split(",")[0], rows[1].split(",")[0]
    (root / broken).write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))  # does not decode
    write_video(root / short, np.zeros((3, 32, 32, 3), np.uint8), fps=25)  # 3 frames: shorter than the clip
    (root / "readable.csv").write_text("\n".join([header, *rows[2:]]) + "\n")
    names = (root / "classes.txt").read_text().splitlines()
    torch.manual_seed(0)
    arch = classifier_arch(VideoMAEArch(**{**ARCH.__dict__, "image_size": 32}))
    clf = save_classifier(VideoClassifier(arch, len(names), head_init_scale=1.0), tmp_path / "clf.safetensors", names)
    config = {"data": {"format": "csv", "root": str(root), "train_annotations": "train.csv",
                       "val_annotations": "val.csv", "num_frames": 4, "frame_stride": 2, "image_size": 32,
                       "num_workers": 0, "test_temporal_views": 2, "test_spatial_views": 1},
              "model": {"patch_size": 8}, "train": {"batch_size": 4, "precision": "fp32"},
              "log": {"progress": False, "tensorboard": False}}
    path = tmp_path / "ev.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ["evaluate", "-c", str(path), f"model.pretrained={clf}"]

    assert main([*args, f"train.output_dir={tmp_path / 'all'}"]) == 0
    assert f"2 of {len(rows)} test videos left out" in capsys.readouterr().out  # `metrics.left_out_text`
    res = json.loads((tmp_path / "all" / "test_results.json").read_text())
    assert res["num_videos"] == len(rows) - 2 and res["num_unreadable"] == 2
    listed = {u["video_id"]: u for u in res["unreadable"]}
    assert set(listed) == {Path(broken).stem, Path(short).stem}
    assert "too short" in listed[Path(short).stem]["reason"] and broken in listed[Path(broken).stem]["reason"]
    for u in listed.values():  # the class of an unreadable video stays in the per-class table
        assert u["class"] == names[u["label"]] and res["per_class_videos"][u["class"]]["unreadable"] >= 1
    # scored exactly as the readable videos alone: nothing stood in for the broken ones
    assert main([*args, "data.val_annotations=readable.csv", f"train.output_dir={tmp_path / 'ok'}"]) == 0
    ok = json.loads((tmp_path / "ok" / "test_results.json").read_text())
    assert ok["num_unreadable"] == 0 and ok["num_videos"] == res["num_videos"]
    for key in ("top1", "top5", "loss", "per_class"):
        assert res[key] == ok[key], key

    capsys.readouterr()
    assert main([*args, "eval.strict=true", f"train.output_dir={tmp_path / 'strict'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tgmae evaluate: multi-view test: 2 of") and "eval.strict" in err and "\n" not in err
    assert not (tmp_path / "strict" / "test_results.json").exists()


def test_finetune_refuses_a_checkpoint_of_other_geometry(tmp_path):
    """model.tubelet_size=4 on a tubelet-2 checkpoint was ignored (features of tubelet 2, config.yaml
    saying 4): now a ConfigError naming the key, the config's value and the checkpoint's."""
    from tgmae.config import ConfigError

    path = save_pretraining_model(pretrainer(), tmp_path / "pt.safetensors")
    task = FinetuneTask(run_cfg(tmp_path, f"model.pretrained={path}", "model.tubelet_size=4"), Clips(8), None, 3)
    with pytest.raises(ConfigError, match=r"model\.tubelet_size=4 but the checkpoint .*pt\.safetensors has 2"):
        task.build_model()
    ok = FinetuneTask(run_cfg(tmp_path, f"model.pretrained={path}"), Clips(8), None, 3).build_model()
    assert ok.encoder.patch_embed.proj.weight.shape[2] == 2


def test_finetune_rerun_keeps_its_results_and_refuses_new_pretrained_weights(tmp_path):
    """A finished finetune rerun reports its val scores again (evaluation records live in the
    checkpoint); new weights written over model.pretrained's path are refused, not built upon."""
    path = save_pretraining_model(pretrainer(), tmp_path / "pt.safetensors")
    cfg = run_cfg(tmp_path, f"model.pretrained={path}", "train.epochs=1", "checkpoint.resume=auto",
                  "eval.mixup=0", "eval.cutmix=0")
    data = dict(train_data=Clips(8), val_data=Clips(8, seed=1))
    finetune(cfg, **data)
    first = json.loads((tmp_path / "run" / "finetune_results.json").read_text())
    finetune(cfg, **data)
    assert json.loads((tmp_path / "run" / "finetune_results.json").read_text()) == first
    assert "val_top1" in first
    save_pretraining_model(pretrainer(seed=1), path)
    with pytest.raises(ckpt.CheckpointError, match="inputs differ.*model.pretrained"):
        finetune(cfg, **data)


def test_a_finetune_stopped_before_its_first_checkpoint_is_rerun_from_the_start(tmp_path, monkeypatch):
    """Fix 31e (re-trial 29A M2 for finetune): a finetune whose first checkpoint failed (a full disk)
    leaves its config.yaml, records and marker (`NO_CHECKPOINT_YET`); the same settings start it
    afresh to its results, and its first checkpoint removes the marker."""
    import errno

    from tgmae.train.resume import NO_CHECKPOINT_YET

    path = save_pretraining_model(pretrainer(), tmp_path / "pt.safetensors")
    cfg = run_cfg(tmp_path, f"model.pretrained={path}", "train.epochs=1", "train.log_every=1",
                  "checkpoint.resume=auto", "eval.mixup=0", "eval.cutmix=0")

    def full(*a, **k):
        raise OSError(errno.EFBIG, "File too large")

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(ckpt, "save_checkpoint", full)
        with pytest.raises(OSError):
            finetune(cfg, train_data=Clips(8))
    assert (run / NO_CHECKPOINT_YET).is_file() and (run / "metrics.jsonl").read_text().strip()
    finetune(cfg, train_data=Clips(8))
    assert (run / "finetune_results.json").is_file() and not (run / NO_CHECKPOINT_YET).exists()


def test_finetune_resume_refuses_reordered_class_names(tmp_path):
    """Checkpoints carry the class names in label order: a resume after classes.txt was reordered
    (same class count, so the head still fits) is refused naming the change, not continued with
    label 0 meaning another class (re-trial: "resumed from step_4" with Animation -> Walking)."""
    path = save_pretraining_model(pretrainer(), tmp_path / "pt.safetensors")
    cfg = run_cfg(tmp_path, f"model.pretrained={path}", "train.epochs=1", "checkpoint.resume=auto",
                  "eval.mixup=0", "eval.cutmix=0")
    finetune(cfg, train_data=Clips(8))
    saved = ckpt.load_checkpoint(ckpt.find_latest(tmp_path / "run" / "checkpoints"))
    assert saved.extra["class_names"] == ["class 0", "class 1", "class 2"]
    reordered = Clips(8)
    reordered.class_names = ["class 2", "class 1", "class 0"]
    more = run_cfg(tmp_path, f"model.pretrained={path}", "train.epochs=2", "checkpoint.resume=auto",
                   "eval.mixup=0", "eval.cutmix=0")
    with pytest.raises(ckpt.CheckpointError, match=r"class names.*data\.train_annotations.*"
                                                  r"label 0: 'class 0' -> 'class 2'"):
        finetune(more, train_data=reordered)
    finetune(more, train_data=Clips(8))  # the same classes resume as before


def test_finetune_strict_fails_before_training_on_unreadable_test_videos(synth, tmp_path, capsys):
    """eval.strict=true with unreadable val/test videos: one line, exit 2, before any training step
    (no metrics, no checkpoints); the same run without them trains and tests."""
    import shutil

    from tgmae.cli import main

    root = tmp_path / "data"
    shutil.copytree(synth, root)
    header, *rows = (root / "val.csv").read_text().strip().splitlines()
    broken = rows[0].split(",")[0]
    data = (root / broken).read_bytes()
    (root / broken).write_bytes(data[: len(data) // 2])  # cut short
    arch = VideoMAEArch(**{**ARCH.__dict__, "image_size": 32})
    torch.manual_seed(0)
    pt = save_pretraining_model(VideoMAEPretrainer(arch), tmp_path / "pt.safetensors")
    path = _finetune_yaml(tmp_path, root, views=1, eval={"strict": True})
    run = tmp_path / "ft"
    capsys.readouterr()
    assert main(["finetune", "-c", str(path), f"model.pretrained={pt}", f"train.output_dir={run}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "eval.strict=true: 1 of" in err and err.count(str(root / broken)) == 1, err
    assert "cannot open as a video" in err  # (a non-faststart MP4 cut short loses its moov)
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()


def test_finetune_and_evaluate_refuse_a_test_list_of_the_training_videos(synth, tmp_path, capsys):
    """Issue 28 re-trial 15 (S1): a test list that lists only training videos (here the train list
    itself as data.val_annotations) trained and tested on the same videos, exit 0 and "test top-1".
    Finetune and evaluate refuse it in one line naming both keys, before training or loading."""
    from tgmae.cli import main

    arch = VideoMAEArch(**{**ARCH.__dict__, "image_size": 32})
    torch.manual_seed(0)
    pt = save_pretraining_model(VideoMAEPretrainer(arch), tmp_path / "pt.safetensors")
    path = _finetune_yaml(tmp_path, synth, views=1)
    run = tmp_path / "ft"
    capsys.readouterr()
    for command, weights in (("finetune", pt), ("evaluate", tmp_path / "clf.safetensors")):
        assert main([command, "-c", str(path), f"model.pretrained={weights}", f"train.output_dir={run}",
                     "data.val_annotations=train.csv"]) == 2
        err = capsys.readouterr().err.strip()
        assert "data.val_annotations=train.csv" in err and "data.train_annotations=train.csv" in err, err
        assert "\n" not in err and not (run / "metrics.jsonl").exists() and not (run / "test_results.json").exists()


def _ssv2_lists(tmp_path: Path) -> Path:
    """A config over a copy of the SSv2 fixture's lists (labels.json, train, validation and test.json,
    whose items carry ids only), without any video: a command that opens one fails otherwise."""
    root = tmp_path / "ssv2"
    shutil.copytree(Path(__file__).parent / "data" / "ssv2", root)
    config = {"data": {"format": "ssv2", "root": str(root), "train_annotations": "train.json",
                       "val_annotations": "test.json", "num_frames": 4, "image_size": 32, "num_workers": 0},
              "model": {"patch_size": 8}, "train": {"batch_size": 2, "epochs": 1, "precision": "fp32"},
              "log": {"progress": False, "tensorboard": False}}
    path = tmp_path / "ssv2.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("argv", [["finetune"], ["evaluate"], ["probe"], ["probe", "eval.probe_optimizer=lbfgs"],
                                  ["probe", "eval.probe=knn", "eval.knn_k=[1]"], ["probe", "eval.probe=attentive"],
                                  ["retrieve"]], ids=lambda a: "-".join(a).replace("eval.", ""))
def test_an_unlabelled_test_list_is_refused_at_set_up_by_every_command_that_scores_labels(argv, tmp_path, capsys):
    """Re-trial 29B S2, T2: SSv2 test.json (ids only: labels -1) as data.val_annotations. The k-NN
    probe scored every video wrong (top-1 0.0, exit 0); evaluate, finetune (after training), the
    linear / L-BFGS / attentive probes and class-prompt retrieval decoded every video, then a traceback
    ("labels must lie in [0, 3)", "3 queries have no relevant gallery item"). Now one line naming
    the key and the file, exit 2, before any video is opened (there are none) or folder made; an
    unlabelled training list likewise, for the commands that train on labels."""
    from tgmae.cli import main

    path = _ssv2_lists(tmp_path)
    pt = save_pretraining_model(pretrainer(), tmp_path / "pt.safetensors")
    run = tmp_path / "run"
    capsys.readouterr()
    args = [argv[0], "-c", str(path), f"model.pretrained={pt}", f"train.output_dir={run}", *argv[1:]]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "data.val_annotations=test.json has no labels (a test list, 2 videos without" in err, err
    assert not run.exists()
    if argv[0] in ("finetune", "probe"):  # they train on the training list's labels
        assert main([*args, "data.train_annotations=test.json", "data.val_annotations=validation.json"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "data.train_annotations=test.json has no labels" in err, err
        assert not run.exists()


def test_an_unlabelled_list_passes_where_no_label_is_read(tmp_path, capsys):
    """Re-trial 29B T2: caption retrieval ranks captions, not class prompts: an unlabelled val list is
    not refused for labels there (it fails later here only for want of captions and videos)."""
    from tgmae.cli import main

    path = _ssv2_lists(tmp_path)
    pt = save_pretraining_model(pretrainer(), tmp_path / "pt.safetensors")
    capsys.readouterr()
    assert main(["retrieve", "-c", str(path), f"model.pretrained={pt}", f"train.output_dir={tmp_path / 'run'}",
                 "eval.retrieval_text=captions"]) == 2
    err = capsys.readouterr().err
    assert "has no labels" not in err and "Traceback" not in err
    assert "eval.retrieval_text=captions" in err and "captions.file" in err  # one line naming the keys


def test_evaluate_passes_model_num_heads_for_an_official_pth_classifier(synth, tmp_path, capsys):
    """Issue 28 re-trial 15 (M1): `tgmae evaluate model.pretrained=off_ft.pth model.num_heads=2` (an
    official-layout finetuned .pth, which stores no head count) still said "pass model.num_heads":
    evaluate did not hand model.num_heads to the loader. Now it tests; without it, one line naming it."""
    from tgmae.cli import main
    from tgmae.models.classifier import classifier_arch

    names = (synth / "classes.txt").read_text().splitlines()
    torch.manual_seed(0)
    clf = VideoClassifier(classifier_arch(VideoMAEArch(**{**ARCH.__dict__, "image_size": 32})), len(names))
    torch.save({"model": clf.state_dict(), "epoch": 1}, tmp_path / "off_ft.pth")
    args = ["evaluate", "-c", str(_finetune_yaml(tmp_path, synth, views=1)), f"model.pretrained={tmp_path / 'off_ft.pth'}"]
    capsys.readouterr()
    assert main([*args, f"train.output_dir={tmp_path / 'no'}"]) == 2
    assert "model.num_heads" in capsys.readouterr().err
    assert main([*args, "model.num_heads=2", f"train.output_dir={tmp_path / 'ev'}"]) == 0
    assert json.loads((tmp_path / "ev" / "test_results.json").read_text())["num_videos"] > 0


def test_finetune_refuses_test_classes_the_training_set_lacks_before_training(tmp_path):
    """A test set with a class the training set lacks (and eval.num_classes below the data's
    classes) is refused at set-up, naming the class (the key), before any training step."""
    from tgmae.evaluate.classes import ClassMismatchError
    from tgmae.config import ConfigError

    path = save_pretraining_model(pretrainer(), tmp_path / "pt.safetensors")
    test = Clips(6, views=2)
    test.class_names = ["class 0", "zebra", "class 2"]
    cfg = run_cfg(tmp_path, f"model.pretrained={path}", "train.epochs=1")
    with pytest.raises(ClassMismatchError, match="does not know 1 of the 3 classes of the test set: zebra"):
        finetune(cfg, train_data=Clips(8), test_data=test)
    with pytest.raises(ConfigError, match=r"eval.num_classes=2: the data set has 3 classes"):
        finetune(run_cfg(tmp_path, f"model.pretrained={path}", "eval.num_classes=2"), train_data=Clips(8))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_evaluate_never_replaces_a_finetune_runs_test_results(synth, tmp_path, capsys):
    """Issue #28.1: `tgmae evaluate` into a finetune run folder replaced that run's test_results.json
    and test_predictions.csv without a word; now refused naming the file, unless asked
    (checkpoint.resume=ignore_config). Its own folder, rerun with the same settings, is fine; with
    other settings it is refused naming the key."""
    from tgmae.cli import main
    from tgmae.models.classifier import classifier_arch
    from tgmae.weights.classifier import save_classifier

    names = (synth / "classes.txt").read_text().splitlines()
    torch.manual_seed(0)
    arch = classifier_arch(VideoMAEArch(**{**ARCH.__dict__, "image_size": 32}))
    clf = save_classifier(VideoClassifier(arch, len(names), head_init_scale=1.0), tmp_path / "clf.safetensors", names)
    path = _finetune_yaml(tmp_path, synth, views=1)
    run = tmp_path / "ft"
    run.mkdir()
    finetuned = {"top1": 0.5, "views": "2x2", "written_by": "tgmae finetune"}
    (run / "test_results.json").write_text(json.dumps(finetuned))
    (run / "test_predictions.csv").write_text("video_id,true_label\n")
    args = ["evaluate", "-c", str(path), f"model.pretrained={clf}"]
    assert main([*args, f"train.output_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "test_results.json" in err and "train.output_dir" in err and "\n" not in err.strip()
    assert json.loads((run / "test_results.json").read_text()) == finetuned  # untouched
    assert (run / "test_predictions.csv").read_text() == "video_id,true_label\n"

    own = tmp_path / "ev"
    assert main([*args, f"train.output_dir={own}"]) == 0
    first = json.loads((own / "test_results.json").read_text())
    assert main([*args, f"train.output_dir={own}"]) == 0  # the same test again: its own results
    assert json.loads((own / "test_results.json").read_text())["top1"] == first["top1"]
    capsys.readouterr()
    assert main([*args, "data.test_temporal_views=2", f"train.output_dir={own}"]) == 2
    assert "data.test_temporal_views" in capsys.readouterr().err
    # nor does a finetune run replace the test that evaluate wrote (refused before training)
    assert main(["finetune", "-c", str(path), f"train.output_dir={own}"]) == 2
    assert "test_results.json" in capsys.readouterr().err and not (own / "classifier.safetensors").exists()
    for probe in ("linear", "knn"):  # nor a probe's test_predictions.csv
        assert main(["probe", "-c", str(path), f"model.pretrained={clf}", f"eval.probe={probe}",
                     f"train.output_dir={own}"]) == 2
        assert "test_results.json" in capsys.readouterr().err and not (own / "probe_results.json").exists()
    (own / "test_results.json").unlink()  # predictions alone are another run's too
    assert main([*args, "data.test_temporal_views=2", f"train.output_dir={own}"]) == 2
    assert "test_predictions.csv" in capsys.readouterr().err
    # asked: replaced
    assert main([*args, f"train.output_dir={run}", "checkpoint.resume=ignore_config"]) == 0
    assert json.loads((run / "test_results.json").read_text())["written_by"] == "tgmae evaluate"


def test_evaluate_never_replaces_results_of_other_weights_under_the_same_path(synth, tmp_path, capsys):
    """Issue #28 re-trial 11, S2: `tgmae evaluate` rerun after model.pretrained's FILE was replaced
    (same path, other weights) replaced test_results.json silently: refused in one line naming
    model.pretrained's weights; the same weights rerun; ignore_config replaces."""
    from tgmae.cli import main
    from tgmae.models.classifier import classifier_arch
    from tgmae.weights.classifier import save_classifier

    names = (synth / "classes.txt").read_text().splitlines()
    arch = classifier_arch(VideoMAEArch(**{**ARCH.__dict__, "image_size": 32}))
    clf = tmp_path / "clf.safetensors"
    torch.manual_seed(0)
    save_classifier(VideoClassifier(arch, len(names), head_init_scale=1.0), clf, names)
    args = ["evaluate", "-c", str(_finetune_yaml(tmp_path, synth, views=1)), f"model.pretrained={clf}",
            f"train.output_dir={tmp_path / 'ev'}"]
    assert main(args) == 0 and main(args) == 0  # the same weights: its own results
    kept = {n: (tmp_path / "ev" / n).read_bytes() for n in ("test_results.json", "test_predictions.csv")}
    torch.manual_seed(1)
    save_classifier(VideoClassifier(arch, len(names), head_init_scale=1.0), clf, names)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "model.pretrained's weights" in err and "test_results.json" in err and "\n" not in err.strip()
    assert {n: (tmp_path / "ev" / n).read_bytes() for n in kept} == kept
    assert main([*args, "checkpoint.resume=ignore_config"]) == 0
    assert (tmp_path / "ev" / "test_results.json").read_bytes() != kept["test_results.json"]


def test_evaluate_refuses_a_test_list_of_the_checkpoints_own_finetuning_videos(synth, tmp_path, capsys):
    """Issue 28 re-trial 16B (S1, evaluate's side): a finetuned run evaluated with
    data.val_annotations = its own finetuning list (and some other data.train_annotations) scored the
    videos it trained on. The run folder's saved config.yaml names that list: refused in one line
    naming data.val_annotations and the config.yaml, before the classifier loads; a classifier file
    without a saved config beside it is checked against data.* only."""
    from tgmae.cli import main
    from tgmae.config import save_config
    from tgmae.models.classifier import classifier_arch
    from tgmae.weights.classifier import save_classifier

    names = (synth / "classes.txt").read_text().splitlines()
    torch.manual_seed(0)
    arch = classifier_arch(VideoMAEArch(**{**ARCH.__dict__, "image_size": 32}))
    path = _finetune_yaml(tmp_path, synth, views=1)
    run = tmp_path / "ft"
    run.mkdir()
    save_classifier(VideoClassifier(arch, len(names), head_init_scale=1.0), run / "classifier.safetensors", names)
    save_config(load_config(path), run / "config.yaml")  # the run finetuned on train.csv
    swapped = ["evaluate", "-c", str(path), "data.train_annotations=val.csv", "data.val_annotations=train.csv"]
    capsys.readouterr()
    for weights in (run, run / "classifier.safetensors"):
        assert main([*swapped, f"model.pretrained={weights}", f"train.output_dir={tmp_path / 'ev'}"]) == 2
        err = capsys.readouterr().err.strip()
        assert "data.val_annotations=train.csv" in err and str(run / "config.yaml") in err, err
        assert "\n" not in err and not (tmp_path / "ev").exists()  # refused before the folder is made
    bare = tmp_path / "bare" / "clf.safetensors"
    bare.parent.mkdir()
    bare.write_bytes((run / "classifier.safetensors").read_bytes())
    assert main([*swapped, f"model.pretrained={bare}", f"train.output_dir={tmp_path / 'ev'}"]) == 0
    # re-trial 17A (M1): evaluate trains on nothing; with the run's own list known, a data.train_annotations
    # that happens to hold the test videos is not what the model trained on: no refusal
    same = ["evaluate", "-c", str(path), "data.train_annotations=val.csv", "data.val_annotations=val.csv"]
    assert main([*same, f"model.pretrained={run}", f"train.output_dir={tmp_path / 'ev2'}"]) == 0
    assert main([*same, f"model.pretrained={bare}", f"train.output_dir={tmp_path / 'ev3'}"]) == 2  # unknown: the guess


def test_finetune_refuses_a_test_list_of_the_pretraining_runs_videos(synth, tmp_path, capsys):
    """Issue 28 (after re-trial 16B): finetuning an encoder whose pretraining run (its saved
    config.yaml) trained on the very videos of data.val_annotations scored them; refused in one line
    naming that config, before training (no classifier written)."""
    from tgmae.cli import main
    from tgmae.config import save_config

    torch.manual_seed(0)
    pre = tmp_path / "pre"
    pre.mkdir()
    save_pretraining_model(VideoMAEPretrainer(VideoMAEArch(**{**ARCH.__dict__, "image_size": 32})),
                           pre / "model.safetensors")
    path = _finetune_yaml(tmp_path, synth, views=1)
    save_config(load_config(path), pre / "config.yaml")  # pretrained on train.csv
    run = tmp_path / "ft"
    argv = ["finetune", "-c", str(path), "data.train_annotations=val.csv", "data.val_annotations=train.csv",
            f"model.pretrained={pre}", f"train.output_dir={run}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert str(pre / "config.yaml") in err and "data.val_annotations=train.csv" in err and "\n" not in err, err
    assert not list(run.rglob("*.safetensors"))


def test_a_resumed_finetune_evaluates_in_the_precision_the_run_began_with(tmp_path, monkeypatch):
    """Issue #28 re-trial 19B S2: under train.precision=auto a resumed run trains on in the precision
    it began with (kept in its checkpoints); its evaluations and test follow it, not a new measurement."""
    from tgmae.evaluate import finetune as finetune_module
    from tgmae.train import precision

    seen = []
    real = finetune_module.evaluate_classifier

    def recording(*args, **kwargs):
        seen.append(kwargs["precision"])
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "evaluate_classifier", recording)
    path = save_pretraining_model(pretrainer(), tmp_path / "pt.safetensors")
    keys = [f"model.pretrained={path}", "checkpoint.resume=auto", "eval.mixup=0", "eval.cutmix=0",
            "train.precision=auto", "train.device=cpu"]
    monkeypatch.setattr(precision, "cpu_prefers_bf16", lambda: True)
    finetune(run_cfg(tmp_path, *keys, "train.epochs=1"), train_data=Clips(8), val_data=Clips(8, seed=1))
    assert seen == ["bf16"]
    monkeypatch.setattr(precision, "cpu_prefers_bf16", lambda: False)  # measured otherwise now
    finetune(run_cfg(tmp_path, *keys, "train.epochs=2"), train_data=Clips(8), val_data=Clips(8, seed=1))
    assert seen[1:] and set(seen[1:]) == {"bf16"}


def test_finetune_into_a_probe_run_folder_names_the_run_kind_first(tmp_path):
    """Issue 28 re-trial 20A M2: finetune with train.output_dir a probe run's folder was refused for
    its test_predictions.csv ("of another test", though the same test list) advising
    checkpoint.resume=ignore_config, which then gave "holds a linear / k-NN probe run ... not a
    finetune run". The run-kind refusal comes first, with or without ignore_config."""
    path = save_pretraining_model(pretrainer(), tmp_path / "pt.safetensors")
    run = tmp_path / "run"
    head = torch.nn.Linear(32, 3)
    ckpt.save_checkpoint(run / "checkpoints", head, torch.optim.SGD(head.parameters(), lr=0.1), None,
                         ckpt.TrainPosition(step=1, epoch=1), {}, extra={"task": "probe"})
    (run / "test_predictions.csv").write_text("video_id,true_label,pred_1,score_1\nv0,class 0,class 0,0.9\n")
    for resume in ("auto", "ignore_config"):
        cfg = run_cfg(tmp_path, f"model.pretrained={path}", "train.epochs=1", f"checkpoint.resume={resume}")
        with pytest.raises(ckpt.CheckpointError) as err:
            finetune(cfg, train_data=Clips(8), val_data=Clips(8, seed=1))
        assert "probe run" in str(err.value) and "finetune run" in str(err.value), resume
    # re-trial 21B S1: an L-BFGS / k-NN probe's folder has no checkpoints; under ignore_config finetune
    # said "replacing what it holds" and left the probe's results beside its own
    lbfgs = tmp_path / "lbfgs"
    lbfgs.mkdir()
    (lbfgs / "probe_results.json").write_text(json.dumps({"probe": "linear", "optimizer": "lbfgs", "top1": 0.0}))
    (lbfgs / "test_predictions.csv").write_text("video_id,true_label,pred_1,score_1\nv0,class 0,class 0,0.9\n")
    for resume in ("auto", "ignore_config"):
        cfg = run_cfg(tmp_path, f"model.pretrained={path}", "train.epochs=1", f"checkpoint.resume={resume}",
                      f"train.output_dir={lbfgs}")
        with pytest.raises(ckpt.CheckpointError, match=r"holds a linear / k-NN probe run .*probe_results.json"):
            finetune(cfg, train_data=Clips(8), val_data=Clips(8, seed=1))
    assert sorted(p.name for p in lbfgs.iterdir()) == ["probe_results.json", "test_predictions.csv"]


def test_evaluate_tests_a_classifier_at_its_own_geometry_and_says_a_key_set_otherwise(synth, tmp_path, caplog):
    """Issue 28 re-trial 20A S4: `tgmae evaluate model.pretrained=RUN data.num_frames=8` of a classifier
    finetuned at 16 px, 4 frames, frame_stride 2 tested it at 224 px, 8 frames, stride 4 (the
    defaults) without a word. The classifier's own settings (its run's config.yaml: frames, size,
    stride, sampling, mean, std; else the geometry stored with its weights) are used where the user
    did not set the key; a key set to another value is kept (positions are interpolated) and said
    in one warning naming both values."""
    from tgmae.commands.evaluate import main as evaluate_main
    from tgmae.config import RunConfig, save_config

    names = (synth / "classes.txt").read_text().split("\n")
    names = [n for n in names if n]
    run = tmp_path / "ft"
    run.mkdir()
    clf = build_classifier(load_encoder_source(save_pretraining_model(pretrainer(), tmp_path / "pt.safetensors")),
                           len(names))
    save_classifier(clf, run / "classifier.safetensors", names)
    trained = RunConfig()
    trained.data.num_frames, trained.data.image_size, trained.data.frame_stride = 4, 16, 2
    trained.data.format, trained.data.root, trained.data.train_annotations = "csv", str(synth), "train.csv"
    save_config(trained, run / "config.yaml")
    data = [f"data.root={synth}", "data.train_annotations=train.csv", "data.val_annotations=val.csv",
            "data.format=csv", "data.num_workers=0", "data.test_temporal_views=1", "data.test_spatial_views=1",
            "model.patch_size=8", "train.precision=fp32", "log.progress=false"]

    def evaluate(out: str, *more: str) -> tuple[dict, list[str]]:
        caplog.clear()
        with caplog.at_level("INFO", logger="tgmae"):
            assert evaluate_main([*data, f"model.pretrained={run}", f"train.output_dir={tmp_path / out}", *more]) == 0
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "model.pretrained" in
                  r.getMessage()]  # (not the note on videos shorter than 8 frames x stride 2)
        return json.loads((tmp_path / out / "test_results.json").read_text())["settings"], warned

    settings, warned = evaluate("e1")
    assert (settings["data.num_frames"], settings["data.image_size"], settings["data.frame_stride"]) == (4, 16, 2)
    assert warned == []
    settings, warned = evaluate("e2", "data.num_frames=8")
    assert (settings["data.num_frames"], settings["data.image_size"], settings["data.frame_stride"]) == (8, 16, 2)
    assert len(warned) == 1 and "data.num_frames=8" in warned[0] and "4" in warned[0], warned
    # re-trial 22B (S2): an export-hf folder of the run tested at the default stride 4 "as it was finetuned"
    from tgmae.cli import main as cli_main

    assert cli_main(["export-hf", str(run / "classifier.safetensors"), str(tmp_path / "hf"), "--classifier"]) == 0
    exported = run
    run = tmp_path / "hf"
    settings, warned = evaluate("e4")
    assert (settings["data.num_frames"], settings["data.image_size"], settings["data.frame_stride"]) == (4, 16, 2)
    # a classifier file outside any run: the geometry stored with its weights, and a warning that the rest is not
    bare = tmp_path / "bare.safetensors"
    shutil.copy(exported / "classifier.safetensors", bare)
    run = bare
    settings, warned = evaluate("e3")
    assert (settings["data.num_frames"], settings["data.image_size"]) == (4, 16) and warned == []
    assert any("records no frame stride" in r.getMessage() for r in caplog.records)


def test_a_finetune_run_says_once_which_encoder_it_finetunes(tmp_path, caplog):
    """Session 13 diff read: "finetuning the encoder of ..." was said once through a `_said` flag
    set on the task inside `build_model`. The run says it once (rank 0), as it goes to build the
    model; building a task's model (the sanity harness, each FSDP gather) says nothing."""
    import logging

    path = save_pretraining_model(pretrainer(), tmp_path / "pt.safetensors")
    cfg = run_cfg(tmp_path, f"model.pretrained={path}", "train.epochs=1", "eval.mixup=0", "eval.cutmix=0")
    with caplog.at_level(logging.INFO, logger="tgmae"):
        FinetuneTask(cfg, Clips(8), None, 3).build_model()
        assert "finetuning the encoder" not in caplog.text
        finetune(cfg, train_data=Clips(8))
    assert caplog.text.count(f"finetuning the encoder of {path}") == 1


def test_a_classifier_keeps_its_clip_settings_out_of_its_run_and_through_export_and_convert(tmp_path, caplog):
    """Re-trial 24B S3: `tgmae export-hf runs/ft/classifier.safetensors hf --classifier`, `tgmae convert hf
    conv.safetensors`, `tgmae evaluate model.pretrained=conv.safetensors` tested at frame_stride 4 (the
    default), the run's being 2: the converted file held only the arch. The clip settings a model was
    trained with travel in our file's metadata: finetune writes them, export-hf reads them from a file
    outside its run, convert carries them, evaluate and visualize take them ("recorded in FILE")."""
    from tgmae.evaluate.multiview import load_tested_classifier
    from tgmae.evaluate.visualize import run_settings
    from tgmae.weights.convert import convert
    from tgmae.weights.export_hf import export_hf
    from tgmae.weights.model_card import EXPORT_DATA_KEY

    path = save_pretraining_model(pretrainer(), tmp_path / "pt.safetensors")
    cfg = run_cfg(tmp_path, f"model.pretrained={path}", "train.epochs=1", "eval.mixup=0", "eval.cutmix=0",
                  "data.frame_stride=2", "data.mean=[0.5,0.4,0.3]")
    finetune(cfg, train_data=Clips(8))
    bare = tmp_path / "bare.safetensors"  # a classifier copied out of its run folder
    shutil.copy(tmp_path / "run" / "classifier.safetensors", bare)
    export_hf(tmp_path / "run" / "classifier.safetensors", tmp_path / "hf_run", classifier=True, verify=False)
    export_hf(bare, tmp_path / "hf_bare", classifier=True, verify=False)
    for hf in ("hf_run", "hf_bare"):
        recorded = json.loads((tmp_path / hf / "config.json").read_text())[EXPORT_DATA_KEY]
        assert (recorded["frame_stride"], recorded["mean"]) == (2, [0.5, 0.4, 0.3]), hf
    convert(tmp_path / "hf_run", tmp_path / "conv_hf.safetensors")
    convert(bare, tmp_path / "conv_bare.safetensors")
    caplog.clear()
    for tested in (tmp_path / "conv_hf.safetensors", tmp_path / "conv_bare.safetensors", bare):
        loaded, given = load_config_and_keys_for(tested)
        _, tested_cfg = load_tested_classifier(loaded, given=given)
        assert (tested_cfg.data.num_frames, tested_cfg.data.image_size, tested_cfg.data.frame_stride,
                tuple(tested_cfg.data.mean)) == (4, 16, 2, (0.5, 0.4, 0.3)), tested
        settings, source = run_settings(tested)
        assert settings["data"]["frame_stride"] == 2 and source == f"the settings stored in {tested}"
    assert "records no frame stride" not in caplog.text


def load_config_and_keys_for(pretrained: Path):
    from tgmae.config import load_config_and_keys

    return load_config_and_keys(None, [f"model.pretrained={pretrained}", "train.device=cpu", "model.patch_size=8"])


def test_finetune_reads_the_videos_at_the_clip_settings_the_encoder_was_trained_with(synth, tmp_path, caplog):
    """Re-trial 26A S2: `tgmae finetune` of a 4-frame, 32-px, stride-2 pretrained model with a config
    that sets no clip size trained and tested at the defaults, 16 x 224 stride 4, without a word;
    probe, extract, retrieve and evaluate took the model's own. The data keys the user left unset
    (the recipe sets none) are model.pretrained's own, said in one log line; one set is kept and
    warned of, naming both values."""
    from tgmae.cli import main as cli_main

    torch.manual_seed(0)
    own = {"num_frames": 4, "image_size": 32, "frame_stride": 2, "sampling": "dense",
           "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    pt = save_pretraining_model(VideoMAEPretrainer(VideoMAEArch(**{**ARCH.__dict__, "image_size": 32})),
                                tmp_path / "pt.safetensors", data=own)
    config = yaml.safe_load(_finetune_yaml(tmp_path, synth, views=1).read_text())
    for key in ("num_frames", "image_size", "frame_stride"):  # a config that sets no clip size
        del config["data"][key]
    (tmp_path / "noclip.yaml").write_text(yaml.safe_dump(config))

    def run(out: str, *more: str) -> tuple[RunConfig, list[str]]:
        caplog.clear()
        with caplog.at_level("INFO", logger="tgmae"):
            assert cli_main(["finetune", "-c", str(tmp_path / "noclip.yaml"), f"model.pretrained={pt}",
                             f"train.output_dir={tmp_path / out}", *more]) == 0
        said = [r.getMessage() for r in caplog.records if f"model.pretrained={pt}" in r.getMessage()]
        return load_config(tmp_path / out / "config.yaml"), said

    saved, said = run("ft")
    assert (saved.data.num_frames, saved.data.image_size, saved.data.frame_stride, list(saved.data.mean)) == \
        (4, 32, 2, own["mean"])
    assert len(said) == 1 and "data.num_frames=4" in said[0] and "as it was trained" in said[0], said
    saved, said = run("ft_set", "data.frame_stride=1")
    assert (saved.data.num_frames, saved.data.frame_stride) == (4, 1)  # the user's key wins
    (warned,) = [s for s in said if "data.frame_stride=1 (its own: 2)" in s]
    assert "is finetuned at the settings given, not those it was trained with" in warned, warned
