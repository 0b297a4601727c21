"""Repeated sampling: k training views from one decode of a video (`data.num_sample`).

"views": k crop / flip draws and masks of one decoded clip (VideoMAEv2 / MGMAE `num_sample`);
"clips": k temporal clips from one decode of the frames they span (mae_st `repeat_aug`,
`data.repeat_mode`). View 0 draws from the sample's own generator (k = 1 is the single-view
sample), view v from one seeded by (that seed, v): reproducible whatever the workers.
A batch of B videos holds B x k views, flattened by `collate_views` to [B*k, ...] (row b*k + v is
view v of video b); per-video keys are repeated, `load_failures` stays per video. The k views
share one caption, so InfoNCE's duplicate-caption rule keeps them out of each other's negatives.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

# Keys with one value per view; every other key has one value per video.
VIEW_KEYS = ("video", "frame_indices", "crop", "mask", "caption_id")
PER_VIDEO_KEYS = ("load_failures",)  # summed per video: not repeated per view


def view_generators(g: torch.Generator, k: int) -> list[torch.Generator]:
    """[g, g_1, ..., g_{k-1}]: view 0 uses the sample's generator `g` itself; view v a generator
    seeded by (g's seed, v) through SeedSequence hashing (nearby tuples: unrelated streams)."""
    gens = [g]
    for v in range(1, k):
        words = [g.initial_seed() & 0xFFFFFFFFFFFFFFFF, v]
        state = np.random.SeedSequence(words).generate_state(2, np.uint32)
        gv = torch.Generator()
        gv.manual_seed((int(state[0]) << 31) ^ int(state[1]))
        gens.append(gv)
    return gens


def gather_views(views: Sequence[dict[str, Any]]) -> dict[str, list]:
    """k per-view dicts -> one dict of k-long lists. Lists, not [k, ...] tensors: stacking k
    float clips here would copy each view once more (into a buffer over glibc's mmap threshold
    at k = 4, page-faulted afresh for every sample: 30% of a k = 4 sample's CPU time, measured);
    `collate_views` stacks each view once, straight into the batch."""
    return {key: [v[key] for v in views] for key in views[0]}


def collate_views(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Samples of k views each (view keys: k-long lists) -> one batch of B*k rows, video-major
    (row b*k + v = view v of video b): view keys [B*k, ...], per-video keys repeated k times
    (lists too), `load_failures` kept per video [B]. Stacks into shared memory in a worker, as
    `default_collate` does."""
    k = len(samples[0]["video"])
    rows = [{key: (val[v] if key in VIEW_KEYS else val) for key, val in s.items() if key not in PER_VIDEO_KEYS}
            for s in samples for v in range(k)]
    batch = default_collate(rows)
    for key in PER_VIDEO_KEYS:
        if key in samples[0]:
            batch[key] = default_collate([s[key] for s in samples])
    return batch


def first_view(sample: dict[str, Any]) -> dict[str, Any]:
    """A k-view sample -> its view 0 as a single-view sample (figures, previews)."""
    return {key: (val[0] if key in VIEW_KEYS and isinstance(val, list) else val) for key, val in sample.items()}
