"""Sharding a captioning run across processes (torchrun) and merging the part files.

Rank r of W takes videos r, r+W, ... and appends to its own part file
`<out stem>.part-RRRRR-of-WWWWW<suffix>`. Merging keeps records already in OUT, drops torn tails,
keeps the first record of a video in two files (one file holding a video twice is refused, naming
the line), orders records by the annotation order when known,
writes OUT atomically, then deletes the parts (with their share records and stale locks); parts
made otherwise, a rank that has not run, or one that has not finished (its share record
`<part>.share`, written when it starts, names videos with neither a caption nor a failure) are
refused first.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from tgmae.atomic import atomic_write_text
from tgmae.captions.store import (CaptionRecord, CaptionStoreError, dumps_record, ids_text, provenance,
                                  read_jsonl_tolerant, refuse_duplicate_ids, same_value)
from tgmae.errors import SettingsError
from tgmae.lifetime import launch_env
from tgmae.locks import drop_lock

log = logging.getLogger("tgmae")


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
    """Explicit values (`tgmae caption --rank / --world-size`) win; else torchrun's RANK / WORLD_SIZE
    (`launch_env`, which refuses them invalid); else a single process. SettingsError naming where
    each value came from (the flag or the variable) when the world size is below 1 or the rank not
    in [0, world size) (was Shard's ValueError traceback: re-trial 29B T4)."""
    env_rank, env_world = launch_env()
    shard_rank = env_rank if rank is None else rank
    world = env_world if world_size is None else world_size
    if world_size is not None and world_size < 1:
        raise SettingsError(f"--world-size {world_size} must be >= 1")
    if not 0 <= shard_rank < world:
        said = f"--rank {rank}" if rank is not None else f"RANK={env_rank}"
        if world_size is not None:
            raise SettingsError(f"{said} must be in [0, --world-size {world_size})")
        if world > 1:
            raise SettingsError(f"{said} must be in [0, WORLD_SIZE={world})")
        raise SettingsError(f"{said} must be in [0, 1): give --world-size too")
    return Shard(shard_rank, world)


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


def _parts(path: Path) -> list[tuple[int, int, Path]]:
    """(world size, rank, file) of each part file of `path`, sorted."""
    pat = re.compile(re.escape(path.stem) + r"\.part-(\d{5})-of-(\d{5})" + re.escape(path.suffix or ".jsonl") + "$")
    found = []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            m = pat.match(p.name)
            if m:
                found.append((int(m.group(2)), int(m.group(1)), p))
    return sorted(found)


def existing_parts(path: str | Path, other_than: int = 0) -> list[Path]:
    """Part files of `path` from any earlier world size (but `other_than`, where given), sorted by
    (world size, rank). A single process (world size 1) writes none: all are others'."""
    return [p for world, _, p in _parts(Path(path)) if world != other_than]


def _objects(path: Path) -> list[dict]:
    if not path.exists():
        return []
    items, _, _ = read_jsonl_tolerant(path, allow_torn_tail=True)
    return [obj for _, obj in items if isinstance(obj, dict) and "video_id" in obj]


def _differences(have: dict, want: dict) -> str:
    keys = [k for k in dict.fromkeys([*want, *have]) if not same_value(k, have, want)]
    return ", ".join(f"{k} {have.get(k)!r} vs {want.get(k)!r}" for k in keys)


def refuse_mixed_parts(out: Path, files: Sequence[Path]) -> None:
    """CaptionStoreError naming two of `files` (the store and its parts) and each differing key
    when their records were made otherwise (`provenance`: source, model, keyframes, generation
    options, weights; local model folders compared resolved, `same_value`): parts of runs with
    other models or settings, whose merge would mix their captions in one store."""
    first: Optional[tuple[Path, dict]] = None
    for src in files:
        for obj in _objects(src):
            have = provenance(obj)
            if first is None:
                first = (src, have)
            elif diff := _differences(have, first[1]):
                raise CaptionStoreError(
                    f"{first[0]} and {src} hold captions made otherwise ({diff}): merging them would mix two "
                    f"captioners' captions in {out}; remove the part made otherwise and run its rank again "
                    "with the others' settings")


def _rank_hint(out: Path, ranks: Sequence[int], world: int) -> str:
    return "; ".join(f"run --rank {r} --world-size {world} ({part_path(out, Shard(r, world)).name})" for r in ranks)


def refuse_missing_ranks(out: Path, covered: set[str], order: Optional[Sequence[str]]) -> None:
    """CaptionStoreError naming the part file and the --rank to run when a sharded run is merged
    before every rank has run: with the annotation `order`, its videos with neither a caption nor a
    failure (`covered`) in the store or its parts, and the ranks (of the largest world size among
    the parts) whose share they are; without, the ranks of each world size that left no part (every
    rank leaves one, empty when it had nothing new). Nothing to check without parts."""
    found = _parts(out) + _parts(errors_path(out))
    if not found:
        return
    if order is not None:
        unique = list(dict.fromkeys(order))
        missing = [(i, v) for i, v in enumerate(unique) if v not in covered]
        if missing:
            world = max(w for w, _, _ in found)
            ranks = sorted({i % world for i, _ in missing})
            raise CaptionStoreError(
                f"{out}: {len(missing)} of {len(unique)} videos have neither a caption nor a failure in it or its "
                f"parts ({ids_text([v for _, v in missing], 3)}): a rank has not run or not finished: "
                f"{_rank_hint(out, ranks, world)}, then --merge again")
        return
    for world in sorted({w for w, _, _ in found}):
        ranks = sorted(set(range(world)) - {r for w, r, _ in found if w == world})
        if ranks:
            raise CaptionStoreError(
                f"{out}: no part from rank(s) {ranks} of {world}: {_rank_hint(out, ranks, world)}, then --merge "
                "again (give the annotations to --merge to check video by video)")


def share_path(out: str | Path, shard: Shard) -> Path:
    """`c.part-00001-of-00002.jsonl.share`: the video ids of a rank's share (`record_share`)."""
    part = part_path(out, shard)
    return part.with_name(part.name + ".share")


def record_share(out: str | Path, shard: Shard, video_ids: Sequence[str]) -> None:
    """Write the ids of this rank's share before it appends to its part (a sharded run only): a
    merge tells by them whether the rank finished (`refuse_unfinished_parts`)."""
    if shard.world_size > 1:
        text = json.dumps({"rank": shard.rank, "world_size": shard.world_size, "videos": list(video_ids)})
        atomic_write_text(share_path(out, shard), text + "\n", fsync=True)


def _share(out: Path, shard: Shard) -> Optional[list[str]]:
    """The ids of a rank's share record; None when there is none (a part of an older tgmae)."""
    path = share_path(out, shard)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        obj = None
    if not isinstance(obj, dict) or not isinstance(obj.get("videos"), list):
        raise CaptionStoreError(f"{path}: not a rank's share record (JSON with 'videos'); remove it and its part "
                                f"{part_path(out, shard).name}, then run that rank again")
    return [str(v) for v in obj["videos"]]


def refuse_unfinished_parts(out: Path, covered: set[str], order: Optional[Sequence[str]] = None) -> list[Path]:
    """CaptionStoreError naming the parts, the videos they lack and the --rank to run when a rank
    has not finished: videos of its share record (of those in the annotation `order`, when known)
    with neither a caption nor a failure (`covered`) in the store or its parts (a rank killed, or
    its part cut in its last line); or, for a part
    without a share record (written by an older tgmae), one ending in a torn line. Returns those
    whole parts without a share record, whose rank's videos could not be checked."""
    ranks = sorted({(w, r) for w, r, _ in _parts(out) + _parts(errors_path(out))})
    lacking: dict[tuple[int, int], list[str]] = {}
    unchecked: list[Path] = []
    wanted = None if order is None else set(order)  # a video since dropped from the annotations is not lacking
    for world, rank in ranks:
        shard = Shard(rank, world)
        share = _share(out, shard)
        if share is not None:
            if missing := [v for v in share if v not in covered and (wanted is None or v in wanted)]:
                lacking[(world, rank)] = missing
            continue
        files = [part_path(out, shard), part_path(errors_path(out), shard)]
        if any(f.is_file() and read_jsonl_tolerant(f, allow_torn_tail=True)[1] for f in files):
            raise CaptionStoreError(
                f"{out}: {part_path(out, shard).name} ends in a torn line (its rank was killed while writing) and, "
                f"written by an older tgmae, does not say which videos its rank had: {_rank_hint(out, [rank], world)}"
                " to finish it, then --merge again")
        unchecked.append(part_path(out, shard))
    if lacking:
        ids = [v for missing in lacking.values() for v in missing]
        hints = "; ".join(_rank_hint(out, [r], w) for w, r in lacking)
        raise CaptionStoreError(
            f"{out}: {len(ids)} {'video' if len(ids) == 1 else 'videos'} of the share of rank(s) "
            f"{', '.join(f'{r} of {w}' for w, r in lacking)} have neither a caption nor a failure in the store or "
            f"its parts ({ids_text(ids, 3)}): the rank did not finish (killed?) or its part was cut: {hints} to "
            "finish them, then --merge again")
    return unchecked


def remove_parts(parts: Sequence[Path]) -> None:
    """Delete `parts` (of a store or its errors file), their share records (`share_path`), and their
    lock files that no live process holds (`drop_lock`: a killed rank's; a live rank removes its own)."""
    for p in parts:
        p.unlink(missing_ok=True)
        p.with_name(p.name + ".share").unlink(missing_ok=True)
        drop_lock(p)


def merge_parts(out: str | Path, order: Optional[Sequence[str]] = None) -> tuple[int, int]:
    """Merge `out` + its parts (and the errors file + its parts). Returns (records, errors).

    Records are validated; an error entry is dropped once its video has a record. Without any
    record (every video failed) no store is created. CaptionStoreError, before anything is written
    or removed, when the store and parts were made otherwise (`refuse_mixed_parts`), one of them
    holds a video twice (`refuse_duplicate_ids`; a video in two of them keeps the first), a rank has
    not run (`refuse_missing_ranks`; `order`: the annotations' video ids) or not finished
    (`refuse_unfinished_parts`). The parts go with their share records and stale locks (`remove_parts`).
    """
    out = Path(out)
    err = errors_path(out)
    rec_parts, err_parts = existing_parts(out), existing_parts(err)
    refuse_mixed_parts(out, [out, *rec_parts])
    for src in [out, *rec_parts]:  # one video twice in one file: which is its record is not known
        refuse_duplicate_ids(src)
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
    refuse_missing_ranks(out, set(records) | set(errors), order)
    unchecked = refuse_unfinished_parts(out, set(records) | set(errors), order)
    if unchecked and order is None:
        log.warning("%s: written by an older tgmae, which did not record its rank's videos: merged as whole; a rank "
                    "killed between batches is not told apart (give the annotations to --merge to check video by "
                    "video)", ", ".join(p.name for p in unchecked))
    rank_of = {v: i for i, v in enumerate(order or ())}
    ids = sorted(records, key=lambda v: rank_of.get(v, len(rank_of)))  # stable: unknown ids keep file order
    if ids or out.exists():  # no empty store when every video failed: only their errors file
        atomic_write_text(out, "".join(dumps_record(records[v]) for v in ids), fsync=True)
    if errors or err.exists():
        eids = sorted(errors, key=lambda v: rank_of.get(v, len(rank_of)))
        atomic_write_text(err, "".join(json.dumps(errors[v], ensure_ascii=False) + "\n" for v in eids), fsync=True)
    remove_parts([*rec_parts, *err_parts])
    return len(ids), len(errors)
