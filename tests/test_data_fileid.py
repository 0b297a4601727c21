"""tgmae.data.fileid: what says a video (file or frame folder) may have changed."""

from __future__ import annotations

import os

from tgmae.data.fileid import file_identity, video_identity, videos_fingerprint


def _frames(folder, n: int, fill: bytes = b"a") -> None:
    folder.mkdir(exist_ok=True)
    for i in range(1, n + 1):
        (folder / f"{i:05d}.jpg").write_bytes(fill * (100 + i))


def test_fingerprint_of_a_frame_folder_covers_its_frames(tmp_path):
    """Re-trial 19A F1: a frame overwritten in place (same name) left the folder's stat, and so the
    fingerprint of extract shards and probe feature caches, unchanged."""
    folder = tmp_path / "plain"
    _frames(folder, 4)
    before, folder_stat = videos_fingerprint([str(folder)]), os.stat(folder)
    frame = folder / "00002.jpg"
    st = os.stat(frame)
    frame.write_bytes(b"another video's frame".ljust(st.st_size, b"b"))  # same name, same size
    os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert os.stat(folder).st_mtime_ns == folder_stat.st_mtime_ns  # the folder itself did not change
    assert videos_fingerprint([str(folder)]) != before


def test_fingerprint_of_files_is_their_identity_and_steady(tmp_path):
    """Files keep the key they had (`file_identity` per path; a missing one counts as -1), so caches
    made before frame folders counted their frames stay valid."""
    import hashlib

    a, gone = tmp_path / "a.mp4", tmp_path / "gone.mp4"
    a.write_bytes(b"x" * 10)
    old = hashlib.sha256(f"{a}\0{file_identity(str(a))}\n{gone}\0{[-1]}\n".encode()).hexdigest()
    assert videos_fingerprint([str(a), str(gone)]) == old
    assert videos_fingerprint([str(a)]) == videos_fingerprint([str(a)]) != videos_fingerprint([str(gone)])
    assert video_identity(str(gone)) is None
