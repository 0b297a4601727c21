"""Linear probe: pooled features, the on-disk cache and its key, the probe head and optimizer,
the task on the shared loop, and `tgmae probe` on synthetic H.264 files."""

from __future__ import annotations

import dataclasses

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import Dataset

from tgmae.config import ConfigError, load_config
from tgmae.evaluate.classes import ClassMismatchError
from tgmae.evaluate.features import cached_features, extract_features, feature_cache_key, pooled_features
from tgmae.evaluate.lars import LARS
from tgmae.evaluate.probe import FeatureDataset, ProbeHead, ProbeTask, build_probe_optimizer, linear_probe, score_probe
from tgmae.evaluate.recipes import PROBE_RECIPE, with_recipe
from tgmae.models import VideoMAEArch, VideoMAEPretrainer
from tgmae.train.loop import Trainer
from tgmae.train.optim import param_groups
from tgmae.weights import checkpoint as ckpt
from tgmae.weights.pretraining import save_pretraining_model
from tgmae.weights.sources import load_encoder_source
from conftest import once

ARCH = VideoMAEArch(embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4,
                    image_size=16, decoder_dim=16, decoder_depth=1, decoder_heads=1)


class Clips(Dataset):
    def __init__(self, n: int = 24, k: int = 3, seed: int = 0, views: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % k
        self.video = 0.3 * torch.randn(n, 3, 4, 16, 16, generator=g) + self.labels.view(-1, 1, 1, 1, 1).float()
        self.views = views
        self.loads = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        self.loads += 1
        v = self.video[i] if not self.views else torch.stack([self.video[i] * (1 + 0.1 * j) for j in range(self.views)])
        return {"video": v, "label": int(self.labels[i]), "index": i, "load_failures": 0}


class Broken(Clips):
    """Clips whose rows in `bad` cannot be read (as a `tgmae.data.dataset` dataset marks them in evaluation)."""

    def __init__(self, n: int, bad: set[int], **kwargs):
        super().__init__(n, **kwargs)
        self.bad = bad

    def __getitem__(self, i: int) -> dict:
        return {**super().__getitem__(i), "unreadable": i in self.bad, "load_error": "broken" if i in self.bad else ""}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_pretraining_model(VideoMAEPretrainer(ARCH), tmp_path_factory.mktemp("pt") / "pt.safetensors")


def encoder_of(path: Path):
    from tgmae.models.encoder import VideoViTEncoder

    src = load_encoder_source(path)
    enc = VideoViTEncoder(src.arch)
    enc.load_state_dict(src.encoder)
    return enc.eval()


def probe_cfg(tmp_path: Path, checkpoint: Path, *overrides: str):
    base = ["data.num_frames=4", "data.image_size=16", "model.patch_size=8", "train.batch_size=8",
            f"train.output_dir={tmp_path / 'probe'}", "train.precision=fp32", "log.progress=false",
            "log.tensorboard=false", "data.num_workers=0", "checkpoint.resume=", f"model.pretrained={checkpoint}",
            "checkpoint.every_steps=1000"]
    return with_recipe(PROBE_RECIPE, None, base + list(overrides))


def test_features_are_mean_pooled_encoder_output_and_views_average(checkpoint):
    enc = encoder_of(checkpoint)
    data = Clips(5)
    out = extract_features(enc, data, batch_size=2)
    with torch.no_grad():
        want = enc(data.video).mean(dim=1)
    assert torch.allclose(out["features"], want, atol=1e-5)
    assert out["label"].tolist() == data.labels.tolist()
    multi = Clips(3, views=2)
    got = pooled_features(enc, torch.stack([multi[i]["video"] for i in range(3)]))
    with torch.no_grad():
        per_view = [enc(torch.stack([multi[i]["video"][j] for i in range(3)])).mean(1) for j in range(2)]
    assert torch.allclose(got, (per_view[0] + per_view[1]) / 2, atol=1e-5)


def test_feature_cache_is_reused_and_keyed_by_weights_and_data(checkpoint, tmp_path):
    cfg = probe_cfg(tmp_path, checkpoint, "data.train_annotations=a.csv")
    enc = encoder_of(checkpoint)
    digest = load_encoder_source(checkpoint).digest()
    key, inputs = feature_cache_key(digest, cfg.data, "train")
    path = tmp_path / f"{key}.safetensors"
    data = Clips(6)
    first = cached_features(enc, data, path, inputs, batch_size=4)
    assert path.is_file() and data.loads == 6
    again = cached_features(enc, data, path, inputs, batch_size=4)
    assert data.loads == 6  # read from disk, the dataset was not touched
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    # what decides the pixels (or the weights) changes the key; loader settings do not
    other = probe_cfg(tmp_path, checkpoint, "data.train_annotations=a.csv", "data.frame_stride=2")
    assert feature_cache_key(digest, other.data, "train")[0] != key
    assert feature_cache_key(digest, cfg.data, "val")[0] != key
    assert feature_cache_key("0" * 64, cfg.data, "train")[0] != key
    assert feature_cache_key(digest, cfg.data, "train", precision="bf16")[0] != key  # re-trial 19B: bf16 features
    workers = probe_cfg(tmp_path, checkpoint, "data.train_annotations=a.csv", "data.num_workers=3")
    assert feature_cache_key(digest, workers.data, "train")[0] == key
    # a damaged cache file is recomputed, not trusted
    path.write_bytes(b"garbage")
    third = cached_features(enc, data, path, inputs, batch_size=4)
    assert data.loads == 12 and torch.allclose(third[0], first[0])


def test_probe_head_protocol_and_optimizers():
    head = ProbeHead(64, 7)
    assert not head.bn.affine and head.bn.eps == 1e-6 and list(head.bn.parameters()) == []
    w = head.head.weight.detach()
    assert 0.005 < float(w.std()) < 0.015 and float(head.head.bias.detach().abs().max()) == 0.0
    groups = param_groups(head.named_parameters(), 0.0)
    cfg = with_recipe(PROBE_RECIPE)
    assert cfg.optim.base_lr == 0.1 and cfg.optim.weight_decay == 0.0 and cfg.train.epochs == 90
    assert isinstance(build_probe_optimizer(groups, "lars", cfg.optim), LARS)
    sgd = build_probe_optimizer(groups, "sgd", cfg.optim)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    task = ProbeTask(cfg, FeatureDataset(torch.randn(4, 64), torch.zeros(4)), None, 7)
    assert isinstance(task.build_optimizer(groups, cfg.optim, torch.device("cpu")), LARS)


def test_linear_probe_with_lars_learns_and_writes_results(checkpoint, tmp_path):
    # The loop builds the task's own optimizer (ProbeTask.build_optimizer -> LARS).
    # LARS moves each weight matrix by lr x 0.001 of its norm per step: MAE's lr 0.1 x 16384/256
    # is 6.4; a batch of 8 needs the absolute lr to get there in a few steps.
    cfg = probe_cfg(tmp_path, checkpoint, "train.epochs=15", "optim.warmup_epochs=2", "optim.lr=5")
    cache = tmp_path / "cache"
    res = linear_probe(cfg, train_data=Clips(48), val_data=Clips(24, seed=1), num_classes=3, cache_dir=cache)
    assert res.top1 >= 0.9  # separable toy classes, chance 1/3
    assert len([r for r in res.history if "val_top1" in r]) == 15
    saved = json.loads((tmp_path / "probe" / "probe_results.json").read_text())
    assert saved["top1"] == pytest.approx(res.top1) and saved["feature_dim"] == 32
    assert len(list(cache.glob("*.safetensors"))) == 2  # train and val features
    from tgmae.weights import checkpoint as ckpt

    state = ckpt.load_checkpoint(ckpt.find_latest(tmp_path / "probe" / "checkpoints")).optimizer_state
    assert all("mu" in s for s in state["state"].values())  # LARS momentum buffers, not AdamW's
    # the probe run is no encoder: loading it as one names what it is and the encoder to pass
    from tgmae.weights.files import CheckpointError
    from tgmae.weights.sources import load_encoder_source

    with pytest.raises(CheckpointError, match=r"without a video encoder, only bn, head \(a linear probe's.*"
                                              r"model\.pretrained="):
        load_encoder_source(tmp_path / "probe")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from tgmae.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_dataset(root, num_videos=12, frames=12, size=32, gop=6, seed=2, val_fraction=0.25)
    return root


def test_probe_cli_on_synthetic_videos_caches_features(synth, tmp_path):
    from tgmae.commands.probe import main

    torch.manual_seed(0)
    arch = VideoMAEArch(**{**ARCH.__dict__, "image_size": 32})
    pt = save_pretraining_model(VideoMAEPretrainer(arch), tmp_path / "pt.safetensors")
    config = {"data": {"format": "csv", "root": str(synth), "train_annotations": "train.csv",
                       "val_annotations": "val.csv", "num_frames": 4, "frame_stride": 2, "image_size": 32,
                       "num_workers": 0},
              "model": {"patch_size": 8}, "train": {"batch_size": 3, "epochs": 2, "precision": "fp32"},
              "log": {"progress": False, "tensorboard": False}}
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    args = ["-c", str(path), f"model.pretrained={pt}", f"train.output_dir={run}", "checkpoint.resume="]
    assert main(args) == 0
    saved = load_config(run / "config.yaml")
    assert saved.optim.base_lr == 0.1 and saved.eval.probe_optimizer == "lars"  # MAE's recipe applied
    files = sorted(p.name for p in (run / "features").glob("*.safetensors"))
    assert [f.split("-")[0] for f in files] == ["train", "val"]
    stamp = [(run / "features" / f).stat().st_mtime_ns for f in files]
    # second run (its own folder: checkpoint.resume='' into the first's is refused): features from the cache
    again = [*args[:3], f"train.output_dir={tmp_path / 'again'}", f"eval.feature_cache={run / 'features'}", args[-1]]
    assert main(again) == 0
    assert [(run / "features" / f).stat().st_mtime_ns for f in files] == stamp
    from tgmae.locks import RunFolderError

    with pytest.raises(RunFolderError, match="train.output_dir"):  # a fresh start asked into the probe's folder
        main(args)
    result = json.loads((run / "probe_results.json").read_text())
    rows = {name: len((synth / f"{name}.csv").read_text().strip().splitlines()) - 1 for name in ("train", "val")}
    assert result["num_train"] == rows["train"] and result["num_val"] == rows["val"]
    assert 0.0 <= result["top1"] <= 1.0


def test_probe_features_miss_the_cache_when_classes_txt_is_reordered(synth, tmp_path):
    """Labels given as class names: reordering classes.txt renumbers them, so the cached features
    (labels in the old numbering) must not be reused (re-trial: wrong true labels from the cache)."""
    import shutil

    from tgmae.evaluate.probe import probe_features

    root = tmp_path / "data"
    shutil.copytree(synth, root)
    names = (root / "classes.txt").read_text().splitlines()
    for split in ("train", "val"):
        lines = (root / f"{split}.csv").read_text().splitlines()
        rows = [line.split(",", 2) for line in lines[1:]]
        (root / f"{split}.csv").write_text("path,label\n" + "".join(f"{r[0]},{names[int(r[1])]}\n" for r in rows))
    torch.manual_seed(0)
    pt = save_pretraining_model(VideoMAEPretrainer(VideoMAEArch(**{**ARCH.__dict__, "image_size": 32})),
                                tmp_path / "pt.safetensors")
    cfg = probe_cfg(tmp_path, pt, "data.format=csv", f"data.root={root}", "data.train_annotations=train.csv",
                    "data.val_annotations=val.csv", "data.image_size=32", "data.frame_stride=2")
    cache = tmp_path / "fcache"
    train, _, first = probe_features(cfg, cache_dir=cache, progress=False)
    before = [first[i] for i in train.labels.tolist()]
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in reversed(names)))
    train, _, second = probe_features(cfg, cache_dir=cache, progress=False)
    assert second == list(reversed(names))
    assert [second[i] for i in train.labels.tolist()] == before  # each video keeps its class name


def test_a_lars_probe_min_lr_above_the_peak_is_refused_before_extracting(checkpoint, tmp_path):
    """As re-trial 26A M1 for the attentive probe: optim.min_lr above the LARS probe's peak was refused
    by the loop only once the features were extracted (into train.output_dir/features by default);
    refused before any video is read."""
    train, val, cache = Clips(24), Clips(12, seed=1), tmp_path / "cache"
    with pytest.raises(ConfigError, match=r"^optim\.min_lr=5 gives an lr of 50, above the peak 1 \(optim\.lr_floor=1"):
        linear_probe(probe_cfg(tmp_path, checkpoint, "optim.min_lr=5"), train_data=train, val_data=val,
                     num_classes=3, cache_dir=cache)
    assert train.loads == val.loads == 0 and not cache.exists() and not (tmp_path / "probe").exists()


LISTS_CHANGED = "the train / val lists (rows, labels, video files) changed"


@pytest.mark.parametrize("probe", [["eval.probe=linear"],  # LARS, on the loop
                                   ["eval.probe=attentive", "eval.attentive_epochs=1", "eval.attentive_heads=2",
                                    "data.test_temporal_views=1", "data.test_spatial_views=1"]])
def test_a_probe_rerun_on_edited_lists_is_refused_naming_the_lists_not_the_weights(synth, tmp_path, probe):
    """Re-trial 26B M1: a finished LARS or attentive probe rerun after a val label was edited or a
    train row removed was refused with "(fingerprint X -> Y: model.pretrained's weights changed)",
    the weights untouched. The refusal names the lists."""
    import shutil

    from tgmae.evaluate.probes import run_probe

    root = tmp_path / "data"
    shutil.copytree(synth, root)
    torch.manual_seed(0)
    pt = save_pretraining_model(VideoMAEPretrainer(VideoMAEArch(**{**ARCH.__dict__, "image_size": 32})),
                                tmp_path / "pt.safetensors")
    cfg = probe_cfg(tmp_path, pt, "data.format=csv", f"data.root={root}", "data.train_annotations=train.csv",
                    "data.val_annotations=val.csv", "data.image_size=32", "data.frame_stride=2",
                    "checkpoint.resume=auto", "train.epochs=2", *probe)
    run_probe(cfg)
    lists = {name: (root / name).read_text() for name in ("train.csv", "val.csv")}
    edits = {"val.csv": lists["val.csv"].replace("synth_00006.mp4,0,", "synth_00006.mp4,1,"),  # a label edited
             "train.csv": "".join(lists["train.csv"].splitlines(keepends=True)[:-1])}  # a row removed
    for name, edited in edits.items():
        assert edited != lists[name]
        (root / name).write_text(edited)
        with pytest.raises(ckpt.CheckpointError) as e:
            run_probe(cfg)
        assert f": {LISTS_CHANGED})" in str(e.value) and "weights" not in str(e.value), str(e.value)
        (root / name).write_text(lists[name])


def test_the_probe_fingerprint_keeps_its_digest_and_names_the_part_that_changed():
    """Re-trial 26B M1: the loop probes' fingerprint is "DIGEST.WEIGHTS.LISTS": DIGEST the features
    one of before (checkpoints written then still resume), the parts name what changed."""
    from tgmae.evaluate.probe import PROBE_INPUTS, features_fingerprint, tensors_fingerprint
    from tgmae.train.resume import InputsChanged, input_changes

    def feats(encoder: str, labels: list[int]) -> FeatureDataset:
        d = FeatureDataset(torch.arange(8.0).view(4, 2) * (2 if encoder == "b" else 1), torch.tensor(labels))
        d.encoder = encoder
        return d

    def named(old: str, new: str) -> str:
        with pytest.raises(InputsChanged) as e:
            input_changes(load_config(None, []), "probe", Path("ckpt"), old, new, PROBE_INPUTS)
        return e.value.why.split(": ")[-1].rstrip(")")

    base = features_fingerprint(feats("a", [0, 1, 0, 1]), None, 2)
    assert base.split(".")[0] == tensors_fingerprint([(feats("a", [0, 1, 0, 1]).features, torch.tensor([0, 1, 0, 1])),
                                                      None], 2)
    assert named(base, features_fingerprint(feats("b", [0, 1, 0, 1]), None, 2)) == "model.pretrained's weights changed"
    assert named(base, features_fingerprint(feats("a", [0, 1, 1, 1]), None, 2)) == LISTS_CHANGED
    assert named(base.split(".")[0], base.split(".")[0][::-1]) == f"{PROBE_INPUTS[0]} or {LISTS_CHANGED}"


def _separable(n: int, dim: int, seed: int) -> FeatureDataset:
    """Two classes 6 std apart along one random direction: linearly separable with a wide margin."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    mu = F.normalize(torch.randn(dim, generator=torch.Generator().manual_seed(99)), dim=0)
    return FeatureDataset(torch.randn(n, dim, generator=g) + 3.0 * (2 * labels.float() - 1)[:, None] * mu, labels)


@pytest.mark.parametrize("batch", [4, 16])
def test_default_probe_recipe_trains_on_a_small_set(tmp_path, batch):
    # MAE's 0.1 x batch/256 alone (lr 0.0016-0.006 here) leaves LARS's head at its init: loss
    # ~0.68, top-1 0.6-0.8 on this set. The recipe's lr floor (1.0) trains it at any batch.
    cfg = with_recipe(PROBE_RECIPE, None, [f"train.batch_size={batch}", f"train.output_dir={tmp_path / 'p'}",
                                           "train.precision=fp32", "log.progress=false", "log.tensorboard=false",
                                           "data.num_workers=0", "checkpoint.every_steps=100000"])
    assert cfg.optim.lr is None and cfg.optim.lr_floor == 1.0 and cfg.train.epochs == 90
    torch.manual_seed(0)
    train, val = _separable(32, 64, 0), _separable(32, 64, 1)
    fit = Trainer(ProbeTask(cfg, train, val, 2), cfg).fit()
    assert score_probe(fit.model, train)["top1"] == 1.0
    assert score_probe(fit.model, val)["top1"] >= 0.9  # 64 dims from 32 points: near, not exactly, 1.0


def test_features_leave_out_unreadable_videos(checkpoint, synth, tmp_path):
    import shutil

    from tgmae.config import DataConfig
    from tgmae.data.dataset import VideoLoadError, build_dataset

    root = tmp_path / "data"
    shutil.copytree(synth, root)
    rows = (root / "train.csv").read_text().strip().splitlines()[1:]
    broken = rows[1].split(",")[0]
    (root / broken).write_bytes(b"not a video")
    data = build_dataset(DataConfig(format="csv", root=str(root), train_annotations="train.csv", num_frames=4,
                                    frame_stride=2, image_size=16), "train", train=False)
    enc, cache = encoder_of(checkpoint), tmp_path / "train.safetensors"
    skipped: list = []
    feats, labels = cached_features(enc, data, cache, {}, unreadable=skipped, batch_size=4)
    assert feats.shape[0] == len(rows) - 1 and [u["video_id"] for u in skipped] == [Path(broken).stem]
    assert labels.tolist() == [r.label for i, r in enumerate(data.records) if i != 1]  # no stand-in
    # "not a video" is a verdict on the file: cached with it named, a rerun gets the same rows (re-trial 24A M2)
    assert cache.exists()
    again: list = []
    assert torch.equal(cached_features(enc, data, cache, {}, unreadable=again, batch_size=4)[0], feats)
    assert again == skipped and skipped[0]["kind"] == "unreadable"
    with pytest.raises(VideoLoadError, match="feature extraction: 1 of"):
        cached_features(enc, data, cache, {}, strict=True, batch_size=4)


def test_probe_resume_refuses_reordered_class_names(checkpoint, tmp_path):
    """A probe's loop checkpoints carry the class names in label order: a rerun whose classes.txt
    was reordered is refused naming the labels that changed."""
    from tgmae.weights import checkpoint as ckpt

    def named(n: int, names: list[str], seed: int = 0) -> Clips:
        data = Clips(n, seed=seed)
        data.class_names = names
        return data

    cfg = probe_cfg(tmp_path, checkpoint, "train.epochs=2", "optim.warmup_epochs=1", "checkpoint.resume=auto")
    linear_probe(cfg, train_data=named(12, ["a", "b", "c"]), num_classes=3)
    saved = ckpt.load_checkpoint(ckpt.find_latest(tmp_path / "probe" / "checkpoints"))
    assert saved.extra["class_names"] == ["a", "b", "c"]
    with pytest.raises(ckpt.CheckpointError, match=r"class names.*label 0: 'a' -> 'c'"):
        linear_probe(cfg, train_data=named(12, ["c", "b", "a"]), num_classes=3)


def test_a_class_name_change_names_the_file_the_names_came_from(tmp_path):
    """Re-trial 32A M3: two entries of Diving48_vocab.json swapped were blamed on "its classes.txt",
    a file that format lacks: the refusal names the format's class source
    (`data.formats.class_names_source`: the vocabulary, classInd.txt, an EPIC CSV's columns), or
    HMDB51's split files' names."""
    from tgmae.train.resume import class_changes

    epic = "uid,participant_id,video_id,narration,start_frame,stop_frame,verb,verb_class,noun,noun_class\n"
    layouts = {"diving48": ("Diving48_V2_train.json", "Diving48_vocab.json", "Diving48_vocab.json"),
               "ucf101": ("trainlist01.txt", "classInd.txt", "classInd.txt"),
               "csv": ("train.csv", "classes.txt", "classes.txt"),
               "epic55": ("EPIC_train_action_labels.csv", "", "EPIC_train_action_labels.csv in its `verb` and `noun`"),
               "hmdb51": ("a_test_split1.txt", "", "the names of its split files")}
    for fmt, (listed, names, named) in layouts.items():
        root = tmp_path / fmt
        root.mkdir()
        (root / listed).write_text(epic if fmt == "epic55" else "x\n")
        if names:
            (root / names).write_text("x\n")
        cfg = load_config(None, [f"data.format={fmt}", f"data.root={root}", f"data.train_annotations={listed}"])
        with pytest.raises(ckpt.CheckpointError) as e:
            class_changes(cfg, root / "checkpoints", ["move left", "move right"], ["move right", "move left"])
        msg = str(e.value)
        assert "label 0: 'move left' -> 'move right'" in msg and named in msg and "\n" not in msg, (fmt, msg)
        assert fmt == "csv" or "classes.txt" not in msg, msg


def test_probe_rerun_reports_the_same_best_and_refuses_other_settings(checkpoint, tmp_path):
    """The best val top-1 and its epoch live in the checkpoint: a rerun of a finished probe reports
    them again; rerunning with another optimizer or on other features is refused, not reused."""
    from tgmae.weights import checkpoint as ckpt

    cfg = probe_cfg(tmp_path, checkpoint, "train.epochs=6", "optim.warmup_epochs=1", "optim.lr=5",
                    "checkpoint.resume=auto")
    data = dict(train_data=Clips(24), val_data=Clips(12, seed=1), num_classes=3, cache_dir=tmp_path / "cache")
    first = linear_probe(cfg, **data)
    # a checkpoint of no preset's size: config.yaml records the head count that ran, not null
    from tgmae.config import load_config

    assert load_config(tmp_path / "probe" / "config.yaml").model.num_heads == ARCH.num_heads
    second = linear_probe(probe_cfg(tmp_path, checkpoint, "train.epochs=6", "optim.warmup_epochs=1", "optim.lr=5",
                                    "checkpoint.resume=auto"), **data)  # a fresh config (num_heads unset) resumes
    evals = lambda res: [r for r in res.history if "val_top1" in r]  # noqa: E731
    assert len(evals(first)) == 6 and evals(second) == evals(first)  # no epoch re-run, none forgotten
    assert (second.best_top1, second.best_epoch) == (first.best_top1, first.best_epoch)
    assert first.best_epoch is not None
    saved = json.loads((tmp_path / "probe" / "probe_results.json").read_text())
    assert saved["best_top1"] == first.best_top1 and saved["best_epoch"] == first.best_epoch

    sgd = probe_cfg(tmp_path, checkpoint, "train.epochs=6", "optim.warmup_epochs=1", "optim.lr=5",
                    "checkpoint.resume=auto", "eval.probe_optimizer=sgd")
    with pytest.raises(ckpt.CheckpointError, match="eval.probe_optimizer: 'lars' -> 'sgd'"):
        linear_probe(sgd, **data)
    other = dict(data, train_data=Clips(24, seed=5), cache_dir=tmp_path / "cache2")  # other features
    with pytest.raises(ckpt.CheckpointError, match="inputs differ"):
        linear_probe(cfg, **other)
    assert json.loads((tmp_path / "probe" / "probe_results.json").read_text()) == saved

    # checkpoint.resume=ignore_config on other features: nothing left to train is refused (the old
    # head would be scored on the new features); with more epochs it continues, says so, logs it,
    # and only evaluations made on the new features count for the best
    forced = probe_cfg(tmp_path, checkpoint, "train.epochs=6", "optim.warmup_epochs=1", "optim.lr=5",
                       "checkpoint.resume=ignore_config")
    with pytest.raises(ckpt.CheckpointError, match="has finished .*probe inputs .*nothing left to train"):
        linear_probe(forced, **other)
    assert json.loads((tmp_path / "probe" / "probe_results.json").read_text()) == saved
    longer = dataclasses.replace(forced, train=dataclasses.replace(forced.train, epochs=8))
    third = linear_probe(longer, **other)
    assert [r["epoch"] for r in evals(third)] == [6, 7]
    assert third.best_epoch in (6, 7) and third.best_top1 == max(r["val_top1"] for r in evals(third))
    logged = [json.loads(line) for line in (tmp_path / "probe" / "config_changes.jsonl").read_text().splitlines()]
    assert list(logged[-1]["changes"]) == ["probe inputs (fingerprint)"] and logged[-1]["step"] > 0


def test_a_mistyped_checkpoint_path_is_not_found_before_the_folders_probe_is_compared(checkpoint, tmp_path):
    """Re-trial 26B M3: a rerun into a finished probe's folder with a mistyped model.pretrained was
    refused as "a probe of other inputs (model.pretrained: ... -> ...)", whose way out,
    checkpoint.resume=ignore_config, does not fix a typo. Every probe finds the checkpoint first."""
    from tgmae.config import save_config
    from tgmae.evaluate.probes import run_probe

    out = tmp_path / "probe"
    out.mkdir()
    save_config(probe_cfg(tmp_path, checkpoint), out / "config.yaml")  # a finished linear probe of `checkpoint`
    (out / "probe_results.json").write_text(json.dumps({"probe": "linear", "optimizer": "lars", "top1": 0.5}))
    typo = checkpoint.parent / "pt.safetensor"
    for probe in ("linear", "knn", "attentive"):
        cfg = probe_cfg(tmp_path, typo, f"eval.probe={probe}", "data.val_annotations=val.csv")
        with pytest.raises(ckpt.CheckpointError, match=f"^checkpoint not found: {re.escape(str(typo))}$"):
            run_probe(cfg)
    with pytest.raises(ConfigError, match="model.pretrained must name"):
        run_probe(probe_cfg(tmp_path, Path(""), "model.pretrained="))
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "probe_results.json"]


def test_checkpoint_geometry_must_match_the_config(checkpoint, tmp_path, capsys):
    """A tubelet-2 checkpoint probed with model.tubelet_size=4 is refused, naming the key and both
    values; so are a patch size and a head count that differ. Nothing is trained or written."""
    from tgmae.cli import main as cli_main
    from tgmae.config import ConfigError

    data = dict(train_data=Clips(8), val_data=None, num_classes=3, cache_dir=tmp_path / "cache")
    for override, message in [("model.tubelet_size=4", "model.tubelet_size=4 but the checkpoint .* has 2"),
                              ("model.num_heads=4", "model.num_heads=4 but the checkpoint .* has 2")]:
        with pytest.raises(ConfigError, match=message):
            linear_probe(probe_cfg(tmp_path, checkpoint, override), **data)
    assert not (tmp_path / "probe").exists()
    args = ["data.num_frames=4", "data.image_size=16", f"model.pretrained={checkpoint}",
            f"train.output_dir={tmp_path / 'cli'}", "log.progress=false"]
    assert cli_main(["probe", *args, "model.patch_size=16"]) == 2  # set against the checkpoint's 8
    err = capsys.readouterr().err.strip()
    assert err.startswith("tgmae probe: ") and "model.patch_size=16" in err and str(checkpoint) in err
    assert cli_main(["probe", *args[:1], "data.image_size=72", f"model.pretrained={checkpoint}"]) == 2
    assert "data.image_size=72" in capsys.readouterr().err


def test_probe_takes_the_architecture_from_the_weights_unless_set(synth, tmp_path, capsys):
    """Fix L: `tgmae probe` of a micro / patch-8 checkpoint without model keys was refused
    (`model.patch_size=16 but the checkpoint ... has 8`, then model.preset): the keys the user left
    unset are the weights' (config.yaml records them), one set against them is refused naming it."""
    from tgmae.cli import main as cli_main

    torch.manual_seed(0)
    micro = VideoMAEArch(embed_dim=64, depth=2, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4,
                         image_size=32, decoder_dim=32, decoder_depth=1, decoder_heads=1)
    pt = save_pretraining_model(VideoMAEPretrainer(micro), tmp_path / "micro.safetensors")
    args = ["data.format=csv", f"data.root={synth}", "data.train_annotations=train.csv",
            "data.val_annotations=val.csv", "data.num_frames=4", "data.frame_stride=2", "data.image_size=32",
            "data.num_workers=0", "train.precision=fp32", "log.progress=false", "log.tensorboard=false",
            "eval.probe=knn", "eval.knn_k=[1]", f"model.pretrained={pt}", f"train.output_dir={tmp_path / 'run'}"]
    assert cli_main(["probe", *args, "model.preset=tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tgmae probe: ") and "model.preset='tiny'" in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()
    assert cli_main(["probe", *args]) == 0
    saved = load_config(tmp_path / "run" / "config.yaml").model
    assert (saved.preset, saved.patch_size, saved.tubelet_size) == ("micro", 8, 2)


def test_probe_and_extract_read_the_videos_at_the_clip_settings_the_encoder_was_trained_with(synth, tmp_path):
    """Re-trial 25 S2: probe and extract of a 4-frame, 32-px model with a config that sets no clip
    size read the videos at the defaults, 16 x 224 (retrieve refused them, M4). The data keys the
    user left unset are model.pretrained's own (recorded with its weights, or its run's
    config.yaml); one set is kept, as evaluate does."""
    from tgmae.cli import main as cli_main

    torch.manual_seed(0)
    micro = VideoMAEArch(embed_dim=64, depth=2, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4,
                         image_size=32, decoder_dim=32, decoder_depth=1, decoder_heads=1)
    own = {"num_frames": 4, "image_size": 32, "frame_stride": 2, "sampling": "dense",
           "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    pt = save_pretraining_model(VideoMAEPretrainer(micro), tmp_path / "micro.safetensors", data=own)
    args = ["data.format=csv", f"data.root={synth}", "data.train_annotations=train.csv",
            "data.val_annotations=val.csv", "data.num_workers=0", "train.precision=fp32", "log.progress=false",
            "log.tensorboard=false", "eval.probe=knn", "eval.knn_k=[1]", f"model.pretrained={pt}"]
    assert cli_main(["probe", *args, f"train.output_dir={tmp_path / 'run'}"]) == 0
    saved = load_config(tmp_path / "run" / "config.yaml").data
    assert (saved.num_frames, saved.image_size, saved.frame_stride, list(saved.mean)) == (4, 32, 2, own["mean"])
    assert cli_main(["probe", *args, "data.frame_stride=1", f"train.output_dir={tmp_path / 'set'}"]) == 0
    assert load_config(tmp_path / "set" / "config.yaml").data.frame_stride == 1  # the user's, kept
    assert cli_main(["extract", *args, "--out", str(tmp_path / "ext"), "--mode", "clip", "--subset", "val"]) == 0
    manifest = json.loads((tmp_path / "ext" / "manifest.json").read_text())
    assert "4" in json.dumps(manifest) and '"image_size": 32' in json.dumps(manifest), manifest


def test_a_clip_setting_set_against_the_encoders_own_is_warned_of_as_what_the_command_does(synth, tmp_path,
                                                                                             caplog):
    """Re-trials 26A M5 / 26B M6: probe, extract and retrieve of a pretraining checkpoint with
    another clip setting set warned that it "is tested at the settings given, not those it was
    finetuned with". The warning says "trained with", and what each command does at them."""
    from tgmae.cli import main as cli_main

    torch.manual_seed(0)
    micro = VideoMAEArch(embed_dim=64, depth=2, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4,
                         image_size=32, decoder_dim=32, decoder_depth=1, decoder_heads=1)
    pt = save_pretraining_model(VideoMAEPretrainer(micro), tmp_path / "micro.safetensors",
                                data={"num_frames": 4, "image_size": 32, "frame_stride": 2})
    args = ["data.format=csv", f"data.root={synth}", "data.train_annotations=train.csv",
            "data.val_annotations=val.csv", "data.num_workers=0", "train.precision=fp32", "log.progress=false",
            "log.tensorboard=false", "eval.probe=knn", "eval.knn_k=[1]", f"model.pretrained={pt}",
            "data.frame_stride=1"]
    runs = {"probed": (["probe", *args, f"train.output_dir={tmp_path / 'probe'}"], 0),
            "read": (["extract", *args, "--out", str(tmp_path / "ext"), "--mode", "clip", "--subset", "val"], 0),
            "tested": (["retrieve", *args, f"train.output_dir={tmp_path / 'ret'}"], 2)}  # no contrastive head
    for verb, (argv, code) in runs.items():
        caplog.clear()
        with caplog.at_level("INFO", logger="tgmae"):
            assert cli_main(argv) == code, argv[0]
        (warned,) = [r.getMessage() for r in caplog.records if "(its own: 2)" in r.getMessage()]
        assert f"is {verb} at the settings given, not those it was trained with" in warned, warned


def _cached(cache: Path, subset: str) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    (path,) = cache.glob(f"{subset}-*.safetensors")
    tensors = load_file(str(path))
    return tensors["features"].float(), tensors["labels"].long()


def test_lbfgs_probe_fits_the_cached_features_with_a_cross_validated_l2(checkpoint, tmp_path):
    """eval.probe_optimizer=lbfgs: no loop; the L2 comes from 4-fold CV on the training features,
    the results file and the head match an independent fit on the same cache, a rerun is identical;
    a switch between a LARS probe and L-BFGS in one folder is refused as other settings unless
    asked (checkpoint.resume=ignore_config), and then a LARS probe's checkpoints change nothing."""
    from safetensors.torch import load_file

    from tgmae.evaluate.logistic import fit_logistic, select_l2

    data = dict(train_data=Clips(48), val_data=Clips(24, seed=1), num_classes=3, cache_dir=tmp_path / "cache")
    lars = probe_cfg(tmp_path, checkpoint, "train.epochs=2", "optim.lr=5")  # a LARS probe in the same folder first
    linear_probe(lars, **data)
    assert (tmp_path / "probe" / "checkpoints").is_dir()
    cfg = probe_cfg(tmp_path, checkpoint, "eval.probe_optimizer=lbfgs", "train.seed=3")
    with pytest.raises(ckpt.CheckpointError, match=r"holds a probe made with other settings \(eval.probe_optimizer: "
                                                   r"'lars' -> 'lbfgs'\).*checkpoint.resume=ignore_config"):
        linear_probe(cfg, **data)
    assert json.loads((tmp_path / "probe" / "probe_results.json").read_text())["optimizer"] == "lars"
    cfg = probe_cfg(tmp_path, checkpoint, "eval.probe_optimizer=lbfgs", "train.seed=3", "checkpoint.resume=ignore_config")
    res = linear_probe(cfg, **data)
    out = tmp_path / "probe"
    saved = json.loads((out / "probe_results.json").read_text())
    assert saved["optimizer"] == "lbfgs" and saved["best_epoch"] is None and saved["cv_folds"] == 4
    assert saved["top1"] == res.top1 == res.best_top1 >= 0.9 and saved["num_train"] == 48
    assert [float(k) for k in saved["cv_top1"]] == list(cfg.eval.probe_l2) and saved["l2"] in cfg.eval.probe_l2
    assert load_config(out / "config.yaml").eval.probe_optimizer == "lbfgs"
    assert len(res.history) == 1 and res.history[0]["l2"] == saved["l2"]

    (x, y), (xv, yv) = _cached(data["cache_dir"], "train"), _cached(data["cache_dir"], "val")
    l2, cv = select_l2(x, y, cfg.eval.probe_l2, 4, seed=3, num_classes=3)
    assert l2 == saved["l2"] and {str(k): v for k, v in cv.items()} == saved["cv_top1"]
    ref = fit_logistic(x, y, l2, 3)
    head = load_file(str(out / "probe_head.safetensors"))
    assert all(torch.equal(head[k], v) for k, v in ref.state_dict().items())
    assert saved["top1"] == float((ref.predict(xv) == yv).float().mean())
    assert torch.equal(res.model(xv), ref.logits(xv))

    fresh = probe_cfg(tmp_path, checkpoint, "eval.probe_optimizer=lbfgs", "train.seed=3",
                      f"train.output_dir={tmp_path / 'fresh'}")
    linear_probe(fresh, **data)  # no LARS checkpoints there; a second fit of the same features
    assert json.loads((tmp_path / "fresh" / "probe_results.json").read_text()) == saved
    again = load_file(str(tmp_path / "fresh" / "probe_head.safetensors"))
    assert all(torch.equal(again[k], v) for k, v in head.items())

    fixed = probe_cfg(tmp_path, checkpoint, "eval.probe_optimizer=lbfgs", "eval.probe_l2=[0.01]",
                      f"train.output_dir={tmp_path / 'fixed'}")
    linear_probe(fixed, **data)  # one value: that L2, no cross-validation
    one = json.loads((tmp_path / "fixed" / "probe_results.json").read_text())
    assert one["l2"] == 0.01 and one["cv_top1"] == {} and one["cv_folds"] is None

    with pytest.raises(ckpt.CheckpointError, match=r"eval.probe_optimizer: 'lbfgs' -> 'lars'"):
        linear_probe(lars, **data)
    assert (out / "probe_head.safetensors").exists()
    lars = probe_cfg(tmp_path, checkpoint, "train.epochs=2", "optim.lr=5", "checkpoint.resume=ignore_config")
    linear_probe(lars, **data)  # back to LARS, asked (resumes its finished run): the lbfgs head is not left behind
    assert not (out / "probe_head.safetensors").exists()
    assert json.loads((out / "probe_results.json").read_text())["optimizer"] == "lars"
    assert load_config(out / "config.yaml").eval.probe_optimizer == "lars"  # the folder's files agree


def test_lbfgs_probe_folds_are_compared_only_when_cross_validation_chooses_the_l2(checkpoint, tmp_path):
    """issue 28: eval.probe_folds 4 -> 2 was refused for an L-BFGS probe with one fixed eval.probe_l2
    (no cross-validation: the folds are unused); with an L2 grid they choose the L2 and are compared."""
    data = dict(train_data=Clips(48), val_data=Clips(24, seed=1), num_classes=3, cache_dir=tmp_path / "cache")
    fixed = [tmp_path, checkpoint, "eval.probe_optimizer=lbfgs", "eval.probe_l2=[0.01]", "checkpoint.resume=auto"]
    first = linear_probe(probe_cfg(*fixed, f"train.output_dir={tmp_path / 'one'}"), **data)
    again = linear_probe(probe_cfg(*fixed, "eval.probe_folds=2", f"train.output_dir={tmp_path / 'one'}"), **data)
    assert again.top1 == first.top1
    grid = [*fixed[:3], "eval.probe_l2=[0.01, 1]", "checkpoint.resume=auto", f"train.output_dir={tmp_path / 'cv'}"]
    linear_probe(probe_cfg(*grid), **data)
    with pytest.raises(ckpt.CheckpointError, match=r"eval.probe_folds: 4 -> 2"):
        linear_probe(probe_cfg(*grid, "eval.probe_folds=2"), **data)


def test_lbfgs_probe_settings_are_checked_and_a_pretraining_folder_is_refused(checkpoint, tmp_path, capsys):
    from tgmae.cli import main as cli_main
    from tgmae.config import ConfigError
    from tgmae.weights import checkpoint as ckpt

    for override, message in [("eval.probe_optimizer=adam", r"eval.probe_optimizer='adam': expected lars\|sgd\|lbfgs"),
                              ("eval.probe_l2=[0.1, 0]", r"eval.probe_l2=\[0.1, 0.0\]: needs at least one value"),
                              ("eval.probe_l2=[]", r"eval.probe_l2=\[\]"),
                              ("eval.probe_l2=[inf]", r"eval.probe_l2=\[inf\]: .* all > 0 and finite"),
                              ("eval.probe_l2=[0.1, 1, 0.1]", r"a value appears twice"),
                              ("eval.probe_folds=1", r"eval.probe_folds=1: must be >= 2")]:
        with pytest.raises(ConfigError, match=message):
            probe_cfg(tmp_path, checkpoint, override)
    data = dict(train_data=Clips(6), val_data=None, num_classes=3, cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="eval.probe_folds=8: more folds than the 6 training videos"):
        linear_probe(probe_cfg(tmp_path, checkpoint, "eval.probe_optimizer=lbfgs", "eval.probe_folds=8"), **data)
    with pytest.raises(ConfigError, match="eval.num_classes=2: the features' labels reach 2"):
        linear_probe(probe_cfg(tmp_path, checkpoint, "eval.probe_optimizer=lbfgs"), **{**data, "num_classes": 2})
    # a pretraining run's folder: its config.yaml is not overwritten
    run = tmp_path / "pretrain_run"
    model = torch.nn.Linear(2, 2)
    ckpt.save_checkpoint(run / "checkpoints", model, torch.optim.SGD(model.parameters(), lr=0.1), None,
                         ckpt.TrainPosition(), config={}, extra={"task": "pretrain"})
    (run / "config.yaml").write_text("pretrain: settings\n")
    cfg = probe_cfg(tmp_path, checkpoint, "eval.probe_optimizer=lbfgs", f"train.output_dir={run}")
    with pytest.raises(ckpt.CheckpointError, match="holds a pretrain run .* not a linear / k-NN probe run"):
        linear_probe(cfg, **data)
    assert (run / "config.yaml").read_text() == "pretrain: settings\n" and not (run / "probe_results.json").exists()
    args = ["data.num_frames=4", "data.image_size=16", "model.patch_size=8", f"model.pretrained={checkpoint}",
            f"train.output_dir={tmp_path / 'cli'}", "log.progress=false", "eval.probe_optimizer=lbfgs",
            "eval.probe_l2=[-1]"]
    assert cli_main(["probe", *args]) == 2
    assert "eval.probe_l2=[-1.0]" in capsys.readouterr().err


def test_lbfgs_probe_refuses_folds_and_other_runs_before_extracting(checkpoint, tmp_path):
    """eval.probe_folds above the listed training videos, and a folder holding a pretraining run,
    are refused before any video is read; folds above the readable videos (known only after
    extraction) are refused before the val set is extracted: no new cache folder either way."""
    from tgmae.weights import checkpoint as ckpt

    lbfgs = ["eval.probe_optimizer=lbfgs", "eval.probe_l2=[0.1, 1]"]
    train, cache = Clips(6), tmp_path / "cache"
    with pytest.raises(ConfigError, match="eval.probe_folds=8"):
        linear_probe(probe_cfg(tmp_path, checkpoint, *lbfgs, "eval.probe_folds=8"), train_data=train,
                     val_data=Clips(3, seed=1), num_classes=3, cache_dir=cache)
    assert train.loads == 0 and not cache.exists() and not (tmp_path / "probe").exists()
    run = tmp_path / "pretrain_run"
    model = torch.nn.Linear(2, 2)
    ckpt.save_checkpoint(run / "checkpoints", model, torch.optim.SGD(model.parameters(), lr=0.1), None,
                         ckpt.TrainPosition(), config={}, extra={"task": "pretrain"})
    with pytest.raises(ckpt.CheckpointError, match="holds a pretrain run"):
        linear_probe(probe_cfg(tmp_path, checkpoint, "eval.probe_optimizer=lbfgs", f"train.output_dir={run}"),
                     train_data=train, val_data=Clips(3, seed=1), num_classes=3, cache_dir=cache)
    assert train.loads == 0 and not cache.exists()
    val = Clips(3, seed=1)
    with pytest.raises(ConfigError, match=r"eval.probe_folds=6: more folds than the 4 training features"):
        linear_probe(probe_cfg(tmp_path, checkpoint, *lbfgs, "eval.probe_folds=6"),
                     train_data=Broken(6, {0, 3}), val_data=val, num_classes=3, cache_dir=cache)
    assert val.loads == 0 and not cache.exists() and not (tmp_path / "probe").exists()


def test_lbfgs_probe_refuses_a_run_stopped_before_its_first_checkpoint(checkpoint, tmp_path):
    """Re-trial 32A S4: an L-BFGS probe, outside the training loop as k-NN is, refuses the folder of a
    run killed before its first checkpoint (its metrics records and marker) before any video is read;
    a LARS probe, the loop's, was refused already (`train.resume.refuse_unresumed_run`)."""
    from tgmae.locks import RunFolderError
    from test_locks import files_of, stopped_run

    run = tmp_path / "pk"
    kept = stopped_run(run)
    for optimizer, why in [("lbfgs", "stopped before its first checkpoint"), ("lars", "made with other settings")]:
        train = Clips(24)
        cfg = probe_cfg(tmp_path, checkpoint, f"eval.probe_optimizer={optimizer}", f"train.output_dir={run}")
        with pytest.raises(RunFolderError, match=rf"^{run} \(train.output_dir\): holds a run \(config.yaml, "
                           rf"metrics.jsonl\) that .*{why}"):
            linear_probe(cfg, train_data=train, val_data=None, num_classes=3, cache_dir=tmp_path / optimizer)
        assert files_of(run) == kept
    assert not (tmp_path / "lbfgs").exists()  # refused before any video is read


class Named(Clips):
    """Clips whose classes carry names; `order` lists the names in this set's label order."""

    def __init__(self, n: int, seed: int, order: list[str], content: list[str] = ["a", "b", "c"]):
        super().__init__(n, k=3, seed=seed)
        self.class_names = order
        # the clip of content class c (brightness c) is labelled with its name's place in `order`
        self.labels = torch.tensor([order.index(content[int(y)]) if content[int(y)] in order else 0
                                    for y in self.labels])


def test_probe_scores_val_classes_by_name_and_refuses_unknown_ones(checkpoint, tmp_path):
    """The val set's classes in another order score as in the training set's order (issue 28:
    labels were compared by id); a val class the training set lacks is refused by name."""
    base = [tmp_path, checkpoint, "eval.probe_optimizer=lbfgs", "eval.probe_l2=[0.01]"]
    train = Named(48, 0, ["a", "b", "c"])
    same = linear_probe(probe_cfg(*base, f"train.output_dir={tmp_path / 'same'}"), train_data=train,
                        val_data=Named(24, 1, ["a", "b", "c"]))
    other = linear_probe(probe_cfg(*base, f"train.output_dir={tmp_path / 'other'}"), train_data=train,
                         val_data=Named(24, 1, ["c", "a", "b"]))
    assert same.top1 >= 0.9 and other.top1 == same.top1
    import csv  # per-video predictions of the val set, labels named in the val set's terms

    rows = list(csv.reader((tmp_path / "other" / "test_predictions.csv").open()))
    assert rows[0][:4] == ["video_id", "true_label", "pred_1", "score_1"] and len(rows) == 25
    assert sum(r[1] == r[2] for r in rows[1:]) / 24 == other.top1 and {r[1] for r in rows[1:]} == {"a", "b", "c"}
    with pytest.raises(ClassMismatchError, match="does not know 1 of the 3 classes of the val set: zebra"):
        linear_probe(probe_cfg(*base, f"train.output_dir={tmp_path / 'bad'}"), train_data=train,
                     val_data=Named(24, 1, ["a", "zebra", "c"]))
    with pytest.raises(ConfigError, match=r"eval.num_classes=2: the data set has 3 classes \(a, b, c\)"):
        linear_probe(probe_cfg(*base, "eval.num_classes=2", f"train.output_dir={tmp_path / 'k'}"), train_data=train)


@pytest.mark.parametrize("probe", ["linear", "knn", "attentive"])
def test_probe_refuses_classes_before_extracting_features(synth, tmp_path, capsys, probe):
    """Too few eval.num_classes, or a val class the training set lacks, are refused at set-up as
    finetune refuses them: one line naming the key / file, nothing written (features were
    extracted first). So is a val list of only training videos (issue 28 re-trial 15, S1)."""
    from tgmae.cli import main as cli_main

    torch.manual_seed(0)
    pt = save_pretraining_model(VideoMAEPretrainer(VideoMAEArch(**{**ARCH.__dict__, "image_size": 32})),
                                tmp_path / "pt.safetensors")
    other = tmp_path / "other"
    other.mkdir()
    names = (synth / "classes.txt").read_text().splitlines()
    (other / "classes.txt").write_text("\n".join(["zebra", *names[1:]]) + "\n")
    rows = (synth / "val.csv").read_text().splitlines()
    (other / "other.csv").write_text("\n".join(rows) + "\n")
    assert any(",0," in r for r in rows[1:])  # a val video of class 0, 'zebra' in other/classes.txt
    base = ["probe", f"data.root={synth}", "data.format=csv", "data.train_annotations=train.csv",
            "data.val_annotations=val.csv", "data.num_frames=4", "data.frame_stride=2", "data.image_size=32",
            "data.num_workers=0", "model.patch_size=8", f"model.pretrained={pt}", "train.precision=fp32",
            "log.progress=false", "log.tensorboard=false", f"eval.probe={probe}", "eval.knn_k=[1]"]
    for override, named in [("eval.num_classes=2", "eval.num_classes=2"),
                            (f"data.val_annotations={other / 'other.csv'}", "zebra"),
                            # re-trial 15 (S1): the training videos as the val set
                            ("data.val_annotations=train.csv", "data.train_annotations=train.csv")]:
        run = tmp_path / f"run-{override.split('=')[0]}"
        assert cli_main(once([*base, f"train.output_dir={run}", override])) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err and "Traceback" not in err
        assert not (run / "features").exists() and not list(run.rglob("*.safetensors"))
    # the val list the pretraining run (its saved config.yaml) trained on, whatever data.train_annotations says
    from tgmae.config import load_config, save_config

    pre = tmp_path / "pre"
    pre.mkdir()
    (pre / "model.safetensors").write_bytes(pt.read_bytes())
    save_config(load_config(None, [f"data.root={synth}", "data.format=csv", "data.train_annotations=train.csv"]),
                pre / "config.yaml")
    run = tmp_path / "run-pre"
    swapped = ["data.train_annotations=val.csv", "data.val_annotations=train.csv", f"model.pretrained={pre}"]
    assert cli_main(once([*base, f"train.output_dir={run}", *swapped])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(pre / "config.yaml") in err and "data.val_annotations=train.csv" in err, err
    assert not (run / "features").exists()


@pytest.mark.parametrize("probe", ["linear", "knn", "attentive"])
def test_probe_final_line_says_how_many_val_videos_were_left_out(synth, tmp_path, capsys, probe):
    """Issue #28.4: undecodable val videos were skipped, logged and recorded in probe_results.json,
    but the final printed line said nothing; it now says "N of M val videos left out", as
    finetune / evaluate say it (one helper, `evaluate.metrics.left_out_text`)."""
    import shutil

    from tgmae.cli import main as cli_main

    root = tmp_path / "data"
    shutil.copytree(synth, root)
    rows = (root / "val.csv").read_text().strip().splitlines()[1:]
    (root / rows[0].split(",")[0]).write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))  # does not decode
    torch.manual_seed(0)
    pt = save_pretraining_model(VideoMAEPretrainer(VideoMAEArch(**{**ARCH.__dict__, "image_size": 32})),
                                tmp_path / "pt.safetensors")
    args = ["probe", f"data.root={root}", "data.format=csv", "data.train_annotations=train.csv",
            "data.val_annotations=val.csv", "data.num_frames=4", "data.frame_stride=2", "data.image_size=32",
            "data.num_workers=0", "model.patch_size=8", f"model.pretrained={pt}", "train.precision=fp32",
            "log.progress=false", "log.tensorboard=false", f"eval.probe={probe}", "eval.knn_k=[1]",
            "train.epochs=1", "train.batch_size=4", f"train.output_dir={tmp_path / 'run'}"]
    assert cli_main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"1 of {len(rows)} val videos left out" in last and "probe_results.json" in last


@pytest.mark.parametrize("kind", [
    ["train.epochs=1"],
    ["eval.probe_optimizer=lbfgs", "eval.probe_l2=[0.001]"],
    ["eval.probe=knn", "eval.knn_k=[3]"],
    ["eval.probe=attentive", "eval.attentive_epochs=1", "eval.attentive_heads=2"],
], ids=["lars", "lbfgs", "knn", "attentive"])
def test_a_probe_killed_before_its_predictions_has_no_results_and_its_rerun_writes_both(checkpoint, tmp_path,
                                                                                        monkeypatch, kind):
    """issue 28: probe_results.json says a probe is done (the study skips it then); it is written
    after test_predictions.csv, so a probe killed while writing the predictions is rerun, not
    taken as done without them."""
    import tgmae.evaluate.predictions as predictions
    from tgmae.evaluate.probes import run_probe

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed()

    cfg = probe_cfg(tmp_path, checkpoint, *kind)
    data = dict(train_data=Clips(24), val_data=Clips(12, seed=1), num_classes=3)
    monkeypatch.setattr(predictions, "write_predictions", killed)
    with pytest.raises(Killed):
        run_probe(cfg, **data)
    out = tmp_path / "probe"
    assert not (out / "probe_results.json").exists()
    monkeypatch.undo()
    # the rerun as a user's (checkpoint.resume=auto): a loop probe's own checkpoint, a fresh start
    # (checkpoint.resume='') into the killed probe's folder being refused
    run_probe(probe_cfg(tmp_path, checkpoint, *kind, "checkpoint.resume=auto"), **data)
    assert (out / "probe_results.json").is_file() and (out / "test_predictions.csv").is_file()


def test_lars_probe_batch_above_the_training_videos_is_refused_before_extracting(checkpoint, tmp_path):
    """issue 29: train.batch_size above the listed training videos was refused by the loop only after
    the features were extracted and cached (a folder left). Refused before any video is read; above
    the readable ones (known after their extraction), before the val set is: no cache folder either way."""
    train, val, cache = Clips(6), Clips(3, seed=1), tmp_path / "cache"
    with pytest.raises(ConfigError, match=r"train.batch_size=8: more than the 6 training videos"):
        linear_probe(probe_cfg(tmp_path, checkpoint), train_data=train, val_data=val, num_classes=3, cache_dir=cache)
    assert train.loads == 0 and not cache.exists() and not (tmp_path / "probe").exists()
    with pytest.raises(ConfigError, match=r"train.batch_size=8: more than the 6 training videos \(2 unreadable"):
        linear_probe(probe_cfg(tmp_path, checkpoint), train_data=Broken(8, {0, 5}), val_data=val, num_classes=3,
                     cache_dir=cache)
    assert val.loads == 0 and not cache.exists() and not (tmp_path / "probe").exists()


def test_every_probe_refuses_a_list_with_some_unlabelled_videos(tmp_path):
    """Fix 31e: `refuse_unlabelled_lists` said it refused lists with no labels at all; a training or
    val set with some unlabelled videos is refused too (`refuse_unlabelled`, re-trial 29B T1), naming
    the first, and a labelled one passes."""
    from tgmae.data.annotations import VideoRecord
    from tgmae.evaluate.probe import refuse_unlabelled_lists

    cfg = load_config(None, ["data.train_annotations=train.csv", "data.val_annotations=val.csv"])
    some = torch.utils.data.TensorDataset(torch.zeros(2))
    some.records = [VideoRecord("a.mp4", 0, "a"), VideoRecord("b.mp4", -1, "b")]
    labelled = torch.utils.data.TensorDataset(torch.zeros(1))
    labelled.records = some.records[:1]
    with pytest.raises(ConfigError, match=r"^data.train_annotations=train.csv: 1 of its 2 videos have no label "
                                          r"\(first: 'b'\)"):
        refuse_unlabelled_lists(cfg, some, labelled)
    with pytest.raises(ConfigError, match=r"^data.val_annotations=val.csv: 1 of its 2 videos"):
        refuse_unlabelled_lists(cfg, labelled, some)
    refuse_unlabelled_lists(cfg, labelled, labelled)
