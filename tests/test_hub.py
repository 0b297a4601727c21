"""Hub ids without a network fail at once (issue 28: after ~28 s of the hub client's retries)."""

from __future__ import annotations

import os
import socket

import pytest

from tgmae.hub import ModelUnavailableError, hub_reachable, load_pretrained


def _closed_port() -> int:
    with socket.socket() as s:  # bound and closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_hub_fails_before_the_hub_client_is_called(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert not hub_reachable()
    calls = []

    def loader(name, **kwargs):
        calls.append(kwargs)
        raise OSError("not in the cache")

    with pytest.raises(ModelUnavailableError, match=r"'org/some-model'.*could not be reached \(no network\?\)"):
        load_pretrained(loader, "org/some-model")
    assert calls == [{"local_files_only": True}]  # the cache only: the network try never started


def test_offline_mode_fails_at_once_too(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []

    def loader(name, **kwargs):
        calls.append(kwargs)
        raise OSError("not in the cache")

    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE=1"):
        load_pretrained(loader, "org/some-model")
    assert calls == [{"local_files_only": True}]


def test_a_reachable_endpoint_is_seen_as_such(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable()


def _tiny_clip(path):
    """A randomly initialized tiny CLIPModel saved to `path` (weights and config only)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(vocab_size=64, max_position_embeddings=16, **small),
                        vision_config=dict(image_size=32, patch_size=16, **small), projection_dim=8)
    model = CLIPModel(config)
    model.save_pretrained(path)
    return model


def test_the_weights_fingerprint_covers_the_text_tower_not_only_the_projections(tmp_path):
    """Issue 28: a CLIP whose text tower was retrained into the same folder (projections unchanged)
    kept the fingerprint, so embedding and similarity caches of the old weights were reused."""
    import torch

    from tgmae.hub import weights_fingerprint

    model = _tiny_clip(tmp_path / "clip")
    before = weights_fingerprint(str(tmp_path / "clip"))
    with torch.no_grad():
        model.text_model.final_layer_norm.weight.add_(1.0)
    model.save_pretrained(tmp_path / "clip")
    after = weights_fingerprint(str(tmp_path / "clip"))
    assert before and after and before != after


def test_the_weights_fingerprint_is_cached_by_file_identity(tmp_path, monkeypatch):
    """Hashing a 1.7 GB CLIP on every run costs seconds: a file seen with the same path, size,
    mtime and inode is not read again, in this process or the next (the user cache), and a file
    rewritten in place is."""
    import tgmae.hub as hub

    _tiny_clip(tmp_path / "clip")
    first = hub.weights_fingerprint(str(tmp_path / "clip"))
    hub._file_digests.clear()  # as a new process: only the disk cache is left
    read: list = []
    monkeypatch.setattr(hub, "_hash_file", lambda p: read.append(p) or "x")
    assert hub.weights_fingerprint(str(tmp_path / "clip")) == first and not read
    _tiny_clip(tmp_path / "clip")  # written again (the same bytes here): a new mtime
    f = tmp_path / "clip" / "model.safetensors"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert hub.weights_fingerprint(str(tmp_path / "clip")) != first and read


@pytest.mark.parametrize("name, text", [
    ("tokenizer_config.json", '{"model_max_length": 5}'),
    ("tokenizer.json", '{"truncation": {"max_length": 5}}'),
    ("config.json", None),
    ("generation_config.json", '{"max_new_tokens": 3}'),
    ("preprocessor_config.json", '{"crop_size": 16}'),
    ("1_Pooling/config.json", '{"pooling_mode_cls_token": true}'),
])
def test_the_fingerprint_covers_the_files_that_shape_the_outputs_besides_the_weights(tmp_path, name, text):
    """Issue 28: a CLIP whose tokenizer was changed in place (model_max_length 32 -> 5) kept its
    fingerprint, so embed-captions reused embeddings of the untruncated captions."""
    from tgmae.hub import weights_fingerprint

    _tiny_clip(tmp_path / "clip")
    for kept in ("tokenizer_config.json", "tokenizer.json", "generation_config.json",
                 "preprocessor_config.json", "1_Pooling/config.json"):
        (tmp_path / "clip" / kept).parent.mkdir(exist_ok=True)
        (tmp_path / "clip" / kept).write_text("{}")
    before = weights_fingerprint(str(tmp_path / "clip"))
    f = tmp_path / "clip" / name
    old = f.read_text()
    f.write_text(text if text is not None else old.replace('"projection_dim": 8', '"projection_dim": 9'))
    assert f.read_text() != old and weights_fingerprint(str(tmp_path / "clip")) != before


def test_an_unrelated_file_in_the_model_folder_keeps_the_fingerprint(tmp_path):
    from tgmae.hub import weights_fingerprint

    _tiny_clip(tmp_path / "clip")
    before = weights_fingerprint(str(tmp_path / "clip"))
    (tmp_path / "clip" / "README.md").write_text("# notes\n")
    (tmp_path / "clip" / "train_clip.json").write_text('{"loss": 1.0}\n')
    assert weights_fingerprint(str(tmp_path / "clip")) == before


def test_a_corrupt_tokenizer_file_is_one_error_naming_the_folder_and_the_file(tmp_path):
    """Issue 28 (re-trial 9): a tokenizer.json with `"strategy": "longest_first"` made `masks --clip`
    end in the tokenizers library's bare `Exception: unknown variant ...` (a traceback, exit 1).
    It is the model-load error naming the folder, the file and the setting."""
    import json

    from transformers import AutoTokenizer

    from tgmae.captions.tiny import save_tiny_clip

    folder = save_tiny_clip(tmp_path / "clip")
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["truncation"] = {"direction": "Right", "max_length": 77, "strategy": "longest_first", "stride": 0}
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ModelUnavailableError) as e:
        load_pretrained(AutoTokenizer.from_pretrained, str(folder), what="CLIP tokenizer", setting="--clip")
    msg = str(e.value)
    assert str(folder) in msg and "tokenizer.json" in msg and "--clip" in msg and "longest_first" in msg


@pytest.fixture(scope="module")
def _tiny_models(tmp_path_factory):
    from tgmae.captions.tiny import save_tiny_blip, save_tiny_clip

    root = tmp_path_factory.mktemp("models")
    return {"clip": save_tiny_clip(root / "clip"), "blip": save_tiny_blip(root / "blip")}


@pytest.mark.parametrize("model, name, data, loader", [
    ("clip", "tokenizer.json", b'{"version": "1.0", "truncation": nul', "AutoTokenizer"),
    ("clip", "tokenizer_config.json", b"\x00\xff", "AutoTokenizer"),
    ("clip", "config.json", b"\x00\xff", "AutoConfig"),
    ("clip", "config.json", b'{"model_type": "clip",', "CLIPModel"),
    ("blip", "tokenizer.json", None, "AutoProcessor"),  # cut to 300 bytes
    ("blip", "processor_config.json", b"[1, 2]", "AutoProcessor"),
    ("blip", "tokenizer_config.json", b"\x00\xff", "AutoProcessor"),
])
def test_a_model_file_that_is_no_json_is_named(tmp_path, _tiny_models, model, name, data, loader):
    """Issue 28 (re-trial 10): a tokenizer.json / tokenizer_config.json / config.json that is not
    valid JSON (or UTF-8) gave 'the folder is not a complete saved transformers model (Expecting
    value: line 1 column 34 (char 33))', naming no file. The error names the file that cannot be read."""
    import shutil

    import transformers

    folder = tmp_path / model
    shutil.copytree(_tiny_models[model], folder)
    bad = folder / name
    bad.write_bytes(bad.read_bytes()[:300] if data is None else data)
    with pytest.raises(ModelUnavailableError) as e:
        load_pretrained(getattr(transformers, loader).from_pretrained, str(folder), what="X", setting="--clip")
    msg = str(e.value)
    assert str(bad) in msg and "--clip" in msg and "\n" not in msg
    assert "not a complete saved" not in msg
