"""The similarity cache's files (`tgmae.masking.cache`)."""

from __future__ import annotations

import os
import subprocess
import sys

from tgmae.atomic import temp_path
from tgmae.masking.cache import remove_stale_cache_temps


def test_stale_temps_of_the_top_folder_and_of_maps_are_removed(tmp_path):
    """A killed `tgmae masks` left temps of index.json / manifest.json in the cache's top folder;
    only those in maps/ were removed. A live writer's temps stay."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / "maps").mkdir()
    stale = []
    for target in (tmp_path / "index.json", tmp_path / "manifest.json", tmp_path / "maps" / "v.npz"):
        name = temp_path(target).name.replace(f"-{os.getpid()}-", f"-{dead}-")
        assert f"-{dead}-" in name
        stale.append(target.parent / name)
        stale[-1].write_text("{")
    live = temp_path(tmp_path / "index.json")
    live.write_text("{")
    assert remove_stale_cache_temps(tmp_path) == 3
    assert not any(p.exists() for p in stale) and live.exists()
