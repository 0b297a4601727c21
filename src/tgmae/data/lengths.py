"""How many frames a video holds, as cheaply as it can be known, and the set-up check that a clip
fits at least one video of a data set.

`check_clip_fits` reads frame counts without decoding (`stated_frames`: the cached frame index,
a frame folder's image count, or the container's count / duration x rate) and stops at the first
video that holds a clip. Only when none does are the near misses confirmed by their frame index
(`CONFIRM_AT_MOST` decodes); a set is refused only when every video is known to be too short.
For a training set, whose too-short rows are replaced by random draws (data.max_load_retries),
it also refuses a set where most rows are too short (`count_short`: a sample of `SHORT_SAMPLE`
rows first, then up to `COUNT_AT_MOST`): the draws ran out mid-epoch saying "no video long
enough" though some were (re-trial 30B M2). A set with some short rows trains as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

from tgmae.config import ConfigError
from tgmae.data.annotations import VideoRecord

CONFIRM_AT_MOST = 32  # near misses confirmed by their frame index before a refusal; more: no refusal
SHORT_SAMPLE = 32  # rows (evenly spread) looked at for whether most are too short
COUNT_AT_MOST = 1024  # rows (evenly spread) counted when that sample says so, and for a failure's message


def stated_frames(path: str) -> Optional[int]:
    """Frames of a video or frame folder, without decoding it (see the module doc); None when not
    known cheaply (no count stated, a header that does not open), 0 for a missing or empty file."""
    from tgmae.data.frame_index import VideoError, cached_frame_index

    if os.path.isdir(path):
        from tgmae.data.frame_folder import FrameFolder

        try:
            return FrameFolder(path).info()[0]
        except (VideoError, OSError):
            return 0
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return 0
    idx = cached_frame_index(path)
    if idx is not None:
        return 0 if idx.kind else idx.num_frames
    return _container_frames(path)


def _container_frames(path: str) -> Optional[int]:
    """The frame count a container states for its first video stream, else None."""
    import av

    try:
        with av.open(path, metadata_errors="ignore") as c:
            s = c.streams.video[0]
            rate = float(s.average_rate) if s.average_rate else 0.0
            if s.frames:
                return int(s.frames)
            if s.duration and s.time_base and rate:
                return int(round(float(s.duration * s.time_base) * rate))
            if c.duration and rate:
                return int(round(c.duration / 1e6 * rate))
    except (av.FFmpegError, OSError, IndexError, UnicodeDecodeError, ValueError):
        return None
    return None


def exact_frames(path: str) -> int:
    """Frames of a video by its frame index (decodes it once when not cached); 0 when unreadable."""
    from tgmae.data.video import VideoError, VideoReader

    try:
        with VideoReader(path) as r:
            return r.info.num_frames
    except (VideoError, OSError, EOFError):
        return 0


def _stated(memo: dict[str, Optional[int]], path: str) -> Optional[int]:
    """`stated_frames(path)`, read once per path into `memo`."""
    if path not in memo:
        memo[path] = stated_frames(path)
    return memo[path]


def _in_range(rec: VideoRecord, n: int) -> int:
    """Frames of a record's range (start_frame / end_frame) in a video of n frames."""
    start = max(rec.start_frame or 0, 0)
    end = n if rec.end_frame is None else min(rec.end_frame, n)
    return max(end - start, 0)


@dataclass(frozen=True)
class ShortRows:
    """Of `looked` rows (evenly spread over the `total`), `short` state fewer frames in their range
    than a clip needs (`count_short`); rows whose length is not stated count as long enough."""

    short: int
    looked: int
    total: int

    def text(self) -> str:
        """"200 of its 240 rows", or "800 of 1024 rows looked at (of its 5000)"."""
        if self.looked == self.total:
            return f"{self.short} of its {self.total} rows"
        return f"{self.short} of {self.looked} rows looked at (of its {self.total})"


def count_short(records: Sequence[VideoRecord], min_frames: int, at_most: int = COUNT_AT_MOST,
                stated: Optional[dict[str, Optional[int]]] = None, stop_when_most_fit: bool = False) -> ShortRows:
    """How many of up to `at_most` rows, evenly spread over `records`, state (`stated_frames`, not
    decoded; `stated` memoizes by path) fewer than `min_frames` frames in their range; a row of
    0 frames (missing, empty) is unreadable, not short. stop_when_most_fit: stop once at least half
    the rows to look at are known to fit (most cannot be short any more; `looked` then counts
    those seen)."""
    stated = {} if stated is None else stated
    n = len(records)
    k = min(n, at_most)
    short = fits = looked = 0
    for i in range(k):
        rec = records[i * n // k]
        have = _stated(stated, rec.path)
        looked += 1
        if have is not None and 0 < _in_range(rec, have) < min_frames:
            short += 1
        else:
            fits += 1
        if stop_when_most_fit and 2 * fits >= k:
            break
    return ShortRows(short, looked, n)


def check_clip_fits(records: Sequence[VideoRecord], min_frames: int, setting: str, replaced: bool = False) -> None:
    """ConfigError, in one line naming `setting` (e.g. `data.num_frames=16`) and the longest
    video's frames, when no record's range holds `min_frames` frames; with `replaced` (a training
    set, whose too-short rows are replaced by random draws), also when most rows are too short
    (`refuse_mostly_short`). See the module doc."""
    stated: dict[str, Optional[int]] = {}
    _refuse_none_fits(records, min_frames, setting, stated)
    if replaced:
        refuse_mostly_short(records, min_frames, setting, stated)


def refuse_mostly_short(records: Sequence[VideoRecord], min_frames: int, setting: str,
                        stated: Optional[dict[str, Optional[int]]] = None) -> None:
    """ConfigError naming `setting` and how many rows are too short (`ShortRows.text`) when more
    than half of them are: a sample of `SHORT_SAMPLE` rows, and where that says so up to
    `COUNT_AT_MOST` (each stopping once half fit, so a set of long videos costs ~16 header reads).
    Each too-short row is replaced by a random row up to data.max_load_retries times; with most
    rows short those draws run out within an epoch (re-trial 30B M2: at step 19 of 60)."""
    stated = {} if stated is None else stated
    seen = count_short(records, min_frames, SHORT_SAMPLE, stated, stop_when_most_fit=True)
    if 2 * seen.short <= min(len(records), SHORT_SAMPLE):
        return
    if len(records) > SHORT_SAMPLE:
        seen = count_short(records, min_frames, COUNT_AT_MOST, stated, stop_when_most_fit=True)
        if 2 * seen.short <= min(len(records), COUNT_AT_MOST):
            return
    key = setting.split("=")[0]
    raise ConfigError(f"{setting}: {seen.text()} are too short for a clip of {min_frames} frames; each is "
                      "replaced by a random row, up to data.max_load_retries times, and with most rows short "
                      f"those draws run out within an epoch: lower {key}, or leave the short videos out "
                      f"(`tgmae data check --min-frames {min_frames}` lists them)")


def _refuse_none_fits(records: Sequence[VideoRecord], min_frames: int, setting: str,
                      stated: dict[str, Optional[int]]) -> None:
    """The refusal of a clip longer than every video (see the module doc); `stated` memoizes
    `stated_frames` by path for `refuse_mostly_short`."""
    near: list[tuple[int, VideoRecord]] = []  # (stated frames in range, record) of possible fits
    for rec in records:
        n = _stated(stated, rec.path)
        if n is not None and _in_range(rec, n) >= min_frames:
            return
        if n is None or n > 0:
            near.append((-1 if n is None else _in_range(rec, n), rec))
    if not near:
        return  # nothing readable: the readers name each file
    near.sort(key=lambda x: -x[0])
    unsure = [r for have, r in near if have < 0 or have >= 0.75 * min_frames - 2]
    if len(unsure) > CONFIRM_AT_MOST:
        return  # not cheap to be sure: the readers tell
    best, longest = max(((_in_range(r, exact_frames(r.path)), r) for r in unsure or [near[0][1]]),
                        key=lambda x: x[0])
    if best >= min_frames:  # a clip fits
        return
    rest = [have for have, r in near if r not in unsure]
    # a stated count above the confirmed ones: take it as stated (an unreadable file confirmed
    # at 0 frames does not hide the short videos beside it)
    if rest and max(rest) > best:
        best, longest = max(rest), next(r for have, r in near if have == max(rest))
    if best <= 0:  # nothing could be read: the readers name the files
        return
    ranged = longest.start_frame is not None or longest.end_frame is not None
    key = setting.split("=")[0]
    which = "the video has" if len(records) == 1 else "no video holds one: the longest has"
    # one frame fills no tubelet (model.tubelet_size >= 2 in every preset's use): no lower setting helps
    lower = f"lower {key} to {best} or less (a multiple of model.tubelet_size), or " if best > 1 else ""
    raise ConfigError(f"{setting}: a clip needs {min_frames} frames and {which} {best} "
                      f"frame{'s' if best != 1 else ''}{' in its range' if ranged else ''} ({longest.path}); "
                      f"{lower}check the videos (`tgmae data check --min-frames {min_frames}`)")
