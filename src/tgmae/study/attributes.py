"""What a study's encoders encode beyond the label: probes of the synthetic set's attributes.

The synthetic set records, per video, the action (the study's label) and the acting object's
colour and shape, which every caption names. Fitting a logistic regression on the linear probe's
cached features (no model is run) for each of these tells apart "the encoder learnt nothing"
from "it learnt what the captions name but not the action", which the action probe alone cannot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import torch

from tgmae.clip.data import list_ids
from tgmae.evaluate.logistic import fit_logistic

ATTRIBUTES = ("action", "colour", "shape")


def video_attributes(data_dir: Path) -> Optional[dict[str, dict[str, str]]]:
    """video id -> {action, colour, shape} of the acting object; None for sets without them."""
    meta_path = Path(data_dir) / "meta.json"
    if not meta_path.is_file():
        return None
    videos = json.loads(meta_path.read_text()).get("videos")
    if not isinstance(videos, dict):
        return None
    out = {}
    for vid, info in videos.items():
        acting = [o for o in info.get("objects", []) if o.get("role") == "acting"]
        if not acting or "action" not in info:
            return None
        out[vid] = {"action": info["action"], "colour": acting[0]["colour"], "shape": acting[0]["shape"]}
    return out


def fit_logistic_probe(x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                       l2: float = 1e-3) -> float:
    """Validation top-1 of `tgmae.evaluate.logistic.fit_logistic` (L-BFGS multinomial logistic
    regression, features standardized with training statistics, L2 on the weights) at a fixed l2,
    in float32 (the study's attribute figures were made so). x [N, D], y [N]; x_val, y_val alike."""
    classes = int(max(y.max(), y_val.max())) + 1
    fit = fit_logistic(x, y, l2, classes, dtype=torch.float32)
    return (fit.predict(x_val) == y_val).float().mean().item()


def _pooled(path: Path) -> bool:
    """Whether a feature cache holds pooled [N, D] features (the linear probe's), not the token
    grids the attentive probe caches beside them ([N, n, D] or [N, views, n, D])."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return len(f.get_slice("features").get_shape()) == 2


def attribute_probe(probe_dir: Path, data_dir: Path, train_csv: str = "train.csv",
                    val_csv: str = "val.csv") -> Optional[dict[str, float]]:
    """{attribute: validation top-1, "<attribute>_classes": count} from the cached pooled features
    of a finished linear probe (rows in annotation order; the newest pooled cache per split, token
    caches of the attentive probe skipped); None where the set has no attributes."""
    from safetensors.torch import load_file

    attrs = video_attributes(data_dir)
    if attrs is None:
        return None
    ids = {"train": list_ids(Path(data_dir) / train_csv), "val": list_ids(Path(data_dir) / val_csv)}
    feats = {}
    for split in ("train", "val"):
        files = sorted((f for f in (Path(probe_dir) / "features").glob(f"{split}-*.safetensors") if _pooled(f)),
                       key=lambda f: f.stat().st_mtime)
        if not files:
            raise FileNotFoundError(f"{probe_dir}/features: no cached {split} features (run the probe first)")
        feats[split] = load_file(str(files[-1]))["features"].float()  # newest: the probe's last run
        if feats[split].shape[0] != len(ids[split]):
            raise ValueError(f"{files[-1]}: {feats[split].shape[0]} rows, but {split} annotations list "
                             f"{len(ids[split])} videos")
    result: dict[str, float] = {}
    for name in ATTRIBUTES:
        values = sorted({attrs[v][name] for v in ids["train"] + ids["val"]})
        code = {v: i for i, v in enumerate(values)}
        y = {s: torch.tensor([code[attrs[v][name]] for v in ids[s]]) for s in ("train", "val")}
        result[name] = fit_logistic_probe(feats["train"], y["train"], feats["val"], y["val"])
        result[f"{name}_classes"] = len(values)
    return result


def text_action_probe(data_dir: Path, embed: Callable[[list[str]], torch.Tensor], train_csv: str = "train.csv",
                      val_csv: str = "val.csv") -> dict[str, float]:
    """How well a text space separates the actions the captions name: a logistic probe of the
    action from the embeddings `embed(texts) -> [N, D]` of every caption of the training videos,
    scored on every caption of the validation videos (held-out captions of held-out videos).
    Returns {"action": validation top-1, "action_classes", "num_train", "num_val"} (captions).
    FileNotFoundError / ValueError for a folder without the synthetic set's captions or attributes."""
    from tgmae.captions.store import read_store

    data_dir = Path(data_dir)
    attrs = video_attributes(data_dir)
    if attrs is None:
        raise ValueError(f"{data_dir}: no per-video actions in meta.json (not a synthetic set)")
    captions = read_store(data_dir / "captions.jsonl").by_video()
    split = {s: [(c, attrs[v]["action"]) for v in list_ids(data_dir / f) for c in captions[v].captions]
             for s, f in (("train", train_csv), ("val", val_csv))}
    classes = sorted({a for pairs in split.values() for _, a in pairs})
    x = {s: embed([c for c, _ in pairs]).float() for s, pairs in split.items()}
    y = {s: torch.tensor([classes.index(a) for _, a in pairs]) for s, pairs in split.items()}
    return {"action": fit_logistic_probe(x["train"], y["train"], x["val"], y["val"]),
            "action_classes": len(classes), "num_train": len(y["train"]), "num_val": len(y["val"])}


def bag_of_words(corpus: list[str]) -> Callable[[list[str]], torch.Tensor]:
    """texts -> [N, V] word counts over the lower-cased words (runs of letters and digits) of
    `corpus` (the baseline of `text_action_probe`: every word is its own dimension)."""
    import re

    def words(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    vocab = {w: i for i, w in enumerate(sorted({w for t in corpus for w in words(t)}))}

    def embed(texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), len(vocab))
        for i, t in enumerate(texts):
            for w in words(t):
                if w in vocab:
                    out[i, vocab[w]] += 1
        return out

    return embed
