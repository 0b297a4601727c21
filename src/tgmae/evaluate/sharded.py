"""Run a function over a whole dataset, split across DDP ranks, and gather the results in memory.

Each rank takes the indices rank, rank + world, ... (no padding, so no video is counted twice),
runs `fn` on its batches, and the per-sample outputs of all ranks are exchanged with
`all_gather_object` (no temporary files). Every rank gets the full result, in dataset order.
Outside torchrun everything runs in the one process.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from tgmae.data.dataset import Loader
from tgmae.distributed import rank_world


def all_gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] without a process group."""
    rank, size = rank_world()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def map_dataset(
    dataset: Dataset,
    fn: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "",
) -> dict[str, torch.Tensor]:
    """{name: [N, ...] CPU tensor} for the whole dataset, on every rank.

    fn: batch (tensors already on `device`) -> {name: [b, ...]} per-sample outputs. The result
    also holds `index` [N] (dataset order 0..N-1), `label` [N] and `load_failures` [N] from the
    samples, and, when the samples carry them (a dataset with `substitute` False), `unreadable`
    [N] bool, `load_error` and `load_kind` (lists of N strings: the reason, and the VideoError kind
    or "" for a read error without one). Row i is dataset item i whichever rank
    computed it.
    """
    rank, size = rank_world()
    n = len(dataset)
    mine = list(range(rank, n, size))
    loader = Loader(dataset, batch_size=batch_size, sampler=mine, num_workers=num_workers,
                    pin_memory=device.type == "cuda", shuffle=False, drop_last=False)
    parts: dict[str, list[torch.Tensor]] = {}
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), unit="video", desc=desc or "evaluating", dynamic_ncols=True)
    start, errors, kinds = 0, [], []
    for batch in loader:
        b = len(batch["label"])
        on_device = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        out = {k: v.detach().to("cpu") for k, v in fn(on_device).items()}
        out["index"] = torch.tensor(mine[start:start + b], dtype=torch.int64)  # requested, not replaced
        out["label"] = torch.as_tensor(batch["label"]).long().cpu()
        out["load_failures"] = torch.as_tensor(batch.get("load_failures", torch.zeros(b))).long().cpu()
        if "unreadable" in batch:
            out["unreadable"] = torch.as_tensor(batch["unreadable"]).bool().cpu()
            errors.extend(batch["load_error"])
            kinds.extend(batch.get("load_kind", [""] * b))
        for k, v in out.items():
            if v.shape[0] != b:
                raise ValueError(f"fn returned {k!r} with {v.shape[0]} rows for a batch of {b}")
            parts.setdefault(k, []).append(v)
        start += b
        if bar is not None:
            bar.update(b)
    if bar is not None:
        bar.close()
    local: dict[str, Any] = {k: torch.cat(v) for k, v in parts.items()}
    if "unreadable" in local:
        local["load_error"], local["load_kind"] = errors, kinds
    gathered = [g for g in all_gather_objects(local) if g]
    if not gathered:
        raise ValueError("the dataset is empty")
    merged = {k: torch.cat([g[k] for g in gathered]) if torch.is_tensor(gathered[0][k]) else sum((g[k] for g in gathered), [])
              for k in gathered[0]}
    order = torch.argsort(merged["index"])
    return {k: v[order] if torch.is_tensor(v) else [v[i] for i in order.tolist()] for k, v in merged.items()}


@contextmanager
def no_substitution(dataset: Dataset) -> Iterator[Dataset]:
    """Within the block `dataset` (one with a `substitute` flag, `tgmae.data.dataset`) reports an
    unreadable video as such instead of replacing it with another video: evaluation scores only
    the videos it was asked to score."""
    before = getattr(dataset, "substitute", None)
    if before is not None:
        dataset.substitute = False  # type: ignore[attr-defined]
    try:
        yield dataset
    finally:
        if before is not None:
            dataset.substitute = before  # type: ignore[attr-defined]


def map_eval(model: torch.nn.Module, dataset: Dataset, fn: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
             **kwargs: Any) -> dict[str, torch.Tensor]:
    """`map_dataset(dataset, fn, **kwargs)` with `model` in eval mode (its mode restored after) and
    the dataset never replacing an unreadable video (`no_substitution`): how a model scores a set."""
    was_training = model.training
    model.eval()
    try:
        with no_substitution(dataset):
            return map_dataset(dataset, fn, **kwargs)
    finally:
        model.train(was_training)


def split_unreadable(out: dict[str, Any], dataset: Dataset, strict: bool = False,
                     what: str = "evaluation") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(rows of `out` (a `map_dataset` result) for the readable videos, the unreadable videos as
    [{index, video_id, label, reason, kind}] (kind: the VideoError kind, "" for a read error)). strict: any unreadable video raises `VideoLoadError`
    naming them (`eval.strict=true`). A result without `unreadable` rows is returned whole."""
    if "unreadable" not in out or not bool(out["unreadable"].any()):
        return out, []
    bad = out["unreadable"]
    records = getattr(dataset, "records", None)
    listed = []
    for row in bad.nonzero().flatten().tolist():
        i = int(out["index"][row])
        listed.append({"index": i, "video_id": records[i].video_id if records is not None else str(i),
                       "label": int(out["label"][row]), "reason": out["load_error"][row],
                       "kind": out.get("load_kind", [""] * len(bad))[row]})
    if strict:
        from tgmae.data.dataset import VideoLoadError

        shown = "; ".join(u["reason"] for u in listed[:3]) + (" ..." if len(listed) > 3 else "")
        raise VideoLoadError(f"{what}: {len(listed)} of {len(bad)} videos cannot be read (eval.strict=true; "
                             f"set eval.strict=false to score the readable ones and list these): {shown}")
    keep = ~bad
    kept = {k: v[keep] if torch.is_tensor(v) else [e for e, ok in zip(v, keep.tolist()) if ok] for k, v in out.items()}
    return kept, listed


def default_device(model: torch.nn.Module, fallback: Optional[torch.device] = None) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for an empty module)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return fallback or torch.device("cpu")
