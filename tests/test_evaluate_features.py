"""The feature cache's writer (`tgmae.evaluate.features.write_cached`): a killed write leaves nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tgmae.evaluate.features import write_cached


def test_a_killed_cache_write_leaves_no_temp_of_safetensors_beside_the_cache(tmp_path, monkeypatch):
    import safetensors.torch as st

    def dying_save(tensors, filename, metadata=None):
        # as safetensors' save_file does: a `.tmpXXXXXX` of its own beside the file, renamed at the end
        (Path(filename).parent / ".tmpAb12Cd").write_bytes(b"partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(st, "save_file", dying_save)
    path = tmp_path / "features" / "train-abc.safetensors"
    with pytest.raises(KeyboardInterrupt):
        write_cached(path, torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), {"k": 1})
    assert list(path.parent.iterdir()) == []
    monkeypatch.undo()
    write_cached(path, torch.ones(2, 3), torch.zeros(2, dtype=torch.int64), {"k": 1})
    assert [p.name for p in path.parent.iterdir()] == ["train-abc.safetensors"]
