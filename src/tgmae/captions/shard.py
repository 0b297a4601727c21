"""Sharding a captioning run across processes (torchrun) and merging the part files.

Rank r of W takes videos r, r+W, ... and appends to its own part file
`<out stem>.part-RRRRR-of-WWWWW<suffix>`. Merging keeps records already in OUT, drops torn tails,
keeps the first record of a video seen twice, orders records by the annotation order when known,
writes OUT atomically, then deletes the parts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from tgmae.atomic import atomic_write_text
from tgmae.captions.store import CaptionRecord, dumps_record, read_jsonl_tolerant
from tgmae.distributed import launch_env


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world size {self.world_size})")

    def take(self, items: Sequence) -> list:
        return list(items[self.rank::self.world_size])


def shard_from_env(rank: Optional[int] = None, world_size: Optional[int] = None) -> Shard:
    """Explicit values win; else torchrun's RANK / WORLD_SIZE; else a single process."""
    env_rank, env_world = launch_env()
    return Shard(env_rank if rank is None else rank, env_world if world_size is None else world_size)


def errors_path(out: str | Path) -> Path:
    """`captions.jsonl` -> `captions.errors.jsonl`."""
    out = Path(out)
    return out.with_name(f"{out.stem}.errors{out.suffix or '.jsonl'}")


def part_path(path: str | Path, shard: Shard) -> Path:
    """The file a shard writes for final file `path`; the path itself for a single process."""
    path = Path(path)
    if shard.world_size == 1:
        return path
    return path.with_name(f"{path.stem}.part-{shard.rank:05d}-of-{shard.world_size:05d}{path.suffix or '.jsonl'}")


def existing_parts(path: str | Path) -> list[Path]:
    """Part files of `path` from any earlier world size, sorted by (world size, rank)."""
    path = Path(path)
    pat = re.compile(re.escape(path.stem) + r"\.part-(\d{5})-of-(\d{5})" + re.escape(path.suffix or ".jsonl") + "$")
    found = []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            m = pat.match(p.name)
            if m:
                found.append((int(m.group(2)), int(m.group(1)), p))
    return [p for _, _, p in sorted(found)]


def _objects(path: Path) -> list[dict]:
    if not path.exists():
        return []
    items, _, _ = read_jsonl_tolerant(path, allow_torn_tail=True)
    return [obj for _, obj in items if isinstance(obj, dict) and "video_id" in obj]


def merge_parts(out: str | Path, order: Optional[Sequence[str]] = None) -> tuple[int, int]:
    """Merge `out` + its parts (and the errors file + its parts). Returns (records, errors).

    Records are validated; an error entry is dropped once its video has a record. Without any
    record (every video failed) no store is created.
    """
    out = Path(out)
    err = errors_path(out)
    rec_parts, err_parts = existing_parts(out), existing_parts(err)
    records: dict[str, CaptionRecord] = {}
    for src in [out, *rec_parts]:
        for obj in _objects(src):
            vid = str(obj["video_id"])
            if vid not in records:
                records[vid] = CaptionRecord.from_json(obj, where=str(src))
    errors: dict[str, dict] = {}
    for src in [err, *err_parts]:
        for obj in _objects(src):
            vid = str(obj["video_id"])
            if vid not in records:
                errors[vid] = obj  # the latest attempt wins
    rank_of = {v: i for i, v in enumerate(order or ())}
    ids = sorted(records, key=lambda v: rank_of.get(v, len(rank_of)))  # stable: unknown ids keep file order
    if ids or out.exists():  # no empty store when every video failed: only their errors file
        atomic_write_text(out, "".join(dumps_record(records[v]) for v in ids), fsync=True)
    if errors or err.exists():
        eids = sorted(errors, key=lambda v: rank_of.get(v, len(rank_of)))
        atomic_write_text(err, "".join(json.dumps(errors[v], ensure_ascii=False) + "\n" for v in eids), fsync=True)
    for p in [*rec_parts, *err_parts]:
        p.unlink()
    return len(ids), len(errors)
