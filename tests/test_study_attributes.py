"""Attribute probes of a study's cached features: the regression, the set's metadata, the table."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import save_file

from tgmae.study.attributes import (attribute_probe, bag_of_words, fit_logistic_probe, text_action_probe,
                                      video_attributes)
from tgmae.study.report import attribute_markdown


def test_logistic_probe_separates_separable_classes_and_not_noise():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 4
    y, y_val = torch.arange(200) % 4, torch.arange(80) % 4
    x = centers[y] + torch.randn(200, 16, generator=g)
    x_val = centers[y_val] + torch.randn(80, 16, generator=g)
    assert fit_logistic_probe(x, y, x_val, y_val) == 1.0
    noise = fit_logistic_probe(torch.randn(200, 16, generator=g), y, torch.randn(80, 16, generator=g), y_val)
    assert noise < 0.5
    assert fit_logistic_probe(x, y, x_val, y_val) == fit_logistic_probe(x, y, x_val, y_val)  # deterministic


def _fake_study(tmp_path, n_train=40, n_val=12):
    """A data folder with meta.json + annotations and a probe folder whose features encode the
    colour of the acting object (one-hot + noise) and nothing else."""
    data, probe = tmp_path / "data", tmp_path / "probe"
    (probe / "features").mkdir(parents=True)
    data.mkdir()
    colours, shapes, actions = ["red", "blue", "green"], ["star", "cross"], ["grow", "shrink", "blink", "bounce"]
    videos, g = {}, torch.Generator().manual_seed(1)
    for split, n in (("train", n_train), ("val", n_val)):
        ids = [f"{split}_{i:03d}" for i in range(n)]
        with open(data / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "caption"])
            for i, vid in enumerate(ids):
                w.writerow([f"videos/{vid}.mp4", i % 4, "a caption"])
        feats = []
        for i, vid in enumerate(ids):
            colour = i % 3
            videos[vid] = {"label": i % 4, "action": actions[(i * 7) % 4], "objects": [
                {"shape": shapes[(i // 3) % 2], "colour": colours[colour], "role": "acting"},
                {"shape": "star", "colour": "red", "role": "distractor"}]}
            feats.append(torch.nn.functional.one_hot(torch.tensor(colour), 3).float() * 3
                         + 0.3 * torch.randn(3, generator=g))
        save_file({"features": torch.stack(feats), "labels": torch.zeros(n, dtype=torch.int64)},
                  str(probe / "features" / f"{split}-abc.safetensors"))
    (data / "meta.json").write_text(json.dumps({"classes": actions, "videos": videos}))
    return data, probe


def test_attribute_probe_reads_cached_features_in_annotation_order(tmp_path):
    data, probe = _fake_study(tmp_path)
    result = attribute_probe(probe, data)
    assert result["colour"] == 1.0 and result["colour_classes"] == 3
    assert result["action_classes"] == 4 and result["shape_classes"] == 2
    assert result["action"] < 0.75  # the features carry colour only
    assert video_attributes(tmp_path / "nowhere") is None


def test_attribute_probe_skips_the_attentive_probes_token_caches(tmp_path):
    data, probe = _fake_study(tmp_path)
    for split, n in (("train", 40), ("val", 12)):  # written later, so newer than the pooled caches
        save_file({"features": torch.zeros(n, 4, 3), "labels": torch.zeros(n, dtype=torch.int64)},
                  str(probe / "features" / f"{split}-tokens.safetensors"))
    assert attribute_probe(probe, data)["colour"] == 1.0


def test_attribute_probe_rejects_features_of_another_split(tmp_path):
    data, probe = _fake_study(tmp_path)
    save_file({"features": torch.zeros(5, 3), "labels": torch.zeros(5, dtype=torch.int64)},
              str(probe / "features" / "val-newer.safetensors"))  # newest file wins, and it is wrong
    with pytest.raises(ValueError, match="5 rows, but val annotations list 12 videos"):
        attribute_probe(probe, data)


def test_attribute_table_and_paired_gains():
    def rec(objective, seed, colour):
        return {"masking": "tube", "objective": objective, "seed": seed, "attribute_probe": {
            "action": 0.1, "colour": colour, "shape": 0.2, "action_classes": 10, "colour_classes": 8,
            "shape_classes": 7}}
    text = attribute_markdown([rec("mae", 0, 0.40), rec("mae", 1, 0.50), rec("mae+contrastive", 0, 0.55),
                               rec("mae+contrastive", 1, 0.55)])
    assert "chance: action 10.0, colour 12.5, shape 14.3" in text
    assert "| tube | mae | 10.0 ± 0.0 | 45.0 ± 7.1 | 20.0 ± 0.0 | 2 |" in text  # sample std (n - 1)
    assert "- tube: action +0.0 ± 0.0, colour +10.0 ± 7.1, shape +0.0 ± 0.0" in text
    assert attribute_markdown([{"masking": "tube", "objective": "mae", "seed": 0}]) == ""


def test_text_probe_reads_the_action_from_held_out_captions(tmp_path):
    """Captions naming colour, shape and action (two phrasings per action): words separate the
    actions on the validation videos' captions; a text space that keeps only the colour does not."""
    from tgmae.captions.store import CaptionRecord, write_store

    data, _ = _fake_study(tmp_path)
    verbs = {"grow": ("grows", "gets bigger"), "shrink": ("shrinks", "gets smaller"),
             "blink": ("blinks", "flickers"), "bounce": ("bounces", "hops")}
    videos = json.loads((data / "meta.json").read_text())["videos"]
    records = []
    for vid, info in videos.items():
        actor = info["objects"][0]
        records.append(CaptionRecord(vid, [f"a {actor['colour']} {actor['shape']} {v}" for v in verbs[info["action"]]],
                                     "template", "synthetic"))
    write_store(data / "captions.jsonl", records)
    corpus = [c for r in records for c in r.captions]
    words = text_action_probe(data, bag_of_words(corpus))
    assert words == {"action": 1.0, "action_classes": 4, "num_train": 80, "num_val": 24}
    colours = ["red", "blue", "green"]
    colour_only = text_action_probe(data, lambda texts: torch.tensor(
        [[float(c in t.split()) for c in colours] for t in texts]))
    assert colour_only["action"] < 0.75
    assert bag_of_words(["Slides left.", "slides right"])(["slides LEFT!"]).tolist() == [[1.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match="no per-video actions"):
        text_action_probe(tmp_path, bag_of_words(corpus))
