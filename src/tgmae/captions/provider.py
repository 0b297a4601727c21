"""Captions for the training Dataset: one caption per video per sample, with its text embedding.

A table of distinct caption texts (`texts`, index = caption id: equal texts share one, which the
contrastive loss uses to spot duplicates), each video's caption ids, and optionally `embeddings`
[num_distinct, D] (L2-normalised, `tgmae.captions.embed`). The Dataset seeds `draw`'s generator
by (seed, epoch, index), so a sample's caption never depends on worker count or order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from tgmae.captions.store import CaptionRecord, CaptionStoreError, read_store, refuse_other_videos
from tgmae.config import CaptionConfig

class CaptionProvider:
    """video_id -> caption ids; draws one per call.

    records: the caption store (each video's captions, in order).
    embeddings: [num_distinct, D] rows aligned with `texts`, or None (no text model).
    draw_mode: "random" (uniform over the video's captions, paper: 1 of 3 per epoch) or "first"
    (captions.draw, validated by `CaptionConfig`).
    """

    def __init__(self, records: Sequence[CaptionRecord], embeddings: Optional[torch.Tensor] = None,
                 draw_mode: str = "random", source_file: str = ""):
        self.draw_mode = draw_mode
        self.source_file = source_file
        self.records = list(records)  # their recorded video identities: `check_videos` compares them
        index: dict[str, int] = {}  # caption text -> its id, the next free one when new
        self._ids: dict[str, list[int]] = {}
        for rec in records:
            if rec.video_id in self._ids:
                raise CaptionStoreError(f"video {rec.video_id!r} has two caption records")
            self._ids[rec.video_id] = [index.setdefault(text, len(index)) for text in rec.captions]
        self.texts: list[str] = list(index)
        if embeddings is not None and embeddings.shape[0] != len(self.texts):
            raise ValueError(f"embeddings have {embeddings.shape[0]} rows for {len(self.texts)} distinct captions")
        self.embeddings = embeddings

    def __len__(self) -> int:
        """Number of videos with captions."""
        return len(self._ids)

    @property
    def num_captions(self) -> int:
        """Number of distinct caption texts (rows of `embeddings`)."""
        return len(self.texts)

    def caption_ids(self, video_id: str) -> list[int]:
        ids = self._ids.get(video_id)
        if ids is None:
            where = f" in {self.source_file}" if self.source_file else ""
            old = video_id.rsplit("/", 1)[-1]
            why = (f"; the store has {old!r}: it was keyed by file names, which collide across folders "
                   "(video ids are now paths relative to the data root), so caption the set again"
                   if old != video_id and old in self._ids else "")
            raise CaptionStoreError(
                f"video {video_id!r} has no captions{where} ({len(self._ids)} videos have captions); "
                f"caption it (`tgmae caption`) or check that the store's video ids match the annotations{why}"
            )
        return list(ids)

    def captions(self, video_id: str) -> list[str]:
        return [self.texts[i] for i in self.caption_ids(video_id)]

    def embedding(self, caption_id: int) -> Optional[torch.Tensor]:
        """[D] embedding of a caption id, or None without embeddings."""
        return None if self.embeddings is None else self.embeddings[caption_id]

    def missing(self, video_ids: Sequence[str]) -> list[str]:
        """The given ids that have no captions (check a dataset before training)."""
        return [v for v in video_ids if v not in self._ids]

    def check_videos(self, video_ids: Sequence[str], paths: Optional[dict[str, str]] = None,
                     frames: Optional[dict[str, Sequence]] = None,
                     texts: Optional[dict[str, tuple[Optional[str], Optional[str]]]] = None) -> None:
        """CaptionStoreError (naming the file and the first videos) unless every id has captions
        and (given `paths` {id: video path}) each record's recorded video identity (and content
        key) is the file's at that path (`store.refuse_other_videos`: not captions of another data
        set's videos under the same ids, nor of a video replaced since), (given `frames` {id: `data.annotations.clip_range`}) each record's
        recorded range is the clip's (not captions of other frames of the file), and (given `texts`
        {id: (caption, class name)}, `data.annotations.annotated_texts`) a record made from the
        annotations' text (`--annotation-captions`, `--oracle`, `--descriptions`) was made from
        today's (`store.stale_texts`): a dataset checks this at set-up, not at the first sample."""
        if paths or frames or texts:
            from tgmae.data.fileid import video_identities

            ids = set(video_ids)
            mine = {v: str(p) for v, p in (paths or {}).items() if v in ids}
            on_disk = video_identities(mine.values())  # a frame folder's segments share one scan
            refuse_other_videos(self.source_file or "the captions", self.records,
                                {v: on_disk[p] for v, p in mine.items()},
                                {v: f for v, f in (frames or {}).items() if v in ids},
                                {v: t for v, t in (texts or {}).items() if v in ids}, mine)
        missing = self.missing(video_ids)
        if missing:
            where = self.source_file or "the captions"
            shown = ", ".join(repr(v) for v in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise CaptionStoreError(
                f"{where}: no captions for {len(missing)} of the {len(video_ids)} videos ({shown}); caption "
                "them (`tgmae caption`, which resumes) or check that the store's video ids match the annotations")

    def draw(self, video_id: str, generator: Optional[torch.Generator] = None) -> tuple[int, Optional[torch.Tensor]]:
        """(caption_id, text_embedding [D] or None) for one sample: "random" draws uniformly with
        `generator` (required; one draw even for a single caption); "first" does not touch it."""
        ids = self.caption_ids(video_id)
        if self.draw_mode == "first":
            cid = ids[0]
        else:  # always one draw, so later users of the generator see the same stream
            if generator is None:
                raise ValueError("draw='random' needs a torch.Generator (seeded by the dataset)")
            cid = ids[int(torch.randint(len(ids), (1,), generator=generator).item())]
        return cid, self.embedding(cid)

    @classmethod
    def from_files(cls, captions_file: str | Path, clip_model: str = "", embedding_cache: str = "",
                   draw: str = "random", device: str = "cpu", progress: bool = False,
                   setting: str = "") -> "CaptionProvider":
        """Read a caption store; with `clip_model`, attach cached text embeddings (`setting`: the key
        that named it, in errors).

        Missing embeddings are computed once (needs the model) and written to the cache;
        `embedding_cache` empty = `default_cache_path(captions_file, clip_model)`.
        """
        records = read_store(captions_file).records
        provider = cls(records, draw_mode=draw, source_file=str(captions_file))
        if clip_model:
            from tgmae.captions.embed import default_cache_path, embed_texts

            cache = embedding_cache or default_cache_path(captions_file, clip_model)
            provider.embeddings = embed_texts(provider.texts, clip_model, cache, device=device, progress=progress,
                                              setting=setting)
        return provider

    @classmethod
    def from_config(cls, cfg: CaptionConfig, device: str = "cpu", progress: bool = False) -> Optional["CaptionProvider"]:
        """From `CaptionConfig` (file, text_model or else clip_model, embedding_cache, draw); None
        when no file."""
        if not cfg.file:
            return None
        setting = "captions.text_model" if cfg.text_model else "captions.clip_model"
        return cls.from_files(cfg.file, cfg.target_model, cfg.embedding_cache, cfg.draw, device, progress, setting)
