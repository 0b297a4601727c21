"""How many frames a video holds, as cheaply as it can be known, and the set-up check that a clip
fits at least one video of a data set.

`check_clip_fits` reads frame counts without decoding (`stated_frames`: the cached frame index,
a frame folder's image count, or the container's count / duration x rate) and stops at the first
video that holds a clip. Only when none does are the near misses confirmed by their frame index
(`CONFIRM_AT_MOST` decodes); a set is refused only when every video is known to be too short.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from tgmae.config import ConfigError
from tgmae.data.annotations import VideoRecord

CONFIRM_AT_MOST = 32  # near misses confirmed by their frame index before a refusal; more: no refusal


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


def _in_range(rec: VideoRecord, n: int) -> int:
    """Frames of a record's range (start_frame / end_frame) in a video of n frames."""
    start = max(rec.start_frame or 0, 0)
    end = n if rec.end_frame is None else min(rec.end_frame, n)
    return max(end - start, 0)


def check_clip_fits(records: Sequence[VideoRecord], min_frames: int, setting: str) -> None:
    """ConfigError, in one line naming `setting` (e.g. `data.num_frames=16`) and the longest
    video's frames, when no record's range holds `min_frames` frames (see the module doc)."""
    near: list[tuple[int, VideoRecord]] = []  # (stated frames in range, record) of possible fits
    for rec in records:
        n = stated_frames(rec.path)
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
