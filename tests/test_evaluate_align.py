"""Locked video-text alignment for retrieval (`tgmae.evaluate.align`, eval.retrieval_align_epochs)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from tgmae.config import ConfigError, load_config
from tgmae.evaluate.align import HEAD_FILE, AlignedVideoText, build_aligned, fit_head, temporal_pool


class _Tokens(nn.Module):
    """Stands in for an encoder: only its `arch` (width, grid) is read."""

    def __init__(self, dim: int, slices: int) -> None:
        super().__init__()
        self.arch = SimpleNamespace(embed_dim=dim, grid=(slices, 1, 2))


def test_temporal_pool_keeps_the_order_of_the_time_slices():
    tokens = torch.arange(2 * 6 * 2, dtype=torch.float32).view(2, 6, 2)  # [B, T' x S, D], T' = 3, S = 2
    pooled = temporal_pool(tokens, 3)
    assert pooled.shape == (2, 6)
    assert torch.equal(pooled[0], torch.tensor([1.0, 2.0, 5.0, 6.0, 9.0, 10.0]))  # slice means, in time order
    assert torch.equal(temporal_pool(tokens, 1), tokens.mean(dim=1))  # one slice: the mean over all tokens
    with pytest.raises(ValueError, match="4 time slices"):
        temporal_pool(tokens, 4)


def _order_set(per_class: int, seed: int):
    """Tokens [N, 4 x 2, 8] of 6 classes that differ ONLY in the order of 4 slice contents (the same
    multiset: equal means), two captions per class; -> (tokens, labels, caption ids, caption embeddings)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    orders = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2], [2, 3, 0, 1], [0, 2, 1, 3], [3, 1, 2, 0]]
    labels = torch.arange(6).repeat_interleave(per_class)
    slices = base[torch.tensor(orders)[labels]]  # [N, 4, 8]
    tokens = slices.repeat_interleave(2, dim=1) + 0.3 * torch.randn(len(labels), 8, 8, generator=g)
    captions = torch.randn(12, 12, generator=torch.Generator().manual_seed(1))
    ids = [[2 * int(c), 2 * int(c) + 1] for c in labels]
    return tokens, labels, ids, captions


def _r1(model: AlignedVideoText, pooled: torch.Tensor, labels: torch.Tensor, captions: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        v = F.normalize(model.embed_pooled(pooled), dim=-1)
        t = F.normalize(model.embed_text(captions.view(6, 2, -1).mean(dim=1)), dim=-1)
    return float(((v @ t.T).argmax(dim=1) == labels).float().mean())


def _fit(slices: int, seed: int = 0):
    tokens, labels, ids, captions = _order_set(16, seed=1)
    model = build_aligned(_Tokens(8, 4), 12, seed)
    if slices != 4:  # the mean over all tokens: one slice
        torch.manual_seed(seed)
        model = AlignedVideoText(_Tokens(8, 4), slices, 12)
    losses = fit_head(model, temporal_pool(tokens, slices), ids, captions, epochs=30, batch_size=16, lr=1e-3,
                      seed=seed)
    val, val_labels, _, _ = _order_set(8, seed=2)
    return model, losses, _r1(model, temporal_pool(val, slices), val_labels, captions)


def test_the_aligned_head_reads_temporal_order_that_mean_pooling_cannot():
    _, losses, r1 = _fit(4)
    assert r1 >= 0.9  # chance: 1/6
    assert sum(losses[-6:]) < sum(losses[:6])
    _, _, r1_mean = _fit(1)  # the same budget on the mean over all tokens: the classes look alike
    assert r1_mean < 0.4


def test_alignment_is_deterministic_and_seeded():
    a, losses_a, _ = _fit(4, seed=0)
    b, losses_b, _ = _fit(4, seed=0)
    c, losses_c, _ = _fit(4, seed=1)
    assert losses_a == losses_b and losses_a != losses_c
    for k, v in a.head_state().items():
        assert torch.equal(v, b.head_state()[k]), k
    assert not any(k.startswith("encoder.") for k in a.head_state())


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from tgmae.captions.tiny import save_tiny_clip
    from tgmae.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_dataset(root, num_videos=14, frames=12, size=32, gop=6, seed=4, val_fraction=0.3)
    return root, save_tiny_clip(root / "clip", dim=16)


def _config(root: Path, clip, tmp_path: Path, weights: Path) -> Path:
    config = {"data": {"format": "csv", "root": str(root), "train_annotations": "train.csv",
                       "val_annotations": "val.csv", "num_frames": 4, "frame_stride": 2, "image_size": 32,
                       "num_workers": 0},
              "model": {"patch_size": 8, "pretrained": str(weights)},
              "captions": {"file": str(root / "captions.jsonl"), "clip_model": str(clip),
                           "embedding_cache": str(tmp_path / "emb.safetensors")},
              "eval": {"retrieval_align_epochs": 2, "retrieval_align_batch_size": 4},
              "train": {"batch_size": 4, "precision": "fp32", "output_dir": str(tmp_path / "out")},
              "log": {"progress": False, "tensorboard": False}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _mae_weights(path: Path, seed: int) -> Path:
    """An MAE-only pretraining model (no video-text head) of the config's geometry."""
    from tgmae.models import build_pretraining_model
    from tgmae.weights.pretraining import save_pretraining_model

    cfg = load_config(None, ["data.num_frames=4", "data.image_size=32", "model.patch_size=8"])
    torch.manual_seed(seed)
    return save_pretraining_model(build_pretraining_model(cfg.model, 4, 32), path)


def test_an_aligned_retrieve_takes_the_architecture_from_the_weights_unless_set(synth, tmp_path, capsys):
    """Fix L: the aligned head's encoder (read as the probe reads it) of a micro / patch-8 checkpoint
    without model keys was refused (`model.patch_size=16 but the checkpoint ... has 8`); the keys left
    unset are the weights', one set against them is refused naming it."""
    from tgmae.cli import main as cli
    from tgmae.models import build_pretraining_model
    from tgmae.weights.pretraining import save_pretraining_model

    root, clip = synth
    torch.manual_seed(0)
    micro = load_config(None, ["model.preset=micro", "model.patch_size=8"]).model
    weights = save_pretraining_model(build_pretraining_model(micro, 4, 32), tmp_path / "micro.safetensors")
    path = _config(root, clip, tmp_path, weights)
    config = yaml.safe_load(path.read_text())
    config["model"] = {"pretrained": str(weights)}  # no architecture key
    path.write_text(yaml.safe_dump(config))
    assert cli(["retrieve", "-c", str(path), "model.preset=tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tgmae retrieve: ") and "model.preset='tiny'" in err and "\n" not in err, err
    assert cli(["retrieve", "-c", str(path)]) == 0
    assert (tmp_path / "out" / HEAD_FILE).is_file()


def test_retrieve_aligns_a_head_on_an_mae_only_encoder_reuses_it_and_refuses_other_settings(synth, tmp_path, capsys):
    from tgmae.cli import main as cli
    from tgmae.commands.retrieve import main
    from tgmae.evaluate.retrieval import evaluate_retrieval

    root, clip = synth
    weights = _mae_weights(tmp_path / "mae.safetensors", 0)
    path = _config(root, clip, tmp_path, weights)
    out = tmp_path / "out"
    assert main(["-c", str(path)]) == 0  # no pretraining head needed
    res = json.loads((out / "retrieval_results.json").read_text())
    assert res["settings"]["eval.retrieval_align_epochs"] == 2 and res["settings"]["pooling"] == "temporal"
    head = (out / HEAD_FILE).read_bytes()
    assert any(p.name.startswith("train-") for p in (out / "features").iterdir())  # the tokens' cache
    # the same settings again: the head reused (not retrained), the same figures
    again = evaluate_retrieval(load_config(path), progress=False)
    assert (out / HEAD_FILE).read_bytes() == head and again.video_to_text[1] == res["video_to_text"]["R@1"]
    # other alignment settings: the results refuse first, then (results gone) the head, naming the key
    capsys.readouterr()
    assert cli(["retrieve", "-c", str(path), "eval.retrieval_align_lr=0.01"]) == 2
    err = capsys.readouterr().err
    assert "retrieval_results.json" in err and "eval.retrieval_align_lr" in err
    (out / "retrieval_results.json").unlink()
    with pytest.raises(ConfigError, match=f"{HEAD_FILE}.*eval.retrieval_align_lr"):
        evaluate_retrieval(load_config(path, ["eval.retrieval_align_lr=0.01"]), progress=False)
    # other weights under the same path: refused naming model.pretrained's weights
    _mae_weights(weights, 1)
    with pytest.raises(ConfigError, match=f"{HEAD_FILE}.*model.pretrained's weights"):
        evaluate_retrieval(load_config(path), progress=False)
    assert (out / HEAD_FILE).read_bytes() == head
    with pytest.raises(ValueError, match="pass no model"):  # a pretraining head given along: never silently unused
        evaluate_retrieval(load_config(path, [f"train.output_dir={tmp_path / 'other'}"]), model=nn.Linear(1, 1))
    # asked to replace: retrained on the new weights
    evaluate_retrieval(load_config(path, ["checkpoint.resume=ignore_config"]), progress=False)
    assert (out / HEAD_FILE).read_bytes() != head


def test_retrieval_align_keys_are_validated():
    for override, key in (("eval.retrieval_align_epochs=-1", "eval.retrieval_align_epochs"),
                          ("eval.retrieval_align_batch_size=1", "eval.retrieval_align_batch_size"),
                          ("eval.retrieval_align_lr=0", "eval.retrieval_align_lr")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [override])
    assert load_config(None, []).eval.retrieval_align_epochs == 0  # the pretraining's head by default


def test_an_aligned_head_is_not_reused_after_its_captions_or_videos_change_in_place(synth, tmp_path):
    """issue 28 re-trial 14 (S1): the head's settings held the captions file and training set by path,
    so captions edited in place, training videos rewritten in place or the text model replaced
    reused the old head (rc 0, results of other inputs). The settings now hold the training videos'
    fingerprint and the digest of the caption embeddings (texts and text model): each change is
    refused naming it, the head kept; as they were, the head is reused."""
    import shutil

    from tgmae.evaluate.retrieval import evaluate_retrieval

    root = tmp_path / "set"
    shutil.copytree(synth[0], root)
    path = _config(root, synth[1], tmp_path, _mae_weights(tmp_path / "mae.safetensors", 0))
    evaluate_retrieval(load_config(path), progress=False)
    head = (tmp_path / "out" / HEAD_FILE).read_bytes()
    store = root / "captions.jsonl"
    original = store.read_text()
    edited = [json.loads(line) for line in original.splitlines()]
    for record in edited:
        record["captions"] = ["a video of a thing"] * len(record["captions"])
    store.write_text("".join(json.dumps(r) + "\n" for r in edited))
    with pytest.raises(ConfigError, match=f"{HEAD_FILE}.*caption embeddings"):
        evaluate_retrieval(load_config(path), progress=False)
    store.write_text(original)
    video = root / (root / "train.csv").read_text().splitlines()[1].split(",")[0]
    video.write_bytes(video.read_bytes())  # rewritten in place: another file there as far as anyone can tell
    with pytest.raises(ConfigError, match=f"{HEAD_FILE}.*training videos"):
        evaluate_retrieval(load_config(path), progress=False)
    assert (tmp_path / "out" / HEAD_FILE).read_bytes() == head


def test_an_aligned_retrieve_refuses_a_stale_oracle_store_before_training_its_head(synth, tmp_path, capsys):
    """re-trial 32A S3: with eval.retrieval_align_epochs the head was trained on the training videos'
    captions of an `--oracle` store made before the classes were renamed (the check pretrain and
    masks apply was skipped): recalls reported, rc 0; with eval.retrieval_text=captions the val
    gallery's refusal came only after the head was trained and saved. The store is now checked
    against the training videos (and the val gallery) at set-up: exit 2 naming the store and a
    video's class then and now, nothing trained, no head, no features."""
    import shutil

    from tgmae.cli import main as cli

    root = tmp_path / "set"
    shutil.copytree(synth[0], root)
    assert cli(["caption", "--format", "csv", "--root", str(root), str(root / "annotations.csv"), "--oracle",
                "--out", str(root / "oracle.jsonl"), "--no-progress"]) == 0
    path = _config(root, synth[1], tmp_path, _mae_weights(tmp_path / "mae.safetensors", 0))
    names = (root / "classes.txt").read_text().splitlines()
    names[0], names[1] = names[1], names[0]  # a vocabulary edited after the store was made
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "out"
    for mode in ("classes", "captions"):
        capsys.readouterr()
        assert cli(["retrieve", "-c", str(path), f"captions.file={root / 'oracle.jsonl'}",
                    f"eval.retrieval_text={mode}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the text model's loading bar
        assert err.startswith("tgmae retrieve: ") and "oracle.jsonl" in err and "other annotations" in err and "--oracle" in err, err
        assert not (out / HEAD_FILE).exists() and not (out / "features").exists(), (mode, sorted(out.iterdir()))
