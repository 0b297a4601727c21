"""`eval.probe=knn`: DINO's k-NN over the linear probe's cached features, every k of
`eval.knn_k` against a plain reference, test_predictions.csv, and the refusals naming the key."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from test_evaluate_probe import ARCH, Broken, Clips, checkpoint, encoder_of, probe_cfg, synth  # noqa: F401 (fixtures)
from tgmae.config import ConfigError
from tgmae.evaluate.features import pooled_features
from tgmae.evaluate.probes import run_probe
from conftest import once
from test_locks import files_of, stopped_run


def reference_knn(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, k: int, t: float,
                  num_classes: int) -> list[list[float]]:
    """One test row at a time, plain Python: cosine similarity to every training row, the k most
    similar vote exp(sim / t) for their label; returns each row's votes."""
    out = []
    for q in test:
        sims = [float(F.cosine_similarity(q, x, dim=0)) for x in train]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in order:
            votes[int(train_labels[i])] += math.exp(sims[i] / t)
        out.append(votes)
    return out


def test_knn_probe_matches_a_plain_reference_for_every_k(checkpoint, tmp_path):
    train_data, val_data = Clips(24), Clips(12, seed=1)
    cfg = probe_cfg(tmp_path, checkpoint, "eval.probe=knn", "eval.knn_k=[3,1,10]", "eval.knn_temperature=0.1")
    result = run_probe(cfg, train_data=train_data, val_data=val_data, num_classes=3, cache_dir=tmp_path / "cache")
    enc = encoder_of(checkpoint)
    feats = lambda d: pooled_features(enc, torch.stack([d[i]["video"] for i in range(len(d))]))  # noqa: E731
    train, val = feats(train_data), feats(val_data)
    saved = json.loads((tmp_path / "probe" / "probe_results.json").read_text())
    assert saved["probe"] == "knn" and saved["k"] == 3 and set(saved["knn"]) == {"1", "3", "10"}
    for k in (1, 3, 10):
        votes = reference_knn(train, train_data.labels, val, k, 0.1, 3)
        top1 = sum(max(range(3), key=lambda c: v[c]) == int(y) for v, y in zip(votes, val_data.labels)) / 12
        assert saved["knn"][str(k)]["top1"] == pytest.approx(top1)
        assert result.by_k[k].top1 == pytest.approx(top1)
        assert "top5" not in saved["knn"][str(k)]  # 3 classes: no top-5
    assert saved["top1"] == saved["knn"]["3"]["top1"] and result.k == 3  # the first k as written
    rows = list(csv.DictReader((tmp_path / "probe" / "test_predictions.csv").open()))
    votes = reference_knn(train, train_data.labels, val, 3, 0.1, 3)
    assert [r["video_id"] for r in rows] == [str(i) for i in range(12)]
    for row, v, y in zip(rows, votes, val_data.labels.tolist()):
        assert row["true_label"] == str(y) and row["pred_1"] == str(max(range(3), key=lambda c: v[c]))
        assert float(row["score_1"]) == pytest.approx(max(v) / sum(v), abs=2e-6)
    assert (tmp_path / "probe" / "config.yaml").is_file()


def test_knn_probe_refuses_a_k_above_the_training_features(checkpoint, tmp_path):
    cfg = probe_cfg(tmp_path, checkpoint, "eval.probe=knn", "eval.knn_k=[5,25]")
    with pytest.raises(ConfigError, match=r"eval.knn_k=\[5, 25\]: k=25 exceeds the 24 training videos"):
        run_probe(cfg, train_data=Clips(24), val_data=Clips(6, seed=1), num_classes=3)
    assert not (tmp_path / "probe" / "probe_results.json").exists()
    assert not (tmp_path / "probe" / "features").exists()  # refused before extracting


def test_knn_probe_refuses_a_k_above_the_readable_videos_before_extracting_val(checkpoint, tmp_path):
    """A k within the listed training videos but above the readable ones (known only after their
    extraction) is refused before the val set is extracted: the cache folder is not made."""
    val, cache = Clips(6, seed=1), tmp_path / "cache"
    cfg = probe_cfg(tmp_path, checkpoint, "eval.probe=knn", "eval.knn_k=[5]")
    with pytest.raises(ConfigError, match=r"eval.knn_k=\[5\]: k=5 exceeds the 4 training features"):
        run_probe(cfg, train_data=Broken(6, {1, 2}), val_data=val, num_classes=3, cache_dir=cache)
    assert val.loads == 0 and not cache.exists() and not (tmp_path / "probe").exists()


def test_probe_command_knn_on_synthetic_videos(synth, tmp_path, capsys):  # noqa: F811
    """Through `tgmae probe`: the k-NN reads the linear probe's cached features (no second
    extraction), names its videos by id in test_predictions.csv; a k above the training videos
    is a one-line config error naming eval.knn_k."""
    from tgmae.cli import main
    from tgmae.models import VideoMAEArch, VideoMAEPretrainer
    from tgmae.weights.pretraining import save_pretraining_model

    torch.manual_seed(0)
    pt = save_pretraining_model(VideoMAEPretrainer(VideoMAEArch(**{**ARCH.__dict__, "image_size": 32})),
                                tmp_path / "pt.safetensors")
    base = ["probe", "data.format=csv", f"data.root={synth}", "data.train_annotations=train.csv",
            "data.val_annotations=val.csv", "data.num_frames=4", "data.frame_stride=2", "data.image_size=32",
            "data.num_workers=0", "model.patch_size=8", "train.batch_size=3", "train.epochs=1",
            "train.precision=fp32", "log.progress=false", "log.tensorboard=false", f"model.pretrained={pt}",
            f"eval.feature_cache={tmp_path / 'features'}"]
    assert main(once(base + [f"train.output_dir={tmp_path / 'linear'}"])) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "features").iterdir()}
    assert main(once(base + [f"train.output_dir={tmp_path / 'knn'}", "eval.probe=knn", "eval.knn_k=[1,2]"])) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "features").iterdir()} == stamps
    out = capsys.readouterr().out
    assert "k-NN probe k=1:" in out and "k-NN probe k=2:" in out
    from tgmae.data.formats import load_annotations

    val_ids = [r.video_id for r in load_annotations("csv", synth, "val.csv")[0]]
    for run in ("linear", "knn"):
        rows = list(csv.DictReader((tmp_path / run / "test_predictions.csv").open()))
        assert [r["video_id"] for r in rows] == val_ids and len(val_ids) > 0
    assert main(once(base + [f"train.output_dir={tmp_path / 'knn2'}", "eval.probe=knn", "eval.knn_k=[1,999]"])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tgmae probe: config error: eval.knn_k=[1, 999]: k=999 exceeds") and "\n" not in err
    knn = base + [f"train.output_dir={tmp_path / 'knn'}", "eval.probe=knn", "eval.knn_k=[1,2]"]
    assert main(once(knn + ["data.val_annotations=train.csv"])) == 2  # other videos: its results are not replaced
    err = capsys.readouterr().err.strip()
    # the run recorded its list resolved (re-trial 31A S4): '/.../val.csv' -> 'train.csv'
    assert re.search(r"data\.val_annotations: '/\S*/val\.csv' -> 'train\.csv'", err) and "\n" not in err
    assert main(knn) == 0  # the same inputs again: fine


def test_knn_probe_refuses_a_folder_holding_a_linear_probe(checkpoint, tmp_path):
    """k-NN into a linear probe's folder replaced its probe_results.json and test_predictions.csv
    (attentive was refused): one kind of probe per folder, checkpoint.resume=ignore_config replaces."""
    from tgmae.weights.files import CheckpointError

    data = dict(train_data=Clips(24), val_data=Clips(12, seed=1), num_classes=3, cache_dir=tmp_path / "cache")
    run_probe(probe_cfg(tmp_path, checkpoint, "eval.probe_optimizer=lbfgs", "eval.probe_l2=[0.001]"), **data)
    out = tmp_path / "probe"
    kept = {n: (out / n).read_bytes() for n in ("probe_results.json", "test_predictions.csv")}
    knn = ["eval.probe=knn", "eval.knn_k=[1,3]"]
    with pytest.raises(CheckpointError, match=r"eval\.probe: 'linear' -> 'knn'.*checkpoint\.resume=ignore_config"):
        run_probe(probe_cfg(tmp_path, checkpoint, *knn), **data)
    assert {n: (out / n).read_bytes() for n in kept} == kept
    run_probe(probe_cfg(tmp_path, checkpoint, *knn, "checkpoint.resume=ignore_config"), **data)
    assert json.loads((out / "probe_results.json").read_text())["probe"] == "knn"
    with pytest.raises(CheckpointError, match=r"eval\.probe: 'knn' -> 'linear'"):  # and the reverse
        run_probe(probe_cfg(tmp_path, checkpoint, "eval.probe_optimizer=lbfgs", "eval.probe_l2=[0.001]"), **data)
    run_probe(probe_cfg(tmp_path, checkpoint, *knn), **data)  # the same kind again is fine


@pytest.mark.parametrize("kind", ["pretrain", "attentive"])
def test_knn_probe_refuses_a_run_stopped_before_its_first_checkpoint(checkpoint, tmp_path, kind):
    """Re-trial 32A S4: k-NN into the folder of a pretraining or attentive probe killed before its
    first checkpoint (config.yaml, its metrics records, the marker) wrote its results beside them, rc 0,
    where a linear probe was refused; now refused as any folder holding another run, before any
    video is read, ignore_config or not, the folder as it was."""
    from tgmae.locks import RunFolderError

    run = tmp_path / kind
    kept = stopped_run(run)
    if kind == "attentive":
        (run / "features").mkdir()  # its feature cache, made before its first step
    train = Clips(24)
    for resume in ("checkpoint.resume=", "checkpoint.resume=ignore_config"):
        cfg = probe_cfg(tmp_path, checkpoint, "eval.probe=knn", "eval.knn_k=[3]", f"train.output_dir={run}", resume)
        with pytest.raises(RunFolderError, match=rf"^{run} \(train.output_dir\): holds a run \(config.yaml, "
                           r"metrics.jsonl\) that stopped before its first checkpoint .*not a k-NN or L-BFGS probe"):
            run_probe(cfg, train_data=train, val_data=Clips(12, seed=1), num_classes=3, cache_dir=tmp_path / "c")
    assert train.loads == 0 and not (tmp_path / "c").exists() and files_of(run) == kept


def csv_topk(path: Path) -> tuple[float, float]:
    """(top-1, top-5) counted from a test_predictions.csv: the true label among pred_1..5 (an empty
    slot is no prediction)."""
    rows = list(csv.DictReader(path.open()))
    top1 = sum(r["true_label"] == r["pred_1"] for r in rows) / len(rows)
    top5 = sum(r["true_label"] in [r.get(f"pred_{j}") for j in range(1, 6) if r.get(f"pred_{j}")] for r in rows)
    return top1, top5 / len(rows)


@pytest.mark.parametrize("probe", [["eval.probe=knn", "eval.knn_k=[1,5]"], ["eval.probe=knn", "eval.knn_k=[3]"],
                                   ["eval.probe_optimizer=lbfgs", "eval.probe_l2=[0.001]"],
                                   ["eval.probe=attentive", "eval.attentive_epochs=2", "eval.attentive_heads=2",
                                    "eval.attentive_batch_size=8"]],
                         ids=["knn-k1", "knn-k3", "lbfgs", "attentive"])
def test_predictions_csv_agrees_with_the_results(checkpoint, tmp_path, probe):
    """k-NN with k < 5 filled pred_2..5 with classes of no votes (score 0, in class-id order): top-5
    from the CSV 0.467 against 0.100 in probe_results.json. A class without votes is no prediction
    (its slot stays empty), and every probe's CSV counts the results' top-1 / top-5."""
    data = dict(train_data=Clips(32, k=8), val_data=Clips(16, k=8, seed=1), num_classes=8)
    run_probe(probe_cfg(tmp_path, checkpoint, *probe), cache_dir=tmp_path / "cache", **data)
    out = tmp_path / "probe"
    saved = json.loads((out / "probe_results.json").read_text())
    top1, top5 = csv_topk(out / "test_predictions.csv")
    assert (top1, top5) == (pytest.approx(saved["top1"]), pytest.approx(saved["top5"]))
    if saved["probe"] == "knn" and saved["k"] < 5:
        rows = list(csv.DictReader((out / "test_predictions.csv").open()))
        assert all(r["score_1"] and all(r[f"score_{j}"] == "" or float(r[f"score_{j}"]) > 0 for j in range(2, 6))
                   for r in rows)
        if saved["k"] == 1:
            assert all(r["pred_2"] == "" for r in rows)


@pytest.mark.parametrize("other", ["eval.knn_k=[3,5]", "eval.knn_temperature=0.5"])
def test_knn_rerun_under_other_settings_is_refused_naming_the_key(checkpoint, tmp_path, other):
    """A k-NN rerun into a k-NN folder with another eval.knn_k / eval.knn_temperature silently
    replaced probe_results.json, the CSV and config.yaml: refused naming the key, as the linear
    probe refuses other settings; keys the k-NN never reads may change; ignore_config replaces."""
    from tgmae.weights.files import CheckpointError

    data = dict(train_data=Clips(24), val_data=Clips(12, seed=1), num_classes=3, cache_dir=tmp_path / "cache")
    knn = ["eval.probe=knn", "eval.knn_k=[1,5]"]
    run_probe(probe_cfg(tmp_path, checkpoint, *knn), **data)
    out = tmp_path / "probe"
    kept = {n: (out / n).read_bytes() for n in ("probe_results.json", "test_predictions.csv", "config.yaml")}
    with pytest.raises(CheckpointError, match=other.split("=")[0].replace(".", r"\.") + ": "):
        run_probe(probe_cfg(tmp_path, checkpoint, *knn, other), **data)
    assert {n: (out / n).read_bytes() for n in kept} == kept
    run_probe(probe_cfg(tmp_path, checkpoint, *knn, "eval.attentive_lr=0.5", "eval.probe_l2=[0.5]"), **data)
    run_probe(probe_cfg(tmp_path, checkpoint, *knn, other, "checkpoint.resume=ignore_config"), **data)
    assert (out / "probe_results.json").read_bytes() != kept["probe_results.json"]


def test_lbfgs_rerun_under_another_l2_is_refused_naming_the_key(checkpoint, tmp_path):
    """The L-BFGS probe's results were replaced by a rerun with another eval.probe_l2, as the k-NN's."""
    from tgmae.weights.files import CheckpointError

    data = dict(train_data=Clips(24), val_data=Clips(12, seed=1), num_classes=3, cache_dir=tmp_path / "cache")
    lbfgs = ["eval.probe_optimizer=lbfgs", "eval.probe_l2=[0.001]"]
    run_probe(probe_cfg(tmp_path, checkpoint, *lbfgs), **data)
    with pytest.raises(CheckpointError, match=r"eval\.probe_l2: "):
        run_probe(probe_cfg(tmp_path, checkpoint, *lbfgs, "eval.probe_l2=[0.1]"), **data)
    run_probe(probe_cfg(tmp_path, checkpoint, *lbfgs, "eval.knn_k=[1]"), **data)  # a key it never reads


@pytest.mark.parametrize("kind", [["eval.probe=knn", "eval.knn_k=[1]"],
                                  ["eval.probe_optimizer=lbfgs", "eval.probe_l2=[0.1]"]])
def test_rerun_on_other_weights_under_the_same_path_is_refused(checkpoint, tmp_path, kind):
    """Issue #28 re-trial 11, S2: a k-NN / L-BFGS rerun after model.pretrained's FILE was replaced
    (same path, other weights) replaced probe_results.json silently: refused naming
    model.pretrained's weights before anything is written, as the loop probes refuse; ignore_config replaces."""
    import shutil

    from tgmae.models import VideoMAEPretrainer
    from tgmae.weights.files import CheckpointError
    from tgmae.weights.pretraining import save_pretraining_model

    weights = tmp_path / "w.safetensors"
    shutil.copy(checkpoint, weights)
    data = dict(train_data=Clips(24), val_data=Clips(12, seed=1), num_classes=3, cache_dir=tmp_path / "cache")
    run_probe(probe_cfg(tmp_path, weights, *kind), **data)
    run_probe(probe_cfg(tmp_path, weights, *kind), **data)  # the same weights: rerun as before
    out = tmp_path / "probe"
    kept = {n: (out / n).read_bytes() for n in ("probe_results.json", "test_predictions.csv", "config.yaml")}
    torch.manual_seed(1)
    save_pretraining_model(VideoMAEPretrainer(ARCH), weights)
    with pytest.raises(CheckpointError, match=r"model\.pretrained's weights"):
        run_probe(probe_cfg(tmp_path, weights, *kind), **data)
    assert {n: (out / n).read_bytes() for n in kept} == kept
    run_probe(probe_cfg(tmp_path, weights, *kind, "checkpoint.resume=ignore_config"), **data)
    assert (out / "probe_results.json").read_bytes() != kept["probe_results.json"]
