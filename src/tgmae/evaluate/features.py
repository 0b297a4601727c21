"""Frozen-encoder features for the linear probe: extracted once, cached on disk.

Feature of a clip: mean over all tokens of the unmasked encoder output, fp32 (mean over views of
a multi-view sample); extraction sharded over DDP ranks (`evaluate.sharded`). Cache:
`<dir>/<key>.safetensors` with `features` [N, D] float32, `labels` [N] int64 and the key's inputs
as metadata; the key hashes the encoder weights, clip geometry, the data settings that decide
a clip's pixels (not workers, augmentation or seeds) and the class names in label order (which
number the cached labels). Videos left out for a verdict on their file or row (`tgmae data check`'s
kinds) are named in the cache's metadata (`left_out`), so a rerun on the same list reuses it; a
set with a read error that is no verdict is not cached. Atomic writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from tgmae.atomic import atomic_path, remove_stale_temps
from tgmae.distributed import rank_world
from tgmae.errors import count
from tgmae.evaluate.sharded import all_gather_objects, default_device, map_eval, split_unreadable
from tgmae.train.precision import autocast
from tgmae.data.dataset import subset_annotations
from tgmae.data.fileid import videos_fingerprint

log = logging.getLogger("tgmae")

CACHE_VERSION = 1
POOLING = "mean-all-tokens"


@torch.no_grad()
def pooled_features(encoder: nn.Module, video: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """video [B, C, T, H, W] or [B, V, C, T, H, W] -> [B, D] float32 mean-pooled encoder output."""
    views = video.dim() == 6
    clips = video.flatten(0, 1) if views else video
    with autocast(precision, clips.device):
        feats = encoder(clips).mean(dim=1).float()
    return feats.view(video.shape[0], video.shape[1], -1).mean(dim=1) if views else feats


@torch.no_grad()
def extract_features(encoder: nn.Module, dataset: Dataset, *, batch_size: int = 8, precision: str = "fp32",
                     num_workers: int = 0, device: Optional[torch.device] = None,
                     progress: bool = False, tokens: bool = False) -> dict[str, torch.Tensor]:
    """{features [N, D] float32, label [N], index [N], load_failures [N]} in dataset order; an
    unreadable video is never replaced by another (its row is marked in `unreadable`, with the
    reason in `load_error`, for a `tgmae.data.dataset` dataset). tokens: the encoder's whole
    output instead of its mean, [N, L, D] (or [N, V, L, D] for samples of V views), for the
    attentive probe."""
    from tgmae.evaluate.attentive import encoder_tokens

    grid = encoder_tokens(encoder, precision)
    fn = (lambda b: {"features": grid(b)}) if tokens else (
        lambda b: {"features": pooled_features(encoder, b["video"], precision)})
    return map_eval(encoder, dataset, fn, batch_size=batch_size, device=device or default_device(encoder),
                    num_workers=num_workers, progress=progress, desc="features")


def _file_fingerprint(path: str, root: str) -> str:
    """sha256 of an annotation file (found from the working directory or under root), or of the files
    of an annotation folder, else its path."""
    p = Path(path)
    if not p.exists() and root:
        p = Path(root) / path
    if p.is_file():
        return hashlib.sha256(p.read_bytes()).hexdigest()
    if p.is_dir():  # a split folder read for a subset: every list in it
        h = hashlib.sha256()
        for f in sorted(q for q in p.iterdir() if q.is_file()):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        return h.hexdigest()
    return str(p.resolve()) if str(path) else ""


def feature_cache_key(encoder_digest: str, data_cfg: Any, subset: str, pooling: str = POOLING,
                      views: str = "", videos: Sequence[str] = (),
                      classes: Sequence[str] = (), precision: str = "fp32") -> tuple[str, dict]:
    """(key, inputs): the cache key of one subset's features and what it was computed from.
    pooling: POOLING, or "tokens" (the whole token grid); views: "TxS" for multi-view samples
    ("" = the centre clip; only then is the key the linear probe's); videos: the subset's video
    paths, whose files are part of the key (`videos_fingerprint`); classes: the subset's class names
    in label order (a reordered classes.txt renumbers labels given as names, so it is another key);
    precision: the encoder's autocast (resolved: fp32 / bf16 / fp16), whose features differ slightly."""
    d = data_cfg
    ann = subset_annotations(d, "train" if subset == "train" else "val")
    extra = {"views": views} if views else {}
    inputs = {
        "version": CACHE_VERSION, "pooling": pooling, **extra, "encoder": encoder_digest, "subset": subset,
        "precision": precision,
        "data": {"format": d.format, "root": str(Path(d.root).resolve()) if d.root else "",
                 "annotations": ann, "annotations_sha256": _file_fingerprint(ann, d.root), "split": d.split,
                 "num_frames": d.num_frames, "frame_stride": d.frame_stride, "sampling": d.sampling,
                 "image_size": d.image_size, "mean": list(d.mean), "std": list(d.std),
                 **({"videos_sha256": videos_fingerprint(videos)} if videos else {}),
                 **({"class_names": list(classes)} if classes else {})},
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]
    return key, inputs


def read_cached(path: Path) -> Optional[dict[str, Any]]:
    """The cached tensors and `left_out` (the videos left out when it was made, [{index, video_id,
    label, reason, kind}]), or None when the file is missing or unreadable (then recomputed). Temps
    of killed writers in its folder are removed first (a cache hit writes nothing, so nothing else would)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    remove_stale_temps(path.parent)
    if not path.is_file():
        return None
    try:
        data: dict[str, Any] = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            data["left_out"] = json.loads((f.metadata() or {}).get("left_out", "[]"))
    except Exception as e:  # a damaged cache is recomputed, not fatal
        log.warning("ignoring unreadable feature cache %s (%s)", path, e)
        return None
    if "features" not in data or "labels" not in data:
        return None
    return data


def write_cached(path: Path, features: torch.Tensor, labels: torch.Tensor, inputs: dict,
                 left_out: Sequence[dict] = ()) -> Path:
    """Write the cache (atomically); `left_out`: the videos left out of `features`, kept as metadata
    for a hit to name them again."""
    from safetensors.torch import save_file

    remove_stale_temps(path.parent)  # of writes killed before their rename
    meta = {"inputs": json.dumps(inputs, sort_keys=True), **({"left_out": json.dumps(list(left_out))} if left_out else {})}
    with atomic_path(path, own_folder=True) as tmp:  # save_file makes a temp of its own
        save_file({"features": features.contiguous(), "labels": labels.contiguous()}, str(tmp), metadata=meta)
    return path


def _settled(video: dict) -> bool:
    """Whether a left-out video's failure is a verdict on its file or row (`tgmae data check`'s
    KINDS: missing, zero_bytes, truncated, out_of_range, ...), which every rerun on the same files
    and list meets again (the cache key covers both), rather than a read error with no verdict (an
    OSError while decoding) that a rerun may not meet."""
    from tgmae.data.check import KINDS

    return video.get("kind", "") in KINDS


def _named(videos: Sequence[dict]) -> str:
    return "; ".join(u["reason"] for u in videos[:3]) + (" ..." if len(videos) > 3 else "")


def cached_features(encoder: nn.Module, dataset: Dataset, cache_path: Optional[Path], inputs: Optional[dict] = None,
                    *, strict: bool = False, unreadable: Optional[list] = None,
                    **extract_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, D], labels [N]) from `cache_path` when present (on every rank), else
    extracted (all ranks) and written there by rank 0. cache_path None = no caching.

    Videos that cannot be read are left out (N counts the readable ones) and appended to
    `unreadable` as {index, video_id, label, reason, kind}, from the cache too; strict: they raise
    `VideoLoadError` (a cache that left some out is not used). A set is cached with the videos left
    out when each has a verdict (`_settled`: a rerun on the same files and list, the cache's key,
    leaves them out again); one with a read error is not (the next run tries it again)."""
    if cache_path is not None:
        cached = read_cached(cache_path)
        left = cached["left_out"] if cached is not None else []
        ok = cached is not None and cached["features"].shape[0] + len(left) == len(dataset) and not (strict and left)
        if all(all_gather_objects(ok)):
            if left:
                log.info("features from cache %s (%s left out when it was made: %s)", cache_path,
                         count(len(left), "video"), _named(left))
            else:
                log.info("features from cache %s", cache_path)
            if unreadable is not None:
                unreadable.extend(left)
            return cached["features"], cached["labels"]
    out = extract_features(encoder, dataset, **extract_kwargs)
    out, skipped = split_unreadable(out, dataset, strict, "feature extraction")
    if unreadable is not None:
        unreadable.extend(skipped)
    replaced = int(out["load_failures"].sum())  # stand-ins of another video (a dataset that substitutes)
    if cache_path is not None and rank_world()[0] == 0:
        passing = [u for u in skipped if not _settled(u)]
        if replaced or passing:
            why = (f"{count(len(passing), 'video')} failed with a read error that is no verdict on the file "
                   f"({_named(passing)}), which a rerun may not meet" if passing else
                   f"{count(replaced, 'video')} replaced by others")
            log.warning("%s could not be read while extracting features (left out); not caching: %s; rerun "
                        "to cache the features once these read (or fix or drop them in the list)",
                        count(len(skipped) + replaced, "video"), why)
        else:
            write_cached(cache_path, out["features"], out["label"], inputs or {}, skipped)
    return out["features"], out["label"]
