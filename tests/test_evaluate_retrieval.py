"""Zero-shot retrieval: the metric on hand-made embeddings, loading the contrastive model, and
`tgmae retrieve` on synthetic H.264 files with a tiny offline CLIP (class prompts and captions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from tgmae.config import ConfigError, load_config, to_dict
from tgmae.evaluate.retrieval import (
    caption_relevance,
    class_prompts,
    load_video_text_model,
    retrieval_metrics,
)
from tgmae.commands.retrieve import main
from tgmae.evaluate.metrics import relevance_from_ids
from tgmae.models.video_text import build_video_text_model
from tgmae.weights import checkpoint as ckpt


def test_retrieval_metrics_on_hand_made_embeddings():
    # 4 videos of classes [0, 1, 1, 2]; 3 class texts; embeddings on the axes
    texts = torch.eye(3)
    videos = torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.2], [0.6, 0.5, 0.0], [0.0, 0.0, 1.0]])
    rel = relevance_from_ids(torch.tensor([0, 1, 1, 2]), torch.arange(3))
    r = retrieval_metrics(videos, texts, rel, ks=(1, 2))
    # video 2 (class 1) is closer to text 0: v->t R@1 = 3/4, R@2 = 1
    assert r.video_to_text == {1: pytest.approx(0.75), 2: 1.0}
    # text 1 has two relevant videos: video 1 is its nearest, so every text finds one at rank 1
    assert r.text_to_video == {1: 1.0, 2: 1.0}
    assert r.num_videos == 4 and r.num_texts == 3
    # a class text with no video in the split is not a query
    rel4 = relevance_from_ids(torch.tensor([0, 1, 1, 2]), torch.arange(4))
    r4 = retrieval_metrics(videos, torch.cat([texts, torch.ones(1, 3)]), rel4, ks=(1,))
    assert r4.num_texts == 3


def test_class_prompts_and_caption_relevance():
    assert class_prompts(["ApplyEyeMakeup", "move_left"]) == ["a video of apply eye makeup.", "a video of move left."]
    with pytest.raises(ConfigError, match="eval.class_prompt"):  # the rule lives in the config
        load_config(None, ["eval.class_prompt=a video"])

    class Provider:
        num_captions = 3

        def caption_ids(self, vid):
            return {"a": [0, 2], "b": [2]}[vid]

    assert caption_relevance(["a", "b"], Provider()).tolist() == [[True, False, True], [False, False, True]]


def _video_text_run(tmp_path: Path, cfg) -> Path:
    """A VideoTextPretrainer training checkpoint as the shared loop writes it."""
    torch.manual_seed(0)
    model = build_video_text_model(cfg.model, cfg.contrastive, cfg.data.num_frames, cfg.data.image_size, text_dim=16)
    with torch.no_grad():  # heads as if trained a little: running statistics away from defaults
        model.video_head.bn1.running_mean.normal_()
        model.video_head.bn2.running_var.uniform_(0.5, 2.0)
    ckpt.save_checkpoint(tmp_path / "vt" / "checkpoints", model, torch.optim.AdamW(model.parameters()), None,
                         ckpt.TrainPosition(2, 0, 2), to_dict(cfg))
    return tmp_path / "vt"


def test_load_video_text_model_from_run_and_from_file(tmp_path):
    cfg = load_config(None, ["data.num_frames=4", "data.image_size=16", "model.patch_size=8",
                             "contrastive.proj_dim=16"])
    run = _video_text_run(tmp_path, cfg)
    model = load_video_text_model(run)
    latest = ckpt.find_latest(run / "checkpoints")
    state = ckpt.load_checkpoint(latest).model_state
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not model.training and model.text_dim == 16
    # the same weights as a bare safetensors file with the arch in its metadata
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "vt.safetensors"),
              metadata={"arch": model.arch.to_json()})
    again = load_video_text_model(tmp_path / "vt.safetensors")
    video = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():
        a = model.embed_video(model.encoder(video))
        b = again.embed_video(again.encoder(video))
    assert torch.allclose(a, b)
    from tgmae.models import VideoMAEPretrainer
    from tgmae.weights.pretraining import save_pretraining_model

    plain = save_pretraining_model(VideoMAEPretrainer(model.arch), tmp_path / "mae.safetensors")
    with pytest.raises(Exception, match="no contrastive video head"):
        load_video_text_model(plain)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from tgmae.captions.tiny import save_tiny_clip
    from tgmae.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_dataset(root, num_videos=14, frames=12, size=32, gop=6, seed=4, val_fraction=0.3)
    clip = save_tiny_clip(root / "clip", dim=16)
    return root, clip


def _retrieval_config(root: Path, clip, tmp_path: Path) -> Path:
    config = {"data": {"format": "csv", "root": str(root), "train_annotations": "train.csv",
                       "val_annotations": "val.csv", "num_frames": 4, "frame_stride": 2, "image_size": 32,
                       "num_workers": 0},
              "model": {"patch_size": 8}, "contrastive": {"proj_dim": 16},
              "captions": {"file": str(root / "captions.jsonl"), "clip_model": str(clip),
                           "embedding_cache": str(tmp_path / "emb.safetensors")},
              "train": {"batch_size": 4, "precision": "fp32", "output_dir": str(tmp_path / "out")},
              "log": {"progress": False, "tensorboard": False}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_retrieve_cli_classes_and_captions(synth, tmp_path):
    root, clip = synth
    path = _retrieval_config(root, clip, tmp_path)
    run = _video_text_run(tmp_path, load_config(path))
    num_val = len((root / "val.csv").read_text().strip().splitlines()) - 1
    val_labels = {line.split(",")[1] for line in (root / "val.csv").read_text().strip().splitlines()[1:]}

    assert main(["-c", str(path), f"model.pretrained={run}"]) == 0
    res = json.loads((tmp_path / "out" / "retrieval_results.json").read_text())
    assert res["mode"] == "classes" and res["num_videos"] == num_val
    assert res["num_texts"] == len(val_labels)  # classes without a val video are not queries
    for direction in ("video_to_text", "text_to_video"):
        r = res[direction]
        assert 0.0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 1.0
    assert res["video_to_text"]["R@10"] == 1.0  # 10 classes: every class is within the top 10

    from tgmae.evaluate.retrieval import evaluate_retrieval

    cap_cfg = load_config(path, [f"model.pretrained={run}", f"train.output_dir={tmp_path / 'cap'}"])
    r = evaluate_retrieval(cap_cfg, mode="captions", progress=False)
    captions = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]
    val_ids = {line.split(",")[0].split("/")[-1].rsplit(".", 1)[0]
               for line in (root / "val.csv").read_text().strip().splitlines()[1:]}
    distinct = {c for rec in captions if rec["video_id"] in val_ids for c in rec["captions"]}
    assert r.mode == "captions" and r.num_videos == num_val and r.num_texts == len(distinct)
    saved = json.loads((tmp_path / "cap" / "retrieval_results.json").read_text())
    assert saved["video_to_text"]["R@1"] == r.video_to_text[1]


def test_retrieval_leaves_out_an_unreadable_video(synth, tmp_path):
    import shutil

    from tgmae.data.dataset import VideoLoadError
    from tgmae.evaluate.retrieval import evaluate_retrieval

    src, clip = synth
    root = tmp_path / "data"
    shutil.copytree(src, root)
    rows = (root / "val.csv").read_text().strip().splitlines()[1:]
    broken = rows[0].split(",")[0]
    (root / broken).write_bytes(b"not a video")
    cfg = load_config(_retrieval_config(root, clip, tmp_path))
    run = _video_text_run(tmp_path, cfg)
    cfg = load_config(_retrieval_config(root, clip, tmp_path), [f"model.pretrained={run}"])
    r = evaluate_retrieval(cfg, progress=False)
    assert r.num_videos == len(rows) - 1  # the gallery holds the readable videos, none twice
    assert [u["video_id"] for u in r.unreadable] == [Path(broken).stem]
    saved = json.loads((tmp_path / "out" / "retrieval_results.json").read_text())
    assert saved["num_unreadable"] == 1 and broken in saved["unreadable"][0]["reason"]
    strict = load_config(_retrieval_config(root, clip, tmp_path), [f"model.pretrained={run}", "eval.strict=true"])
    with pytest.raises(VideoLoadError, match="retrieval: 1 of"):
        evaluate_retrieval(strict, progress=False)


def test_retrieve_names_the_checkpoint_that_holds_the_head(synth, tmp_path, capsys):
    from tgmae.cli import main as cli
    from tgmae.models import VideoMAEPretrainer
    from tgmae.weights.pretraining import save_pretraining_model

    root, clip = synth
    path = _retrieval_config(root, clip, tmp_path)
    run = _video_text_run(tmp_path, load_config(path))
    final = save_pretraining_model(VideoMAEPretrainer(load_video_text_model(run).mae.arch), run / "model.safetensors")
    assert cli(["retrieve", "-c", str(path), f"model.pretrained={final}"]) == 2
    err = capsys.readouterr().err.strip()
    latest = ckpt.find_latest(run / "checkpoints") / "model.safetensors"
    assert err.startswith(f"tgmae retrieve: {final}: no contrastive video head") and f"is in {latest}" in err
    assert "\n" not in err
    assert cli(["retrieve", "-c", str(path), f"model.pretrained={run}"]) == 0  # the run folder finds it
